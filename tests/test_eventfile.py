import h5py
import numpy as np
import pytest

from expertsim.errors import DataSchemaError
from expertsim.eventfile import (EventFile, EventFileWriter, check_event_file, read_columns,
                                 summarize, write_event_file)
from expertsim.provenance import make_provenance


def test_complete_file_has_every_documented_key(zn_file):
    info = check_event_file(zn_file)
    assert info.detector.name == "ZN" and info.n_events == 4000 and info.has_pdg
    assert info.provenance["made_by"] == "tests" and info.provenance["seed"] == 1
    with h5py.File(zn_file) as handle:
        assert list(handle["conditions"].attrs["columns"])[0] == "E"
        assert handle["images"].compression == "gzip"
        photon_sum = handle["derived/photon_sum"][:]
        np.testing.assert_allclose(handle["derived/channels"][:].sum(1), photon_sum, rtol=1e-6)
        np.testing.assert_allclose(handle["images"][:50].sum(axis=(1, 2)), photon_sum[:50])


def test_repeats_share_split_and_spread(zn_file):
    columns = read_columns(zn_file, ("split", "derived/condition_id", "derived/spread",
                                     "derived/photon_sum"))
    split, ids = columns["split"], columns["derived/condition_id"]
    np.testing.assert_array_equal(split[0::2], split[1::2])  # repeat=2 in the fixture
    np.testing.assert_array_equal(ids[0::2], ids[1::2])
    photon = columns["derived/photon_sum"]
    expected = np.abs(photon[0::2] - photon[1::2]) / np.sqrt(2)  # std of two values, ddof=1
    np.testing.assert_allclose(columns["derived/spread"][0::2], expected, rtol=1e-5)
    fractions = np.bincount(split, minlength=3) / len(split)
    np.testing.assert_allclose(fractions, [0.7, 0.1, 0.2], atol=0.02)


def test_scaler_is_fitted_on_the_train_split(zn_file):
    with EventFile(zn_file) as events:
        mean, scale = events.scaler().mean, events.scaler().scale
    with h5py.File(zn_file) as handle:
        train = handle["conditions"][:][handle["split"][:] == 0].astype(float)
    np.testing.assert_allclose(mean, train.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(scale, train.std(0), rtol=1e-5)


def test_spread_is_nan_without_repeats(tmp_path, rng):
    images = rng.poisson(1.0, (20, 44, 44))
    conditions = rng.normal(size=(20, 9))
    write_event_file(tmp_path / "a.h5", images, conditions, detector="ZN",
                     provenance=make_provenance(made_by="test"))
    assert np.isnan(read_columns(tmp_path / "a.h5", ("derived/spread",))["derived/spread"]).all()


def test_failed_write_leaves_no_file(tmp_path, rng):
    target = tmp_path / "out.h5"
    with pytest.raises(RuntimeError):
        with EventFileWriter(target, "ZN", 10, provenance={}) as writer:
            writer.write(0, rng.poisson(1.0, (5, 44, 44)), rng.normal(size=(5, 9)))
            raise RuntimeError("killed half-way")
    assert list(tmp_path.iterdir()) == []


def test_incomplete_write_is_refused(tmp_path, rng):
    with pytest.raises(DataSchemaError, match="5 of 10 events"):
        with EventFileWriter(tmp_path / "out.h5", "ZN", 10, provenance={}) as writer:
            writer.write(0, rng.poisson(1.0, (5, 44, 44)), rng.normal(size=(5, 9)))
    assert list(tmp_path.iterdir()) == []


def test_schema_check_names_file_and_key(tmp_path, zn_file):
    broken = tmp_path / "broken.h5"
    with h5py.File(zn_file) as source, h5py.File(broken, "w") as target:
        for key in ("images", "conditions", "split", "derived", "scaler"):
            source.copy(key, target)
        target["derived"].pop("channels")
        target.attrs.update(dict(source.attrs))
    with pytest.raises(DataSchemaError, match=r"broken\.h5: missing dataset '/derived/channels'"):
        check_event_file(broken)


def test_summary(zn_file):
    summary = summarize(zn_file)
    assert summary["detector"] == "ZN" and summary["n_events"] == 4000
    assert 0 < summary["fraction_empty"] < 1
    quantiles = summary["photon_sum_quantiles_non_empty"]
    assert quantiles["q0"] <= quantiles["q50"] <= quantiles["q100"]
