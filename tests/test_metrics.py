"""Metrics against analytic answers."""

import math

import numpy as np
import pytest

from expertsim import metrics


@pytest.fixture()
def rng():
    return np.random.default_rng(0)


def test_wasserstein_of_shifted_and_scaled_gaussians(rng):
    a = rng.normal(0.0, 1.0, (40000, 5))
    shifted = rng.normal(3.0, 1.0, (40000, 5))
    np.testing.assert_allclose(metrics.channel_wasserstein(a, shifted), 3.0, atol=0.05)
    wide = rng.normal(0.0, 2.0, 40000)
    # same mean: W1 = |sigma1 - sigma2| * sqrt(2 / pi)
    expected = 1.0 * math.sqrt(2 / math.pi)
    assert metrics.distribution_distances(a[:, 0], wide)["wasserstein"] == pytest.approx(
        expected, abs=0.03)


def test_equal_size_wasserstein_equals_the_general_one(rng):
    from scipy.stats import wasserstein_distance

    for n, m in ((1000, 1000), (1000, 777), (1, 1)):
        u, v = rng.poisson(3.0, n).astype(float), rng.normal(2.0, 3.0, m)  # ties included
        assert metrics.wasserstein_1d(u, v) == pytest.approx(wasserstein_distance(u, v),
                                                             rel=1e-12)


def test_ks_statistic_bounds(rng):
    a = rng.normal(size=1000)
    assert metrics.distribution_distances(a, a)["ks"] == 0.0
    assert metrics.distribution_distances(a, a + 100)["ks"] == 1.0


def test_small_samples_warn():
    with pytest.warns(UserWarning, match="fewer than 100 events"):
        metrics.channel_wasserstein(np.zeros((10, 5)), np.zeros((10, 5)))


def test_shower_shape_of_a_gaussian_blob():
    rows, cols = np.meshgrid(np.arange(44), np.arange(44), indexing="ij")
    blob = 1000 * np.exp(-((rows - 20.0) ** 2 / (2 * 2.0 ** 2) + (cols - 22.0) ** 2 / (2 * 3.0 ** 2)))
    shape = metrics.shower_shape(np.stack([blob, np.zeros((44, 44))]))
    assert shape["centroid_x"][0] == pytest.approx(20.0, abs=1e-6)
    assert shape["centroid_y"][0] == pytest.approx(22.0, abs=1e-6)
    assert shape["width_x"][0] == pytest.approx(2.0, rel=1e-3)
    assert shape["width_y"][0] == pytest.approx(3.0, rel=1e-3)
    assert np.isnan(shape["centroid_x"][1])
    assert metrics.fibres_hit(np.stack([blob > 500, np.zeros((44, 44))])).tolist()[1] == 0


def test_response_vs_energy(rng):
    energy = rng.uniform(0, 100, 40000)
    photons = 2.0 * energy * (1 + 0.1 * rng.standard_normal(40000))
    # narrow bins, so that the energy spread inside a bin adds nothing visible
    result = metrics.response_vs_energy(energy, photons, np.array([40.0, 40.5, 60.0, 60.5, 200.0]))
    np.testing.assert_allclose(result["mean"][[0, 2]], [80.5, 120.5], rtol=0.02)
    np.testing.assert_allclose(result["resolution"][[0, 2]], 0.1, atol=0.015)
    assert result["count"][3] == pytest.approx(40000 * 0.395, rel=0.05)


def test_auc_identical_and_separable_sets(rng):
    assert metrics.roc_auc(np.ones(50), np.ones(50)) == 0.5
    same_a, same_b = rng.normal(size=(3000, 4)), rng.normal(size=(3000, 4))
    assert metrics.classifier_auc(same_a, same_b, seed=1) == pytest.approx(0.5, abs=0.05)
    shifted = rng.normal(size=(3000, 4)) + np.array([1.5, 0, 0, 0])
    assert metrics.classifier_auc(shifted, same_b, seed=1) > 0.8
    assert metrics.classifier_auc(shifted, same_b, seed=1) == metrics.classifier_auc(
        shifted, same_b, seed=1)


