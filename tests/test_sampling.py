"""expertsim sample / merge on a model trained here for a few steps."""

import dataclasses

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from expertsim.cli import main
from expertsim.errors import DataSchemaError
from expertsim.eventfile import check_event_file
from expertsim.sampling import Shard, merge_shards, sample_to_file
from tests.test_trainer import tiny_config


def make_model(data, output, conditioning="plain", intensity_head=False):
    """A model file trained for 3 steps on ``data``, its output lifted to real photons."""
    from expertsim.trainer import Trainer

    config = tiny_config(data, output, max_steps=3)
    config = dataclasses.replace(config, model=dataclasses.replace(
        config.model, conditioning=conditioning, intensity_head=intensity_head))
    trainer = Trainer(config)
    trainer.fit()
    # After 3 steps every fibre would round to 0 photons; lift the output so that the noise
    # visibly matters (these tests check the sampling mechanics, not fidelity).
    with torch.no_grad():
        trainer.generator.conv_out.bias += 1.5
    trainer.save_model("model.pt")
    return output / "model.pt"


@pytest.fixture(scope="module")
def model_file(zn_file, tmp_path_factory):
    return make_model(zn_file, tmp_path_factory.mktemp("model"))


def read(path, key):
    with h5py.File(path) as handle:
        return handle[key][:]


@pytest.mark.slow
def test_sample_file_is_a_counts_space_event_file(model_file, zn_file, tmp_path):
    out = tmp_path / "gen.h5"
    result = CliRunner().invoke(main, ["sample", "--model", str(model_file), "--conditions",
                                       str(zn_file), "-o", str(out), "--repeat", "2",
                                       "--seed", "7"])
    assert result.exit_code == 0, result.output
    info = check_event_file(out)
    assert info.n_events == 8000 and info.detector.name == "ZN"
    assert info.provenance["seed"] == 7 and len(info.provenance["config"]["model_sha256"]) == 64
    images = read(out, "images")
    assert images.dtype == np.uint32  # whole photons
    np.testing.assert_array_equal(read(out, "source_row"), np.repeat(np.arange(4000), 2))
    np.testing.assert_allclose(read(out, "conditions")[::2], read(zn_file, "conditions"))
    experts, photon_sum = read(out, "expert"), read(out, "derived/photon_sum")
    assert set(np.unique(experts)) == {-1, 0, 1, 2}  # -1: stopped by the empty-response gate
    assert (photon_sum[experts < 0] == 0).all() and (photon_sum[experts >= 0] > 0).all()
    np.testing.assert_allclose(photon_sum, images.sum(axis=(1, 2)))
    assert "stopped by the gate" in result.output


@pytest.mark.slow
def test_same_seed_same_events_other_seed_other_events(model_file, zn_file, tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        sample_to_file(model_file, zn_file, tmp_path / f"{name}.h5", seed=seed, batch_size=999)
    a, b, c = (read(tmp_path / f"{n}.h5", "images") for n in "abc")
    assert a.sum() > 0
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.slow
def test_worker_threads_write_the_events_of_one_thread(model_file, zn_file, tmp_path):
    """--workers 2: two worker threads generate the batches; the file holds the same events,
    experts and gate decisions as a run in one thread, and the intra-op threads are restored."""
    one = sample_to_file(model_file, zn_file, tmp_path / "one.h5", seed=5, repeat=2)
    result = CliRunner().invoke(main, ["sample", "--model", str(model_file), "--conditions",
                                       str(zn_file), "-o", str(tmp_path / "two.h5"),
                                       "--repeat", "2", "--seed", "5", "--workers", "2"])
    assert result.exit_code == 0, result.output
    for key in ("images", "expert", "source_row", "conditions"):
        np.testing.assert_array_equal(read(one, key), read(tmp_path / "two.h5", key))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        three = sample_to_file(model_file, zn_file, tmp_path / "three.h5", seed=5, repeat=2,
                               workers=3)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(read(one, "images"), read(three, "images"))


def test_available_cores_respects_affinity_slurm_and_omp(monkeypatch):
    from expertsim.sampling import available_cores

    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    assert available_cores() == 6
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    assert available_cores() == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert available_cores() == 2
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    monkeypatch.setenv("OMP_NUM_THREADS", "")  # unset-like values are ignored
    assert available_cores() == 6
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {3})
    assert available_cores() == 1


