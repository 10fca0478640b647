"""Shared fixtures: tiny real event files built in temporary folders."""

from __future__ import annotations

import numpy as np
import pytest

from expertsim.eventfile import EventFileWriter
from expertsim.provenance import make_provenance
from expertsim.simulate import simulate_events


def simulate_file(path, detector="ZN", n_events=3000, seed=0, repeat=1):
    """Simulate ``n_events`` into ``path`` with the library (what `expertsim simulate` does)."""
    with EventFileWriter(path, detector, n_events, with_pdg=True, split_seed=seed,
                         provenance=make_provenance(made_by="tests", seed=seed)) as writer:
        simulate_events(n_events, detector, seed=seed, repeat=repeat,
                        on_batch=lambda start, images, conditions, pdg:
                        writer.write(start, images, conditions, pdg))
    return path


@pytest.fixture(scope="session")
def zn_file(tmp_path_factory):
    return simulate_file(tmp_path_factory.mktemp("data") / "zn.h5", "ZN", 4000, seed=1, repeat=2)


@pytest.fixture(scope="session")
def zp_file(tmp_path_factory):
    return simulate_file(tmp_path_factory.mktemp("data") / "zp.h5", "ZP", 3000, seed=2)


@pytest.fixture()
def rng():
    return np.random.default_rng(1234)