def test_half_sampling_error_matches_the_spread_of_independent_samples():
    """The half-sampling standard error of a Wasserstein distance between two samples of one
    distribution (a floor, the hardest case: bias-dominated) agrees with the spread of the
    statistic over independent repetitions, and so does that of a shifted pair."""
    rng = np.random.default_rng(7)
    n = 1000
    for shift in (0.0, 0.5):
        def draw():
            return rng.gamma(2.0, 10.0, n), rng.gamma(2.0, 10.0, n) * (1 + shift)
        truth = np.std([metrics.wasserstein_distance(*draw()) for _ in range(300)], ddof=1)
        estimates = []
        for _ in range(8):
            a, b = draw()
            estimates.append(metrics.half_sample_standard_error(
                lambda index: metrics.wasserstein_distance(a[index], b[index]), n, n_draws=100,
                seed=len(estimates)))
        assert 0.7 * truth < np.median(estimates) < 1.4 * truth, (shift, truth, estimates)


def test_error_of_a_difference_of_two_models_on_the_same_particles():
    """Two models scored against one reference on the same particles: the paired
    half-sampling error of their channel-WS difference agrees with the spread of that
    difference over independent repetitions (new particles, reference and generations), as
    does the scatter over disjoint subsets of one large sample; the two errors taken as
    independent overstate it (the shared reference cancels in the difference)."""
    rng = np.random.default_rng(0)
    n = 500

    def draw(size: int):
        level = rng.uniform(0.2, 1.0, size=(size, 1)) * np.array([1.0, 2.0, 3.0, 4.0, 10.0])
        reference = rng.poisson(50 * level).astype(float)
        return {"a": [rng.poisson(50 * level * 1.03).astype(float)],
                "b": [rng.poisson(50 * level * 1.10).astype(float)]}, reference

    def ws(samples, reference, index):
        return metrics.channel_wasserstein(samples[0][index], reference[index]).mean()

    everything = np.arange(n)
    truth = np.std([ws(g["a"], ref, everything) - ws(g["b"], ref, everything)
                    for g, ref in (draw(n) for _ in range(100))], ddof=1)
    paired, unpaired = [], []
    for _ in range(5):
        generated, reference = draw(n)
        paired.append(metrics.paired_difference_standard_error(generated, reference, "b",
                                                               n_draws=100)["a"])
        unpaired.append(np.hypot(*(metrics.half_sample_standard_error(
            lambda index, name=name: ws(generated[name], reference, index), n, n_draws=100)
            for name in "ab")))
    assert 0.75 * truth < np.mean(paired) < 1.3 * truth, (truth, paired)
    assert np.mean(unpaired) > 1.2 * np.mean(paired), (paired, unpaired)
    generated, reference = draw(100 * n)
    spread = metrics.disjoint_difference_spread(generated, reference, "b", n)
    assert spread["n_subsets"] == 100
    assert 0.75 * truth < spread["std"]["a"] < 1.3 * truth, (truth, spread)
    assert spread["mean"]["a"] < 0  # a is the closer model


def test_repeat_pairs_and_paired_distances():
    a, b = metrics.repeat_pairs(np.array([3, 3, 5, 8, 8, 8]))
    assert a.tolist() == [0, 3] and b.tolist() == [1, 4]
    shapes = {"centroid_x": np.array([1.0, np.nan]), "centroid_y": np.array([0.0, np.nan]),
              "width_x": np.array([1.0, np.nan]), "width_y": np.array([1.0, np.nan])}
    other = {**shapes, "centroid_x": np.array([4.0, 1.0])}
    distances = metrics.paired_shape_distances(shapes, other)
    assert distances["centroid_distance"][0] == 3.0 and np.isnan(distances["centroid_distance"][1])


# ---------------------------------------------------------------- the community's metrics