@pytest.mark.slow
def test_shards_merge_into_the_unsharded_run(model_file, zn_file, tmp_path):
    sample_to_file(model_file, zn_file, tmp_path / "all.h5", seed=3)
    shards = [sample_to_file(model_file, zn_file, tmp_path / f"s{i}.h5", seed=3,
                             shard=Shard(i, 3), batch_size=500) for i in (2, 0, 1)]
    merge_shards(shards, tmp_path / "merged.h5")
    for key in ("images", "conditions", "expert", "source_row"):
        assert np.array_equal(read(tmp_path / "all.h5", key), read(tmp_path / "merged.h5", key))


def test_merge_refuses_inconsistent_or_missing_shards(model_file, zn_file, tmp_path,
                                                      monkeypatch):
    first = sample_to_file(model_file, zn_file, tmp_path / "s0.h5", seed=3, shard=Shard(0, 2))
    other_seed = sample_to_file(model_file, zn_file, tmp_path / "s1.h5", seed=4,
                                shard=Shard(1, 2))
    with pytest.raises(DataSchemaError, match="seed 4 differs"):
        merge_shards([first, other_seed], tmp_path / "merged.h5")
    with pytest.raises(DataSchemaError, match=r"missing \[1\]"):
        merge_shards([first], tmp_path / "merged.h5")
    with pytest.raises(DataSchemaError, match="not a shard"):
        merge_shards([first, zn_file], tmp_path / "merged.h5")
    # a shard drawn by another version's counting scheme: the same law, other events
    monkeypatch.setattr("expertsim.sampling.COUNTING", "an earlier scheme")
    older = sample_to_file(model_file, zn_file, tmp_path / "s1_older.h5", seed=3,
                           shard=Shard(1, 2))
    with pytest.raises(DataSchemaError, match="counting 'an earlier scheme' differs"):
        merge_shards([first, older], tmp_path / "merged.h5")
    assert not (tmp_path / "merged.h5").exists()


def test_conditions_from_csv_and_npz(model_file, zn_file, tmp_path):
    conditions = read(zn_file, "conditions")[:50].astype(float)
    header = "E,vx,vy,vz,px,py,pz,mass,charge,comment"
    np.savetxt(tmp_path / "c.csv", np.column_stack([conditions, np.zeros(50)]), delimiter=",",
               header=header, comments="")
    np.savez(tmp_path / "c.npz", conditions=conditions)
    for name in ("c.csv", "c.npz"):
        out = sample_to_file(model_file, tmp_path / name, tmp_path / f"{name}.h5", seed=1)
        np.testing.assert_allclose(read(out, "conditions"), conditions, rtol=1e-6)
    np.savetxt(tmp_path / "bad.csv", conditions[:, :8], delimiter=",",
               header="E,vx,vy,vz,px,py,pz,mass", comments="")
    result = CliRunner().invoke(main, ["sample", "--model", str(model_file), "--conditions",
                                       str(tmp_path / "bad.csv"), "-o", str(tmp_path / "x.h5")])
    assert result.exit_code == 2 and "lacks column(s) ['charge']" in result.output
    assert not (tmp_path / "x.h5").exists()


def test_a_killed_sampling_run_leaves_no_file(model_file, zn_file, tmp_path):
    def die(_):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sample_to_file(model_file, zn_file, tmp_path / "gen.h5", batch_size=100, progress=die)
    assert list(tmp_path.iterdir()) == []


