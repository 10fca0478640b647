"""Pb-Pb collisions (expertsim.collisions): the Glauber Monte Carlo against published numbers,
the spectator bookkeeping, and the generated-vs-MC comparison in a validation report."""

from __future__ import annotations

import numpy as np
import pytest

from expertsim.collisions import (GlauberParameters, glauber_collisions, spectator_particles,
                                  summed_channels)
from expertsim.errors import ConfigError


@pytest.fixture(scope="module")
def collisions():
    return glauber_collisions(2000, np.random.default_rng(0))


def _class_mean(collisions, values, low, high):
    chosen = (collisions.centrality >= low) & (collisions.centrality < high)
    return values[chosen].mean()


def test_participants_per_centrality_class_match_alices_glauber_numbers(collisions):
    # ALICE's Glauber tables (SOURCES.md): <Npart> about 383 in 0-5 % and about 16 in 70-80 %
    npart = collisions.participants.sum(axis=1)
    assert 365 < _class_mean(collisions, npart, 0, 5) < 400
    assert 11 < _class_mean(collisions, npart, 70, 80) < 21
    # centrality is the percentile of b among inelastic collisions (sharp b selection)
    assert np.all(np.diff(collisions.centrality[np.argsort(collisions.b_fm)]) > 0)
    assert (npart >= 1).all()


def test_every_nucleon_is_a_participant_or_a_spectator_and_free_ones_are_spectators(collisions):
    glauber = GlauberParameters()
    total = collisions.participants + collisions.spectator_neutrons + collisions.spectator_protons
    assert (total == glauber.mass_number).all()
    assert (collisions.spectator_protons <= glauber.protons).all()
    assert (collisions.free_neutrons <= collisions.spectator_neutrons).all()
    assert (collisions.free_protons <= collisions.spectator_protons).all()


def test_free_neutrons_are_not_monotonic_in_centrality(collisions):
    # central: few spectators; peripheral: most stay bound in fragments (the ZN signal peaks
    # in semi-central collisions)
    free = collisions.free_neutrons.mean(axis=1)
    central = _class_mean(collisions, free, 0, 5)
    middle = _class_mean(collisions, free, 20, 40)
    peripheral = _class_mean(collisions, free, 80, 100)
    assert middle > 2 * central and middle > 2 * peripheral


def test_spectator_kinematics_go_to_their_side_with_their_collision_vertex(collisions):
    conditions, pdg, entry, per_entry = spectator_particles(collisions, "ZN",
                                                            np.random.default_rng(1))
    assert len(conditions) == per_entry.sum() == collisions.free_neutrons.sum()
    assert set(pdg.tolist()) == {2112} and (conditions[:, 8] == 0).all()
    assert (np.sign(conditions[:, 6]) == np.where(entry % 2 == 0, 1, -1)).all()
    np.testing.assert_array_equal(conditions[:, 1:4], collisions.vertex_cm[entry // 2])
    assert 2000 < np.median(conditions[:, 0]) < 3000  # GeV: beam-energy nucleons
    protons = spectator_particles(collisions, "ZP", np.random.default_rng(1))
    assert set(protons[1].tolist()) == {2212} and (protons[0][:, 8] == 1).all()


def test_summed_channels_add_the_responses_of_each_entry():
    images = np.arange(5 * 2 * 2).reshape(5, 2, 2)
    entry = np.array([0, 0, 2, 2, 2])
    sums = summed_channels(lambda start, stop: images[start:stop], entry, 3)
    assert sums.shape == (3, 5)
    assert sums[0].sum() == images[:2].sum() and sums[1].sum() == 0
    assert sums[2].sum() == images[2:].sum()


def test_bad_glauber_parameters_are_refused():
    with pytest.raises(ConfigError, match="sigma_nn_mb"):
        GlauberParameters(sigma_nn_mb=0.0)
    with pytest.raises(ConfigError, match="collisions"):
        glauber_collisions(0, np.random.default_rng(0))


def test_collision_scores_know_the_answer_for_a_copy_and_for_double_light():
    from expertsim.collisions import _by_centrality, _collision_headline, _linearity

    rng = np.random.default_rng(2)
    nucleons = rng.integers(0, 60, 400)
    mc = rng.poisson(300, (400, 5)) * (nucleons[:, None] > 0) * nucleons[:, None] / 5.0
    repeat = rng.poisson(300, (400, 5)) * (nucleons[:, None] > 0) * nucleons[:, None] / 5.0
    arrays = {"mc": mc, "mc_repeat": repeat, "generated": mc.copy(), "nucleons": nucleons,
              "centrality": rng.uniform(0, 100, 400)}
    linearity = _linearity(arrays)
    copy = _collision_headline(arrays, linearity)
    assert copy["ws_photon_sum"] == 0 and copy["slope_ratio"] == pytest.approx(1.0)
    assert linearity["mc"]["photons_per_nucleon"] == pytest.approx(300.0, rel=0.01)
    arrays["generated"] = 2 * mc
    double = _collision_headline(arrays, _linearity(arrays))
    assert double["slope_ratio"] == pytest.approx(2.0)
    assert double["ratio"] > 10  # far beyond the MC repeat
    rows = _by_centrality(arrays)
    assert [row["centrality"] for row in rows][0] == [0, 10]
    assert sum(row["entries"] for row in rows) == 400