def test_frechet_physics_distance_of_known_gaussians(rng):
    x = rng.normal(0.0, 1.0, (40000, 3))
    same = metrics.frechet_physics_distance(x, rng.normal(0.0, 1.0, (40000, 3)), seed=1)
    assert abs(same["value"]) < 4 * same["error"] + 1e-3
    # N(mu, I) against N(0, I): |mu|^2 = 0.25 (features are scaled by the reference's std, 1)
    shifted = metrics.frechet_physics_distance(x + np.array([0.3, 0.4, 0.0]),
                                               rng.normal(0.0, 1.0, (40000, 3)), seed=1)
    assert shifted["value"] == pytest.approx(0.25, abs=max(4 * shifted["error"], 0.01))
    # a wider Gaussian, same mean: trace term (sigma - 1)^2 per dimension
    wide = metrics.frechet_physics_distance(2.0 * x, rng.normal(0.0, 1.0, (40000, 3)), seed=1)
    assert wide["value"] == pytest.approx(3.0, rel=0.03)


def test_kernel_physics_distance_is_unbiased_and_matches_its_definition(rng):
    same = metrics.kernel_physics_distance(rng.normal(size=(20000, 3)),
                                           rng.normal(size=(20000, 3)), batch=2000)
    assert abs(same["value"]) < 4 * same["error"]
    far = metrics.kernel_physics_distance(rng.normal(1.0, 1.0, (20000, 3)),
                                          rng.normal(size=(20000, 3)), batch=2000)
    assert far["value"] > 10 * far["error"] > 0
    # the vectorised estimator against the definition, term by term, on a tiny sample
    x, y = rng.normal(size=(6, 2)), rng.normal(size=(6, 2))
    k = lambda a, b: (a @ b / 2 + 1) ** 4  # noqa: E731
    n = len(x)
    brute = (sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
             + sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
             - 2 * sum(k(x[i], y[j]) for i in range(n) for j in range(n)) / n ** 2)
    assert metrics._mmd_polynomial_unbiased(x, y, 4) == pytest.approx(brute, rel=1e-12)


def test_separation_power_of_identical_disjoint_and_half_overlapping_histograms(rng):
    values = rng.normal(size=10000)
    assert metrics.separation_power(values, values) == 0.0
    assert metrics.separation_power(values, values + 100.0) == pytest.approx(1.0)
    # uniform on [0, 2] against uniform on [1, 3]: half the mass is shared -> S = 1/2
    a, b = np.linspace(0, 2, 100001)[:-1], np.linspace(1, 3, 100001)[:-1]
    assert metrics.separation_power(a, b, bins=60) == pytest.approx(0.5, abs=0.01)


def test_calibrated_classifier_jsd_of_known_gaussians(rng):
    from scipy import integrate, stats

    same = metrics.classifier_test(rng.normal(size=(20000, 2)), rng.normal(size=(20000, 2)))
    assert same["auc"] == pytest.approx(0.5, abs=0.03) and same["jsd"] < 0.01
    shift = 1.5
    generated = rng.normal(size=(40000, 1)) + shift
    reference = rng.normal(size=(40000, 1))
    p, q = stats.norm(shift).pdf, stats.norm(0).pdf
    m = lambda t: 0.5 * (p(t) + q(t))  # noqa: E731
    jsd = 0.5 * integrate.quad(lambda t: p(t) * np.log2(p(t) / m(t)), -12, 14)[0] \
        + 0.5 * integrate.quad(lambda t: q(t) * np.log2(q(t) / m(t)), -12, 14)[0]
    result = metrics.classifier_test(generated, reference)
    assert result["jsd"] == pytest.approx(jsd, abs=0.03)  # analytic: 0.37
    assert result["auc"] == pytest.approx(stats.norm.cdf(shift / np.sqrt(2)), abs=0.02)
    disjoint = metrics.classifier_test(rng.normal(size=(5000, 1)) + 40, rng.normal(size=(5000, 1)))
    assert disjoint["auc"] > 0.999 and disjoint["jsd"] > 0.95