def test_poisson_counts_are_keyed_by_seed_row_and_fibre():
    """A row's counts depend on (seed, row id, its own expectations) alone: not on batching,
    on which other rows are drawn beside it, or on their values."""
    from expertsim.photon_counts import poisson_counts

    rng = np.random.default_rng(3)
    expected = rng.exponential(2.0, (40, 44, 44)) * (rng.random((40, 44, 44)) < 0.1)
    expected[5] = 0.0  # an empty row
    expected[7, 0, 0] = 250.0  # a mean drawn through scipy's quantile function
    counts = poisson_counts(expected, seed=9, first_row=1000)
    np.testing.assert_array_equal(poisson_counts(expected[10:], 9, 1010), counts[10:])
    subset = np.array([3, 7, 31])
    np.testing.assert_array_equal(poisson_counts(expected[subset], 9, row_ids=1000 + subset),
                                  counts[subset])
    changed = expected.copy()
    changed[8:] *= 3.0
    np.testing.assert_array_equal(poisson_counts(changed, 9, 1000)[:8], counts[:8])
    assert counts[5].sum() == 0 and counts.dtype == np.uint32
    assert (counts[expected == 0] == 0).all()
    assert not np.array_equal(poisson_counts(expected, seed=10, first_row=1000), counts)


@pytest.mark.parametrize("mean", [0.05, 0.7, 3.0, 29.5, 31.0, 250.0])
def test_keyed_poisson_draws_follow_the_poisson_distribution(mean):
    """The inverse-CDF search (means <= 30) and scipy's quantile (above) give Poisson counts:
    every probability within 5 sigma of the pmf, on 10^5 draws keyed by row."""
    import scipy.stats

    from expertsim.photon_counts import poisson_counts

    n = 100_000
    counts = poisson_counts(np.full((n, 1, 1), mean), seed=4).ravel().astype(int)
    values = np.arange(int(mean + 8 * np.sqrt(mean) + 8))
    observed = np.bincount(counts, minlength=len(values))[:len(values)] / n
    expected = scipy.stats.poisson.pmf(values, mean)
    sigma = np.sqrt(expected * (1 - expected) / n) + 1e-5
    assert np.all(np.abs(observed - expected) < 5 * sigma)
    assert abs(counts.mean() - mean) < 5 * np.sqrt(mean / n)


@pytest.mark.parametrize("faint_up_to", [0.1, 0.0])
def test_faint_fibres_drawn_as_one_total_keep_every_fibres_poisson_law(faint_up_to):
    """The faint fibres of a row are drawn as one Poisson total placed multinomially (0: each
    on its own): each fibre's count still follows its own Poisson law (within 5 sigma of the
    pmf on 10^5 rows), the counts of different fibres stay uncorrelated, and a fibre expecting
    none gets none."""
    import scipy.stats

    from expertsim.photon_counts import poisson_counts

    means = np.array([0.02, 0.05, 0.1, 0.0, 0.5, 4.0])  # 3 faint (at 0.1), 1 dark, 2 bright
    n = 100_000
    counts = poisson_counts(np.tile(means, (n, 1)).reshape(n, 2, 3), seed=5,
                            faint_up_to=faint_up_to)
    counts = counts.reshape(n, -1).astype(int)
    assert counts[:, 3].sum() == 0
    lit = np.nonzero(means > 0)[0]
    for fibre in lit:
        values = np.arange(int(means[fibre] + 8 * np.sqrt(means[fibre]) + 8))
        observed = np.bincount(counts[:, fibre], minlength=len(values))[:len(values)] / n
        expected = scipy.stats.poisson.pmf(values, means[fibre])
        sigma = np.sqrt(expected * (1 - expected) / n) + 1e-5
        assert np.all(np.abs(observed - expected) < 5 * sigma), fibre
    correlation = np.corrcoef(counts[:, lit].T)
    off_diagonal = correlation[~np.eye(len(lit), dtype=bool)]
    assert np.abs(off_diagonal).max() < 5 / np.sqrt(n)  # a fixed total would anticorrelate


