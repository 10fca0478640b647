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


def make_model(data, output, conditioning="plain"):
    """A model file trained for 3 steps on ``data``, its output lifted to real photons."""
    from expertsim.trainer import Trainer

    config = tiny_config(data, output, max_steps=3)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model,
                                                                   conditioning=conditioning))
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
def test_shards_merge_into_the_unsharded_run(model_file, zn_file, tmp_path):
    sample_to_file(model_file, zn_file, tmp_path / "all.h5", seed=3)
    shards = [sample_to_file(model_file, zn_file, tmp_path / f"s{i}.h5", seed=3,
                             shard=Shard(i, 3), batch_size=500) for i in (2, 0, 1)]
    merge_shards(shards, tmp_path / "merged.h5")
    for key in ("images", "conditions", "expert", "source_row"):
        assert np.array_equal(read(tmp_path / "all.h5", key), read(tmp_path / "merged.h5", key))


def test_merge_refuses_inconsistent_or_missing_shards(model_file, zn_file, tmp_path):
    first = sample_to_file(model_file, zn_file, tmp_path / "s0.h5", seed=3, shard=Shard(0, 2))
    other_seed = sample_to_file(model_file, zn_file, tmp_path / "s1.h5", seed=4,
                                shard=Shard(1, 2))
    with pytest.raises(DataSchemaError, match="seed 4 differs"):
        merge_shards([first, other_seed], tmp_path / "merged.h5")
    with pytest.raises(DataSchemaError, match=r"missing \[1\]"):
        merge_shards([first], tmp_path / "merged.h5")
    with pytest.raises(DataSchemaError, match="not a shard"):
        merge_shards([first, zn_file], tmp_path / "merged.h5")
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


def test_poisson_counts_are_the_per_row_keyed_draws():
    """The fast path (positive fibres only, one re-keyed bit generator) gives exactly the
    draws of a fresh Philox(key=[seed, row]) per row over the whole image."""
    from expertsim.trained_model import poisson_counts

    rng = np.random.default_rng(3)
    expected = rng.exponential(2.0, (40, 44, 44)) * (rng.random((40, 44, 44)) < 0.1)
    expected[5] = 0.0  # an empty row
    expected[7, 0, 0] = 250.0  # numpy's large-mean algorithm
    counts = poisson_counts(expected, seed=9, first_row=1000)
    for i in range(40):
        fresh = np.random.Generator(np.random.Philox(key=[9, 1000 + i])).poisson(expected[i])
        np.testing.assert_array_equal(counts[i], fresh)
    np.testing.assert_array_equal(poisson_counts(expected[10:], 9, 1010), counts[10:])
    assert counts[5].sum() == 0 and counts.dtype == np.uint32
