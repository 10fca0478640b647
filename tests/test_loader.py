import tracemalloc

import h5py
import numpy as np
import pytest

from expertsim.errors import ConfigError
from expertsim.loader import EventLoader
from tests.conftest import simulate_file


def indices_of(loader):
    return [batch.index.copy() for batch in loader]


def test_each_event_once_per_epoch_and_reproducible(zn_file):
    loader = EventLoader(zn_file, split="train", batch_size=256, seed=3, memory_limit_bytes=8e6)
    first = indices_of(loader)
    seen = np.concatenate(first)
    with h5py.File(zn_file) as handle:
        expected = np.flatnonzero(handle["split"][:] == 0)
    np.testing.assert_array_equal(np.sort(seen), expected)
    assert all(len(b) == 256 for b in first[:-1])
    second_epoch = indices_of(loader)
    assert not np.array_equal(np.concatenate(second_epoch), seen)
    again = EventLoader(zn_file, split="train", batch_size=256, seed=3, memory_limit_bytes=8e6)
    for a, b in zip(first, indices_of(again)):
        np.testing.assert_array_equal(a, b)
    other_seed = EventLoader(zn_file, split="train", batch_size=256, seed=4, memory_limit_bytes=8e6)
    assert not np.array_equal(np.concatenate(indices_of(other_seed)), seen)


def test_transforms_and_filters(zn_file):
    loader = EventLoader(zn_file, split="val", batch_size=64, min_photon_sum=1, shuffle=False)
    batch = next(iter(loader))
    with h5py.File(zn_file) as handle:
        raw = handle["images"][batch.index[0]]
        conditions = handle["conditions"][batch.index[0]]
        mean, scale = handle["scaler/mean"][:], handle["scaler/scale"][:]
    np.testing.assert_allclose(batch.images[0], np.log1p(raw), rtol=1e-6)
    np.testing.assert_allclose(batch.conditions[0], (conditions - mean) / scale, rtol=1e-5,
                               atol=1e-6)
    assert all(b.photon_sum.min() >= 1 for b in loader)


def test_streams_a_file_larger_than_its_memory_limit(tmp_path):
    path = simulate_file(tmp_path / "big.h5", "ZN", 12000, seed=7)
    limit = 2_000_000  # bytes; the decompressed images alone are 46 MB
    with h5py.File(path) as handle:
        assert handle["images"].size * 4 > 20 * limit
    loader = EventLoader(path, split="all", batch_size=64, seed=0, memory_limit_bytes=limit)
    tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    n_events = sum(len(batch) for batch in loader)
    peak = tracemalloc.get_traced_memory()[1] - baseline
    tracemalloc.stop()
    assert n_events == 12000
    assert peak < limit, f"peak {peak} bytes for a limit of {limit}"


def test_ranks_get_contiguous_slices_of_the_global_batch(zn_file):
    single = EventLoader(zn_file, batch_size=128, seed=1)
    ranks = [EventLoader(zn_file, batch_size=128, seed=1, rank=r, world_size=2) for r in (0, 1)]
    for whole, part0, part1 in zip(single, *ranks):
        np.testing.assert_array_equal(whole.index, np.concatenate([part0.index, part1.index]))


def test_bad_arguments_are_explained(zn_file):
    with pytest.raises(ConfigError, match="split 'dev'"):
        EventLoader(zn_file, split="dev")
    with pytest.raises(ConfigError, match="no events"):
        EventLoader(zn_file, min_photon_sum=1e9)
    with pytest.raises(ConfigError, match="cannot hold"):
        EventLoader(zn_file, batch_size=512, memory_limit_bytes=1e6)
    with pytest.raises(ConfigError, match="divisible"):
        EventLoader(zn_file, batch_size=5, world_size=2)