def test_faint_photons_land_only_on_lit_fibres_of_sparse_images():
    """The faint photons are placed block by block (photon_counts._place): on ZN-sized images
    with whole blocks dark, lit fibres down to 1e-12 photons and a row lit in one corner only,
    no photon lands on a dark fibre, every row gets one (given at least one photon), and the
    photons of rows without the redraw match their expectation in number and in place."""
    from expertsim.photon_counts import poisson_counts

    rng = np.random.default_rng(1)
    expected = rng.exponential(0.01, size=(4000, 44, 44))
    expected[expected < 0.02] = 0.0  # ~86 % of the fibres dark
    expected[:, :, :11] = 0.0  # whole blocks of 44 fibres dark
    expected[:, -1, -1] = 1e-12
    expected[::7] = 0.0
    expected[::7, 0, 0] = 1e-3  # one lit fibre, far from the others
    counts = poisson_counts(expected, seed=2, nonempty=True)
    assert not counts[expected == 0].any()
    totals = counts.reshape(len(counts), -1).sum(axis=1)
    assert totals.min() >= 1 and np.all(counts[::7, 0, 0] == totals[::7])
    plain = np.ones(len(counts), dtype=bool)
    plain[::7] = False
    mean = expected[plain].sum() / plain.sum()
    assert abs(totals[plain].mean() - mean) < 5 * np.sqrt(mean / plain.sum())
    # and where they land: the photons of each image row (a block of 44 fibres) and column
    rows_expected, rows_drawn = expected[plain].sum(axis=(0, 2)), counts[plain].sum(axis=(0, 2))
    cols_expected, cols_drawn = expected[plain].sum(axis=(0, 1)), counts[plain].sum(axis=(0, 1))
    for drawn, mean in ((rows_drawn, rows_expected), (cols_drawn, cols_expected)):
        assert np.all(np.abs(drawn - mean) < 5 * np.sqrt(mean) + 1)


def test_keyed_uniforms_are_uniform_and_uncorrelated():
    from expertsim.photon_counts import keyed_uniforms

    rows, fibres = np.meshgrid(np.arange(500), np.arange(200), indexing="ij")
    uniform = keyed_uniforms(0, rows.ravel(), fibres.ravel()).reshape(500, 200)
    assert uniform.min() > 0 and uniform.max() < 1
    assert abs(uniform.mean() - 0.5) < 0.005 and abs(uniform.var() - 1 / 12) < 0.002
    for a, b in ((uniform[1:], uniform[:-1]), (uniform[:, 1:], uniform[:, :-1])):
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.01
    histogram = np.histogram(uniform, bins=20, range=(0, 1))[0]
    assert np.all(np.abs(histogram - 5000) < 5 * np.sqrt(5000))


def test_bfloat16_experts_route_alike_and_draw_close_expectations(model_file, zn_file):
    """--precision bfloat16: the router stays float32 (same experts); the expected photons
    agree with float32 to bf16's rounding; an unknown precision is refused by name."""
    from expertsim.errors import ConfigError
    from expertsim.eventfile import read_raw_conditions
    from expertsim.trained_model import TrainedModel

    model = TrainedModel.load(model_file)
    conditions, _ = read_raw_conditions(zn_file)
    c = model.scale(conditions[:500])
    z = torch.randn(500, model.noise_dim, generator=torch.Generator().manual_seed(0))
    full, experts = model.expected_photons(z, c)
    half, half_experts = model.set_precision("bfloat16").expected_photons(z, c)
    np.testing.assert_array_equal(experts, half_experts)
    assert half.dtype == np.float32 and not np.array_equal(full, half)
    np.testing.assert_allclose(half.sum(axis=(1, 2)), full.sum(axis=(1, 2)), rtol=0.05)
    with pytest.raises(ConfigError, match="float16"):
        model.set_precision("float16")
