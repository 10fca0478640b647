"""Pb-Pb collisions as the ZDCs see them: spectator nucleons per collision, their responses
summed per collision and side, generated against the built-in Monte Carlo.

A Glauber Monte Carlo (SOURCES.md) places the 208 nucleons of each lead nucleus from a
Woods-Saxon density, draws the impact parameter b from 2 pi b db, and calls a nucleon a
participant when it passes within sqrt(sigma_NN / pi) of a nucleon of the other nucleus in the
transverse plane. Collisions with at least one participant are inelastic; their centrality is
the percentile of b among them (a sharp impact-parameter selection, as in ALICE's Glauber
tables). The nucleons of a nucleus that do not participate are its spectators.

Not every spectator reaches a ZDC as a free nucleon: in peripheral collisions most stay bound
in heavy fragments, which the magnets steer away from both calorimeters, so the free-neutron
number is not monotonic in centrality. This module's model of that (a choice, one parameter):
the spectator remnant of a nucleus gets an excitation energy of ``excitation_per_abraded_mev``
per participant of that nucleus (the abrasion estimate, SOURCES.md) and each of its spectator
nucleons is set free with probability 1 - exp(-E* / (A_spectators * ``binding_per_nucleon_mev``)).

Each free nucleon gets the built-in simulator's spectator kinematics (``SimulationParameters``:
energy, Fermi-motion transverse momentum) and the vertex of its collision; nucleus A flies to
the detector at positive z, nucleus C to the one at negative z. Free neutrons hit ZN, free
protons ZP. One "entry" is one side of one collision: the sum of its nucleons' responses.

Legend: N collisions, M entries (2 N), P particles, C channels.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from expertsim.detector import channel_sums
from expertsim.errors import ConfigError
from expertsim.metrics import wasserstein_1d
from expertsim.simulate import SimulationParameters, simulate_response

NEUTRON_MASS_MEV, PROTON_MASS_MEV = 939.565, 938.272
CENTRALITY_EDGES = (0, 10, 20, 30, 40, 50, 60, 70, 80, 100)  # percent
CHUNK_COLLISIONS = 64  # collisions whose 208 x 208 nucleon distances are computed at once
CHUNK_PARTICLES = 4096  # particles simulated or generated at once


@dataclass(frozen=True)
class GlauberParameters:
    """Nucleus and cross-section of the Glauber Monte Carlo; values and sources in SOURCES.md."""

    mass_number: int = 208
    protons: int = 82
    radius_fm: float = 6.62  # Woods-Saxon half-density radius of 208Pb
    diffuseness_fm: float = 0.546
    sigma_nn_mb: float = 67.6  # inelastic nucleon-nucleon cross-section at 5.02 TeV
    b_max_fm: float = 20.0  # 2 x (R + 7 a): no nucleon pair can meet beyond it
    excitation_per_abraded_mev: float = 13.0  # abrasion estimate
    binding_per_nucleon_mev: float = 8.0  # choice: ~ the binding energy per nucleon of lead

    def __post_init__(self) -> None:
        if not 0 < self.protons < self.mass_number:
            raise ConfigError(f"protons must lie between 0 and mass_number, got {self.protons}")
        for name in ("radius_fm", "diffuseness_fm", "sigma_nn_mb", "b_max_fm",
                     "excitation_per_abraded_mev", "binding_per_nucleon_mev"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass
class Collisions:
    """Inelastic collisions: per collision (N,) impact parameter, centrality (%), vertex
    (N, 3); per nucleus (N, 2) for A and C: participants, spectator neutrons and protons,
    free neutrons and protons."""

    b_fm: np.ndarray
    centrality: np.ndarray
    vertex_cm: np.ndarray
    participants: np.ndarray
    spectator_neutrons: np.ndarray
    spectator_protons: np.ndarray
    free_neutrons: np.ndarray
    free_protons: np.ndarray


def _nucleon_positions(n_nuclei: int, glauber: GlauberParameters, rng: np.random.Generator
                       ) -> np.ndarray:
    """Transverse positions (n, A, 2) in fm of nucleons drawn from the Woods-Saxon density."""
    radius, a, count = glauber.radius_fm, glauber.diffuseness_fm, glauber.mass_number
    r_max = radius + 10 * a
    wanted = n_nuclei * count
    radii = np.empty(0)
    while len(radii) < wanted:  # rejection sampling of r^2 rho(r), envelope r_max^2
        r = r_max * rng.random(2 * wanted)
        keep = rng.random(2 * wanted) * r_max ** 2 < r ** 2 / (1 + np.exp((r - radius) / a))
        radii = np.concatenate([radii, r[keep]])
    radii = radii[:wanted]
    cos_theta = rng.uniform(-1, 1, wanted)
    phi = rng.uniform(0, 2 * np.pi, wanted)
    transverse = radii * np.sqrt(1 - cos_theta ** 2)
    xy = np.stack([transverse * np.cos(phi), transverse * np.sin(phi)], axis=1)
    return xy.reshape(n_nuclei, count, 2)


def _participants(b_N: np.ndarray, glauber: GlauberParameters, rng: np.random.Generator
                  ) -> np.ndarray:
    """Participant flags (N, 2, A) of nuclei A and C at impact parameters b_N."""
    d2 = glauber.sigma_nn_mb * 0.1 / np.pi  # mb -> fm^2 (1 mb = 0.1 fm^2)
    flags = np.zeros((len(b_N), 2, glauber.mass_number), dtype=bool)
    for start in range(0, len(b_N), CHUNK_COLLISIONS):
        b = b_N[start:start + CHUNK_COLLISIONS]
        a_xy = _nucleon_positions(len(b), glauber, rng)
        c_xy = _nucleon_positions(len(b), glauber, rng)
        a_xy[:, :, 0] += b[:, None] / 2
        c_xy[:, :, 0] -= b[:, None] / 2
        close = ((a_xy[:, :, None, :] - c_xy[:, None, :, :]) ** 2).sum(axis=3) < d2
        flags[start:start + len(b), 0] = close.any(axis=2)
        flags[start:start + len(b), 1] = close.any(axis=1)
    return flags


def glauber_collisions(n_collisions: int, rng: np.random.Generator,
                       glauber: GlauberParameters = GlauberParameters(),
                       params: SimulationParameters = SimulationParameters()) -> Collisions:
    """``n_collisions`` inelastic Pb-Pb collisions (drawn until that many have participants)."""
    if n_collisions < 1:
        raise ConfigError(f"the number of collisions must be >= 1, got {n_collisions}")
    b_parts, flag_parts, found = [], [], 0
    while found < n_collisions:
        b = glauber.b_max_fm * np.sqrt(rng.random(2 * (n_collisions - found) + 16))
        flags = _participants(b, glauber, rng)
        inelastic = flags.any(axis=(1, 2))
        b_parts.append(b[inelastic])
        flag_parts.append(flags[inelastic])
        found += int(inelastic.sum())
    b_N = np.concatenate(b_parts)[:n_collisions]
    flags = np.concatenate(flag_parts)[:n_collisions]
    is_proton = np.zeros(glauber.mass_number, dtype=bool)
    is_proton[:glauber.protons] = True  # Woods-Saxon draws are exchangeable: any labelling
    spectator = ~flags
    neutrons = (spectator & ~is_proton).sum(axis=2)
    protons = (spectator & is_proton).sum(axis=2)
    participants = flags.sum(axis=2)
    excitation = glauber.excitation_per_abraded_mev * participants
    remnant = np.maximum(neutrons + protons, 1)
    p_free = 1 - np.exp(-excitation / (remnant * glauber.binding_per_nucleon_mev))
    vertex = np.stack([params.vertex_xy_sigma_cm * rng.standard_normal(n_collisions),
                       params.vertex_xy_sigma_cm * rng.standard_normal(n_collisions),
                       params.vertex_z_sigma_cm * rng.standard_normal(n_collisions)], axis=1)
    order = np.argsort(np.argsort(b_N, kind="stable"), kind="stable")
    return Collisions(b_fm=b_N, centrality=100.0 * (order + 0.5) / n_collisions,
                      vertex_cm=vertex, participants=participants,
                      spectator_neutrons=neutrons, spectator_protons=protons,
                      free_neutrons=rng.binomial(neutrons, p_free),
                      free_protons=rng.binomial(protons, p_free))


def spectator_particles(collisions: Collisions, detector: str, rng: np.random.Generator,
                        params: SimulationParameters = SimulationParameters()
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The free nucleons that reach ``detector`` (neutrons for ZN, protons for ZP): conditions
    (P, 9) in the event-file order, PDG ids (P,), entry index (P,) (2 k for nucleus A of
    collision k, 2 k + 1 for C) and nucleons per entry (M,)."""
    proton = detector.upper() == "ZP"
    per_entry = (collisions.free_protons if proton else collisions.free_neutrons).reshape(-1)
    entry = np.repeat(np.arange(len(per_entry)), per_entry)
    n = len(entry)
    mass = PROTON_MASS_MEV if proton else NEUTRON_MASS_MEV
    energy = params.spectator_energy_gev * (1 + params.spectator_energy_rel_sigma
                                            * rng.standard_normal(n))
    momentum = np.sqrt(energy ** 2 - (mass / 1000) ** 2)
    px, py = (params.spectator_pt_sigma_gev * rng.standard_normal((2, n)))
    side = np.where(entry % 2 == 0, 1.0, -1.0)
    pz = side * np.sqrt(momentum ** 2 - px ** 2 - py ** 2)
    vertex = collisions.vertex_cm[entry // 2]
    conditions = np.stack([energy, vertex[:, 0], vertex[:, 1], vertex[:, 2], px, py, pz,
                           np.full(n, mass), np.full(n, 1.0 if proton else 0.0)], axis=1)
    pdg = np.full(n, 2212 if proton else 2112, dtype=np.int32)
    return conditions, pdg, entry, per_entry


def summed_channels(images_of: Callable[[int, int], np.ndarray], entry_P: np.ndarray,
                    n_entries: int, progress: Callable[[int], None] | None = None
                    ) -> np.ndarray:
    """The five channel sums (M, 5) of each entry, adding the responses that
    ``images_of(start, stop)`` gives for particles [start, stop), chunk by chunk."""
    sums_MC = np.zeros((n_entries, 5))
    for start in range(0, len(entry_P), CHUNK_PARTICLES):
        stop = min(start + CHUNK_PARTICLES, len(entry_P))
        np.add.at(sums_MC, entry_P[start:stop], channel_sums(images_of(start, stop)))
        if progress is not None:
            progress(stop - start)
    return sums_MC


def compare_collisions(model_path: str | os.PathLike, n_collisions: int, *, seed: int = 0,
                       glauber: GlauberParameters = GlauberParameters(),
                       progress: Callable[[int], None] | None = None
                       ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Pb-Pb collisions generated with the model (gate, then generators, as in production)
    and simulated twice with the built-in Monte Carlo (MC, and an independent MC repeat for
    the floor) on the same free nucleons. Returns the report section and the per-entry
    arrays (summed channels (M, 5) of "mc", "mc_repeat", "generated"; "nucleons",
    "centrality") for the plots. ``progress(n)`` after each chunk of particles."""
    from expertsim.sampling import sample_rows
    from expertsim.trained_model import TrainedModel

    model = TrainedModel.load(model_path)
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]
    collisions = glauber_collisions(n_collisions, streams[0], glauber)
    conditions, pdg, entry, per_entry = spectator_particles(collisions, model.detector.name,
                                                            streams[1])

    def simulated(rng):
        return lambda start, stop: simulate_response(conditions[start:stop], pdg[start:stop],
                                                     model.detector, rng)

    def generated(start: int, stop: int) -> np.ndarray:
        return sample_rows(model, conditions[start:stop], seed, start, gate=True)[0]

    arrays = {name: summed_channels(images_of, entry, len(per_entry), progress)
              for name, images_of in (("mc", simulated(streams[2])),
                                      ("mc_repeat", simulated(streams[3])),
                                      ("generated", generated))}
    arrays.update(nucleons=per_entry, centrality=np.repeat(collisions.centrality, 2))
    section = {"detector": model.detector.name, "n_collisions": n_collisions,
               "n_particles": int(len(entry)), "seed": seed,
               "nucleon": "proton" if model.detector.name == "ZP" else "neutron",
               "glauber": asdict(glauber),
               "by_centrality": _by_centrality(arrays),
               "linearity": _linearity(arrays)}
    section["headline"] = _collision_headline(arrays, section["linearity"])
    return section, arrays


def _ws_pair(generated_MC: np.ndarray, reference_MC: np.ndarray) -> dict[str, float]:
    """WS of the summed photon sum and the mean WS of the five summed channels."""
    return {"ws_photon_sum": wasserstein_1d(generated_MC.sum(axis=1),
                                            reference_MC.sum(axis=1)),
            "ws_channels": float(np.mean([wasserstein_1d(generated_MC[:, c], reference_MC[:, c])
                                          for c in range(generated_MC.shape[1])]))}


def _moments(values: np.ndarray) -> list[float]:
    return [float(values.mean()), float(values.std())] if len(values) else [None, None]


def _by_centrality(arrays: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Per centrality class: entries, free nucleons (mean, rms), summed photon sum (mean,
    rms) of MC and generated, WS generated vs MC and MC repeat vs MC (the floor)."""
    rows = []
    for low, high in zip(CENTRALITY_EDGES[:-1], CENTRALITY_EDGES[1:]):
        chosen = (arrays["centrality"] >= low) & (arrays["centrality"] < high)
        if not chosen.any():
            continue
        mc, repeat, gen = (arrays[k][chosen] for k in ("mc", "mc_repeat", "generated"))
        model, floor = _ws_pair(gen, mc), _ws_pair(repeat, mc)
        rows.append({"centrality": [low, high], "entries": int(chosen.sum()),
                     "nucleons": _moments(arrays["nucleons"][chosen]),
                     "photon_sum_mc": _moments(mc.sum(axis=1)),
                     "photon_sum_generated": _moments(gen.sum(axis=1)),
                     **model, **{f"floor_{k}": v for k, v in floor.items()},
                     "ratio": (model["ws_photon_sum"] / floor["ws_photon_sum"]
                               if floor["ws_photon_sum"] > 0 else None)})
    return rows


def _linearity(arrays: dict[str, np.ndarray], n_bins: int = 10) -> dict[str, Any]:
    """Summed photon sum against the number of free nucleons: photons per nucleon (a
    least-squares line through 0) and, per nucleon-number bin, the mean and the relative
    resolution rms / mean, for MC, MC repeat and generated."""
    nucleons = arrays["nucleons"]
    top = max(int(nucleons.max()), 1)
    edges = np.unique(np.linspace(1, top + 1, n_bins + 1).round().astype(int))
    result: dict[str, Any] = {"nucleon_edges": edges.tolist()}
    for name in ("mc", "mc_repeat", "generated"):
        sums = arrays[name].sum(axis=1)
        weight = float((nucleons ** 2).sum())
        means, resolutions = [], []
        for low, high in zip(edges[:-1], edges[1:]):
            chosen = sums[(nucleons >= low) & (nucleons < high)]
            mean = float(chosen.mean()) if len(chosen) >= 2 else None
            means.append(mean)
            resolutions.append(float(chosen.std() / mean) if mean else None)
        result[name] = {"photons_per_nucleon": float((sums * nucleons).sum() / weight)
                        if weight else None, "mean": means, "resolution": resolutions}
    return result


def _collision_headline(arrays: dict[str, np.ndarray], linearity: dict) -> dict[str, Any]:
    """All collisions: WS (generated and floor) of the summed photon sum and channels, the
    ratio, and the generated / MC ratio of the photons per nucleon."""
    model, floor = _ws_pair(arrays["generated"], arrays["mc"]), _ws_pair(arrays["mc_repeat"],
                                                                         arrays["mc"])
    mc_slope = linearity["mc"]["photons_per_nucleon"]
    gen_slope = linearity["generated"]["photons_per_nucleon"]
    return {**model, **{f"floor_{k}": v for k, v in floor.items()},
            "ratio": model["ws_photon_sum"] / floor["ws_photon_sum"]
            if floor["ws_photon_sum"] > 0 else None,
            "slope_ratio": gen_slope / mc_slope if mc_slope else None}
