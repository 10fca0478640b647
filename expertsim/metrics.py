"""Physics metrics: pure functions, arrays in, numbers out.

Units: channel sums and photon sums are photons; positions are fibre indices (row along x,
column along y); energies GeV. The field's headline (SOURCES.md) is the Wasserstein-1
distance between generated and simulated distributions of each of the five channel sums,
averaged over the channels. Functions warn (stacklevel 2) when a sample is too small to trust.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import ks_2samp, wasserstein_distance

from expertsim.detector import brightest_fibre, channel_sums

MIN_TRUSTED_EVENTS = 100
N_GROUPS = 3  # intensity groups of an event file: low, medium, high photon sum


def _warn_if_small(*samples: np.ndarray) -> None:
    if min(len(s) for s in samples) < MIN_TRUSTED_EVENTS:
        warnings.warn(f"a distance from fewer than {MIN_TRUSTED_EVENTS} events is noisy",
                      stacklevel=3)


def wasserstein_1d(u_N: np.ndarray, v_M: np.ndarray) -> float:
    """Wasserstein-1 distance between two 1-D samples (the area between their empirical
    CDFs). For equal sizes it is the mean absolute difference of the sorted samples, computed
    so (two sorts: ~2x faster than the general merge of scipy.stats.wasserstein_distance,
    which handles unequal sizes and is used for them).

    >>> wasserstein_1d(np.array([0.0, 1.0]), np.array([3.0, 2.0]))
    2.0
    """
    u_N, v_M = np.asarray(u_N, dtype=np.float64), np.asarray(v_M, dtype=np.float64)
    if len(u_N) != len(v_M) or len(u_N) == 0:
        return float(wasserstein_distance(u_N, v_M))
    return float(np.abs(np.sort(u_N) - np.sort(v_M)).mean())


def channel_wasserstein(generated_NC: np.ndarray, reference_MC: np.ndarray) -> np.ndarray:
    """Wasserstein-1 distance (photons) of each channel's distribution, shape (C,).

    Args:
        generated_NC: channel sums of N generated events, (N, C).
        reference_MC: channel sums of M reference (Monte Carlo) events, (M, C).

    >>> a = np.zeros((4, 5)); b = np.ones((4, 5))
    >>> channel_wasserstein(a, b).tolist()
    [1.0, 1.0, 1.0, 1.0, 1.0]
    """
    generated_NC, reference_MC = np.asarray(generated_NC), np.asarray(reference_MC)
    if generated_NC.ndim != 2 or generated_NC.shape[1] != reference_MC.shape[1]:
        raise ValueError(f"channel arrays must be (N, C) with equal C, got {generated_NC.shape} "
                         f"and {reference_MC.shape}")
    _warn_if_small(generated_NC, reference_MC)
    return np.array([wasserstein_1d(generated_NC[:, k], reference_MC[:, k])
                     for k in range(generated_NC.shape[1])])


def distribution_distances(generated_N: np.ndarray, reference_M: np.ndarray) -> dict[str, float]:
    """Wasserstein-1 (in the values' unit) and Kolmogorov-Smirnov statistic of two samples.

    >>> distribution_distances(np.zeros(3), np.full(3, 2.0))
    {'wasserstein': 2.0, 'ks': 1.0}
    """
    generated_N, reference_M = np.asarray(generated_N, float), np.asarray(reference_M, float)
    _warn_if_small(generated_N, reference_M)
    return {"wasserstein": wasserstein_1d(generated_N, reference_M),
            "ks": float(ks_2samp(generated_N, reference_M).statistic)}


def fibres_hit(images_NHW: np.ndarray) -> np.ndarray:
    """Number of fibres with at least one photon, per event (N,)."""
    images_NHW = np.asarray(images_NHW)
    return (images_NHW.reshape(len(images_NHW), -1) > 0).sum(axis=1)


def shower_shape(images_NHW: np.ndarray) -> dict[str, np.ndarray]:
    """Photon-weighted centroid and width (standard deviation) along rows (x) and columns (y),
    in fibre units, per event (N,); NaN for empty events.

    >>> image = np.zeros((1, 4, 4)); image[0, 1, 2] = image[0, 3, 2] = 1
    >>> {k: float(v[0]) for k, v in shower_shape(image).items()}
    {'centroid_x': 2.0, 'centroid_y': 2.0, 'width_x': 1.0, 'width_y': 0.0}
    """
    images_NHW = np.asarray(images_NHW, dtype=np.float64)
    total_N = images_NHW.sum(axis=(1, 2))
    rows = np.arange(images_NHW.shape[1], dtype=np.float64)
    cols = np.arange(images_NHW.shape[2], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        profile_x = images_NHW.sum(axis=2) / total_N[:, None]
        profile_y = images_NHW.sum(axis=1) / total_N[:, None]
        centroid_x, centroid_y = profile_x @ rows, profile_y @ cols
        width_x = np.sqrt(np.maximum(profile_x @ rows ** 2 - centroid_x ** 2, 0.0))
        width_y = np.sqrt(np.maximum(profile_y @ cols ** 2 - centroid_y ** 2, 0.0))
    return {"centroid_x": centroid_x, "centroid_y": centroid_y,
            "width_x": width_x, "width_y": width_y}


def response_vs_energy(energy_N: np.ndarray, photon_sum_N: np.ndarray, edges: np.ndarray
                       ) -> dict[str, np.ndarray]:
    """Mean photon sum and relative resolution (std / mean) in energy bins.

    Returns arrays of length len(edges) - 1: ``count``, ``mean`` (photons), ``resolution``;
    NaN where a bin holds fewer than two events.
    """
    energy_N, photon_sum_N = np.asarray(energy_N, float), np.asarray(photon_sum_N, float)
    which = np.digitize(energy_N, edges) - 1
    n_bins = len(edges) - 1
    count = np.bincount(which[(which >= 0) & (which < n_bins)], minlength=n_bins)
    mean = np.full(n_bins, np.nan)
    resolution = np.full(n_bins, np.nan)
    for index in range(n_bins):
        values = photon_sum_N[which == index]
        if len(values) >= 2:
            mean[index] = values.mean()
            resolution[index] = values.std(ddof=1) / values.mean() if values.mean() else np.nan
    return {"count": count, "mean": mean, "resolution": resolution}


def roc_auc(scores_positive: np.ndarray, scores_negative: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied ranks averaged).

    >>> roc_auc(np.array([2.0, 3.0]), np.array([0.0, 1.0]))
    1.0
    >>> roc_auc(np.array([1.0]), np.array([1.0]))
    0.5
    """
    from scipy.stats import rankdata

    positive, negative = np.asarray(scores_positive, float), np.asarray(scores_negative, float)
    ranks = rankdata(np.concatenate([positive, negative]))
    u = ranks[:len(positive)].sum() - len(positive) * (len(positive) + 1) / 2
    return float(u / (len(positive) * len(negative)))


def classifier_auc(generated_NF: np.ndarray, reference_MF: np.ndarray, *, seed: int = 0,
                   test_fraction: float = 0.3, epochs: int = 200) -> float:
    """AUC of a small classifier trained to tell generated from reference events.

    Features (N, F), e.g. log(1 + channel sums) and shower shape, are standardised; a
    one-hidden-layer network is trained with full-batch Adam on (1 - test_fraction) of each
    sample (balanced by subsampling) and the AUC is measured on the rest. 0.5 means
    indistinguishable; 1.0 perfectly separable. Deterministic for a seed.
    """
    import torch

    rng = np.random.default_rng(seed)
    n = min(len(generated_NF), len(reference_MF))
    _warn_if_small(generated_NF[:n], reference_MF[:n])
    generated = np.asarray(generated_NF, float)[rng.permutation(len(generated_NF))[:n]]
    reference = np.asarray(reference_MF, float)[rng.permutation(len(reference_MF))[:n]]
    n_test = max(1, int(round(test_fraction * n)))
    train_x = np.concatenate([generated[n_test:], reference[n_test:]])
    train_y = np.concatenate([np.ones(n - n_test), np.zeros(n - n_test)])
    network, mean, scale = _fit_classifier(train_x, train_y, seed, epochs)

    def score(part: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            inputs = torch.tensor((part - mean) / scale, dtype=torch.float32)
            return network(inputs).squeeze(1).numpy()

    return roc_auc(score(generated[:n_test]), score(reference[:n_test]))


def event_features(images_NHW: np.ndarray) -> dict[str, np.ndarray]:
    """Per-event observables of counts-space images (N, H, W): photon_sum (N,) and channels
    (N, 5) in photons; fibres_hit, brightest_row, brightest_col and the shower shape
    (centroid_x, centroid_y, width_x, width_y) in fibre units, NaN for empty events
    (fibres_hit is 0 there).

    >>> image = np.zeros((1, 4, 4)); image[0, 1, 2] = 3
    >>> features = event_features(image)
    >>> float(features["photon_sum"][0]), float(features["brightest_row"][0])
    (3.0, 1.0)
    """
    images_NHW = np.asarray(images_NHW, dtype=np.float64)
    channels = channel_sums(images_NHW)
    photon_sum = channels.sum(axis=1)
    empty = photon_sum <= 0
    brightest = brightest_fibre(images_NHW).astype(np.float64)
    brightest[empty] = np.nan
    hit = fibres_hit(images_NHW).astype(np.float64)
    return {"photon_sum": photon_sum, "channels": channels, "fibres_hit": hit,
            "brightest_row": brightest[:, 0], "brightest_col": brightest[:, 1],
            **shower_shape(images_NHW)}


def routing_agreement(expert_N: np.ndarray, group_N: np.ndarray, n_experts: int) -> float:
    """Fraction of events whose expert matches their intensity group under the best one-to-one
    assignment of experts to groups (1 = the router reproduces the physical partition).

    >>> routing_agreement(np.array([2, 2, 0, 1]), np.array([0, 0, 1, 2]), 3)
    1.0
    """
    confusion = np.zeros((n_experts, N_GROUPS))
    np.add.at(confusion, (expert_N, np.clip(group_N, 0, N_GROUPS - 1)), 1)
    rows, cols = linear_sum_assignment(-confusion)
    return float(confusion[rows, cols].sum() / max(len(expert_N), 1))


def repeat_pairs(condition_id_N: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows (a_P, b_P) of the first and the second event of every condition that was simulated
    at least twice: a_P[k] and b_P[k] are two independent responses to one particle.

    >>> a, b = repeat_pairs(np.array([4, 7, 4, 9, 7]))
    >>> a.tolist(), b.tolist()
    ([0, 1], [2, 4])
    """
    condition_id_N = np.asarray(condition_id_N)
    order = np.argsort(condition_id_N, kind="stable")
    ids = condition_id_N[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    counts = np.diff(np.r_[starts, len(ids)])
    starts = starts[counts >= 2]
    return order[starts], order[starts + 1]


def half_sample_standard_error(statistic, n_units: int, *, n_draws: int = 200,
                               seed: int = 0) -> np.ndarray:
    """Standard error of ``statistic`` (indices of units -> number or array) computed on all
    ``n_units`` units, by balanced half-sampling.

    The statistic is evaluated on ``n_draws`` random halves of the units, drawn without
    replacement; for d = n / 2 units left out, the delete-d jackknife variance
    (n - d) / d * var(half-sample values) is the plain variance of the half-sample values
    (Shao and Wu 1989). Unlike a bootstrap, no event enters a sample twice, which would
    inflate a Wasserstein distance between two samples of one distribution (the MC floor).
    """
    rng = np.random.default_rng(seed)
    half = n_units // 2
    if half < 2:
        raise ValueError(f"half-sampling needs at least 4 units, got {n_units}")
    values = [statistic(np.sort(rng.permutation(n_units)[:half])) for _ in range(n_draws)]
    return np.std(np.asarray(values, dtype=float), axis=0, ddof=1)


def _mean_channel_ws(samples: list[np.ndarray], reference_NC: np.ndarray,
                     index: np.ndarray) -> float:
    """Mean over samples of the mean channel-WS of the rows ``index`` of each (N, C) sample
    against the same rows of the reference."""
    return float(np.mean([channel_wasserstein(sample[index], reference_NC[index]).mean()
                          for sample in samples]))


def paired_difference_standard_error(generated: dict[str, list[np.ndarray]],
                                     reference_NC: np.ndarray, baseline: str, *,
                                     n_draws: int = 200, seed: int = 0) -> dict[str, float]:
    """Standard error of each model's channel-WS minus the baseline's when all are scored on
    the same particles, by balanced half-sampling with the same halves for every model.

    ``generated[name]`` holds one (N, C) array of channel sums per sample of that model (e.g.
    one generation per seed; its channel-WS is the mean over them); row i of each, and of
    ``reference_NC``, belongs to particle i. The reference's own fluctuation enters every
    model's distance alike and largely cancels in their difference; treating the two
    distances' errors as independent (the square root of the sum of their variances)
    overstates the error of the difference (2-3x on the comparison study's test splits, where
    the scatter over disjoint subsets of an independent file agreed with this one: README,
    "Validation"). Returns {name: standard error} for every name but the baseline.
    """
    names = [name for name in generated if name != baseline]

    def statistic(index: np.ndarray) -> list[float]:
        base = _mean_channel_ws(generated[baseline], reference_NC, index)
        return [_mean_channel_ws(generated[name], reference_NC, index) - base
                for name in names]

    se = half_sample_standard_error(statistic, len(reference_NC), n_draws=n_draws, seed=seed)
    return dict(zip(names, (float(value) for value in np.atleast_1d(se))))


def disjoint_difference_spread(generated: dict[str, list[np.ndarray]],
                               reference_NC: np.ndarray, baseline: str, size: int, *,
                               seed: int = 0) -> dict[str, Any]:
    """The scatter of each model's channel-WS minus the baseline's over disjoint subsets of
    ``size`` particles (arguments as paired_difference_standard_error): on a large
    independent file, what a difference measured on ``size`` particles scatters by, to check
    an interval computed on a test split of that size. Returns {"size", "n_subsets",
    "std": {name: standard deviation}, "mean": {name: mean}}; std is None below 3 subsets."""
    n_subsets = len(reference_NC) // size if size > 0 else 0
    order = np.random.default_rng(seed).permutation(len(reference_NC))
    names = [name for name in generated if name != baseline]
    values = {name: [] for name in names}
    for k in range(n_subsets):
        index = np.sort(order[k * size:(k + 1) * size])
        base = _mean_channel_ws(generated[baseline], reference_NC, index)
        for name in names:
            values[name].append(_mean_channel_ws(generated[name], reference_NC, index) - base)
    return {"size": int(size), "n_subsets": int(n_subsets),
            "std": {name: float(np.std(v, ddof=1)) if len(v) >= 3 else None
                    for name, v in values.items()},
            "mean": {name: float(np.mean(v)) if v else None for name, v in values.items()}}


def paired_shape_distances(generated: dict[str, np.ndarray], reference: dict[str, np.ndarray]
                           ) -> dict[str, np.ndarray]:
    """Per pair of events made for one particle (row k of each): the distance between the
    shower centroids and between the (width_x, width_y) vectors, in fibres; NaN where either
    event is empty. Inputs are dicts with centroid_x/y and width_x/y (see shower_shape).

    >>> a = {"centroid_x": np.array([1.0]), "centroid_y": np.array([1.0]),
    ...      "width_x": np.array([2.0]), "width_y": np.array([2.0])}
    >>> b = {"centroid_x": np.array([4.0]), "centroid_y": np.array([5.0]),
    ...      "width_x": np.array([2.0]), "width_y": np.array([2.0])}
    >>> {k: float(v[0]) for k, v in paired_shape_distances(a, b).items()}
    {'centroid_distance': 5.0, 'width_difference': 0.0}
    """
    return {
        "centroid_distance": np.hypot(generated["centroid_x"] - reference["centroid_x"],
                                      generated["centroid_y"] - reference["centroid_y"]),
        "width_difference": np.hypot(generated["width_x"] - reference["width_x"],
                                     generated["width_y"] - reference["width_y"]),
    }


def emptiness_agreement(generated_empty_N: np.ndarray, reference_empty_N: np.ndarray
                        ) -> dict[str, float]:
    """Per-particle agreement of empty responses: row k of both arrays is one particle.

    accuracy: fraction of particles where both agree; false_empty: P(generated empty |
    reference has light); false_non_empty: P(generated light | reference empty); the two
    empty fractions. NaN where a conditioning set is empty.

    >>> r = emptiness_agreement(np.array([True, False, False]), np.array([True, True, False]))
    >>> r["false_empty"], r["false_non_empty"], r["n"]
    (0.0, 0.5, 3)
    """
    generated = np.asarray(generated_empty_N, dtype=bool)
    reference = np.asarray(reference_empty_N, dtype=bool)
    return {
        "n": int(len(reference)),
        "accuracy": float((generated == reference).mean()) if len(reference) else math.nan,
        "false_empty": float(generated[~reference].mean()) if (~reference).any() else math.nan,
        "false_non_empty": (float((~generated[reference]).mean()) if reference.any()
                            else math.nan),
        "generated_empty_fraction": float(generated.mean()) if len(generated) else math.nan,
        "reference_empty_fraction": float(reference.mean()) if len(reference) else math.nan,
    }


# ---------------------------------------------------------------- the community's metrics
# Definitions: Fréchet and kernel physics distances (FPD, KPD) as proposed for generative
# models in HEP by Kansal et al., Phys. Rev. D 107 (2023) 076017 (arXiv:2211.10295); the
# separation power and the classifier's Jensen-Shannon divergence as used by the
# CaloChallenge (Krause et al., arXiv:2410.21611). Our own implementations (SOURCES.md says
# why not jetnet's).


def frechet_distance(x_NF: np.ndarray, y_MF: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature samples (N, F) and (M, F):
    |mu_x - mu_y|^2 + Tr(S_x + S_y - 2 (S_x S_y)^(1/2)).

    >>> round(frechet_distance(np.eye(3), np.eye(3)), 12)
    0.0
    """
    from scipy import linalg

    mu_x, mu_y = x_NF.mean(axis=0), y_MF.mean(axis=0)
    cov_x = np.atleast_2d(np.cov(x_NF, rowvar=False))
    cov_y = np.atleast_2d(np.cov(y_MF, rowvar=False))
    root, _ = linalg.sqrtm(cov_x @ cov_y, disp=False)
    root = np.real(root)
    return float(((mu_x - mu_y) ** 2).sum() + np.trace(cov_x + cov_y - 2 * root))


def _standardise_pair(generated_NF: np.ndarray, reference_MF: np.ndarray):
    """Both samples scaled by the reference's mean and std per feature (finite rows only)."""
    generated_NF = np.asarray(generated_NF, float)
    reference_MF = np.asarray(reference_MF, float)
    generated_NF = generated_NF[np.isfinite(generated_NF).all(axis=1)]
    reference_MF = reference_MF[np.isfinite(reference_MF).all(axis=1)]
    mean, scale = reference_MF.mean(axis=0), reference_MF.std(axis=0) + 1e-12
    return (generated_NF - mean) / scale, (reference_MF - mean) / scale


def frechet_physics_distance(generated_NF: np.ndarray, reference_MF: np.ndarray, *,
                             sizes: tuple[int, ...] = (2000, 4000, 8000, 16000, 32000),
                             draws: int = 8, seed: int = 0) -> dict[str, Any]:
    """FPD: the Fréchet distance of standardised features extrapolated to infinite samples.

    The distance of Gaussians fitted to finite samples is biased upwards by ~1/n; draw d
    computes it on random subsamples (without replacement) of each size n, fits it linearly
    in 1/n and extrapolates to 1/n = 0; the value is the mean of the draws' intercepts and the
    error its standard error. Sizes above half the smaller sample are dropped; with fewer than
    three left, 1/8 ... 4/8 of it are used. Features are scaled by the reference's mean and
    std; rows with NaN (empty events' shapes) are dropped. Returns {"value", "error",
    "sizes"}; NaN below 80 usable rows.
    """
    x_NF, y_MF = _standardise_pair(generated_NF, reference_MF)
    n_max = min(len(x_NF), len(y_MF))
    usable = [n for n in sizes if 2 * n <= n_max]
    if len(usable) < 3:  # at most half the sample, so that the draws differ
        usable = sorted({n_max * k // 8 for k in (1, 2, 3, 4)})
    if n_max < 80:
        return {"value": float("nan"), "error": float("nan"), "sizes": []}
    rng = np.random.default_rng(seed)
    inverse = 1.0 / np.asarray(usable, float)
    intercepts = []
    for _ in range(draws):
        values = [frechet_distance(x_NF[rng.choice(len(x_NF), n, replace=False)],
                                   y_MF[rng.choice(len(y_MF), n, replace=False)])
                  for n in usable]
        intercepts.append(np.polyfit(inverse, values, 1)[1])
    error = np.std(intercepts, ddof=1) / math.sqrt(draws) if draws > 1 else float("nan")
    return {"value": float(np.mean(intercepts)), "error": float(error),
            "sizes": [int(n) for n in usable]}


def _mmd_polynomial_unbiased(x_NF: np.ndarray, y_NF: np.ndarray, degree: int) -> float:
    """Unbiased MMD^2 with the kernel k(a, b) = (a.b / F + 1)^degree."""
    n, f = len(x_NF), x_NF.shape[1]
    kxx = (x_NF @ x_NF.T / f + 1) ** degree
    kyy = (y_NF @ y_NF.T / f + 1) ** degree
    kxy = (x_NF @ y_NF.T / f + 1) ** degree
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1))
                 + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean())


def kernel_physics_distance(generated_NF: np.ndarray, reference_MF: np.ndarray, *,
                            batch: int = 4000, batches: int = 10, degree: int = 4,
                            seed: int = 0) -> dict[str, float]:
    """KPD: the unbiased squared maximum mean discrepancy of standardised features with a
    polynomial kernel (a.b / F + 1)^degree, on ``batches`` random batches of ``batch``
    events from each sample; value = mean over batches, error = its standard error (the
    median is given too). 0 within errors for one distribution (unbiased: can be < 0).
    Returns {"value", "error", "median"}.
    """
    x_NF, y_MF = _standardise_pair(generated_NF, reference_MF)
    rng = np.random.default_rng(seed)
    n = min(batch, len(x_NF), len(y_MF))
    if n < 10:
        return {"value": float("nan"), "error": float("nan"), "median": float("nan")}
    values = [_mmd_polynomial_unbiased(x_NF[rng.choice(len(x_NF), n, replace=False)],
                                       y_MF[rng.choice(len(y_MF), n, replace=False)], degree)
              for _ in range(batches)]
    return {"value": float(np.mean(values)),
            "error": float(np.std(values, ddof=1) / math.sqrt(batches)) if batches > 1 else 0.0,
            "median": float(np.median(values))}


def separation_power(generated_N: np.ndarray, reference_M: np.ndarray, bins: int = 50) -> float:
    """Separation power of two histograms with common bins (the CaloChallenge's measure):
    S = 1/2 sum_i (h1_i - h2_i)^2 / (h1_i + h2_i) of the normalised histograms; 0 for
    identical, 1 for disjoint distributions. Bins span the reference's 0.1 to 99.9 %
    quantiles (values outside land in the end bins); NaN values are dropped.

    >>> separation_power(np.zeros(100), np.ones(100))
    1.0
    """
    g = np.asarray(generated_N, float)
    r = np.asarray(reference_M, float)
    g, r = g[np.isfinite(g)], r[np.isfinite(r)]
    if len(g) == 0 or len(r) == 0:
        return float("nan")
    low, high = np.quantile(np.concatenate([g, r]), [0.001, 0.999])
    if high <= low:
        low, high = min(g.min(), r.min()) - 0.5, max(g.max(), r.max()) + 0.5
    edges = np.linspace(low, high, bins + 1)
    h1 = np.histogram(np.clip(g, low, high), edges)[0] / len(g)
    h2 = np.histogram(np.clip(r, low, high), edges)[0] / len(r)
    total = h1 + h2
    used = total > 0
    return float(0.5 * ((h1[used] - h2[used]) ** 2 / total[used]).sum())


def classifier_test(generated_NF: np.ndarray, reference_MF: np.ndarray, *, seed: int = 0,
                    epochs: int = 200) -> dict[str, float]:
    """A calibrated classifier two-sample test: AUC and the Jensen-Shannon divergence.

    A one-hidden-layer network (as in :func:`classifier_auc`) is trained on 60 % of each
    (balanced) sample, its logits are calibrated by logistic (Platt) scaling on 20 %, and on
    the last 20 %: AUC, and JSD (bits) = 1 - BCE / ln 2 of the calibrated probabilities (the
    optimal classifier's loss is ln 2 - JSD), clipped at 0. 0 = indistinguishable, 1 = disjoint.
    Returns {"auc", "jsd", "n_test"}.
    """
    import torch

    rng = np.random.default_rng(seed)
    n = min(len(generated_NF), len(reference_MF))
    if n < 10:
        return {"auc": float("nan"), "jsd": float("nan"), "n_test": 0}
    _warn_if_small(generated_NF[:n], reference_MF[:n])
    g = np.asarray(generated_NF, float)[rng.permutation(len(generated_NF))[:n]]
    r = np.asarray(reference_MF, float)[rng.permutation(len(reference_MF))[:n]]
    cut1, cut2 = int(0.6 * n), int(0.8 * n)
    train_x = np.concatenate([g[:cut1], r[:cut1]])
    train_y = np.concatenate([np.ones(cut1), np.zeros(cut1)])
    network, mean, scale = _fit_classifier(train_x, train_y, seed, epochs)

    def logits(part: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return network(torch.tensor((part - mean) / scale, dtype=torch.float32)
                           ).squeeze(1).double().numpy()

    calib_logit = np.concatenate([logits(g[cut1:cut2]), logits(r[cut1:cut2])])
    calib_y = np.concatenate([np.ones(cut2 - cut1), np.zeros(cut2 - cut1)])
    a, b = _platt(calib_logit, calib_y)
    test_g, test_r = logits(g[cut2:]), logits(r[cut2:])
    p = 1.0 / (1.0 + np.exp(-(a * np.concatenate([test_g, test_r]) + b)))
    y = np.concatenate([np.ones(len(test_g)), np.zeros(len(test_r))])
    p = np.clip(p, 1e-7, 1 - 1e-7)
    bce = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    return {"auc": roc_auc(test_g, test_r), "jsd": float(max(0.0, 1.0 - bce / math.log(2))),
            "n_test": int(len(y))}


def _fit_classifier(x: np.ndarray, y: np.ndarray, seed: int, epochs: int):
    """The two-sample test's network: standardised inputs, 32 hidden units, full-batch Adam."""
    import torch

    mean, scale = x.mean(0), x.std(0) + 1e-9
    torch.manual_seed(seed)
    network = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 32), torch.nn.ReLU(),
                                  torch.nn.Linear(32, 1))
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    inputs = torch.tensor((x - mean) / scale, dtype=torch.float32)
    targets = torch.tensor(y, dtype=torch.float32)
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            network(inputs).squeeze(1), targets)
        loss.backward()
        optimizer.step()
    return network, mean, scale


def _platt(logit_N: np.ndarray, y_N: np.ndarray) -> tuple[float, float]:
    """Logistic calibration p = sigmoid(a logit + b) fitted by maximum likelihood."""
    from scipy.optimize import minimize

    def loss(params: np.ndarray) -> float:
        z = params[0] * logit_N + params[1]
        return float(np.mean(np.logaddexp(0, z) - y_N * z))

    result = minimize(loss, np.array([1.0, 0.0]), method="L-BFGS-B")
    return float(result.x[0]), float(result.x[1])
