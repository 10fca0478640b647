"""A fast parametric Monte Carlo of the ZDC response (vectorised numpy, no neural network).

Chain per particle:
1. *Source*: a species is drawn from a mixture of spectator nucleons (E ~ 2.5 TeV), forward
   photons, secondary neutrons, K0_L and charged pions, each with its energy spectrum and
   transverse-momentum scale; half of the particles go to each side (pz < 0 hits the identical
   detector on the other side, so the response does not depend on the sign of pz).
2. *Transport*: a straight line from the vertex to the detector face at 112.5 m; charged
   particles are bent by the machine magnets by ``magnet_kick_cm_gev * q / p`` in x, so that
   2.5 TeV protons land on ZP and everything charged misses ZN. An impact point outside the
   face is a miss: empty image.
3. *Shower start*: electromagnetic particles (photons, electrons) shower at once; hadrons
   interact at a depth drawn from exp(-t / lambda_I); a hadron that has not interacted within
   the detector length punches through. Charged primaries make Cherenkov light in the fibre
   they cross before their shower starts.
4. *Visible energy*: E * (f_em + h/e * (1 - f_em)) with f_em = 1 - (E / E0)^(m - 1) (hadrons;
   1 for EM showers), times the longitudinal containment (a gamma profile in lambda_I units),
   times a gamma-distributed fluctuation of relative width a / sqrt(E) (+) b.
5. *Photons*: a Poisson number with mean yield * visible energy, split over 1 + Poisson
   sub-showers (hadronic showers fragment more at high energy) whose centres scatter around
   the impact point; each photon is placed with a core (Gaussian) + halo (exponential)
   radial profile and counted in the fibre it falls on. Photons off the face are lost (edge
   leakage).

Parameters are in :class:`SimulationParameters`; each field's comment gives its unit and
source. Figures marked SOURCES.md come from the repository's SOURCES.md (Geant4 table, published
datasets); figures marked PDG from the Review of Particle Physics (material tables,
'Calorimetry' review); figures marked "choice" are this model's assumptions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
from scipy.special import gammainc

from expertsim.detector import DETECTORS, Detector, get_detector
from expertsim.errors import ConfigError

# Species table: name, PDG id, mass [MeV/c^2], charge [e], shower type, baryon.
SPECIES = (
    ("spectator_neutron", 2112, 939.565, 0, "had", True),
    ("spectator_proton", 2212, 938.272, 1, "had", True),
    ("photon", 22, 0.0, 0, "em", False),
    ("secondary_neutron", 2112, 939.565, 0, "had", True),
    ("k0_long", 130, 497.611, 0, "had", False),
    ("pi_plus", 211, 139.570, 1, "had", False),
    ("pi_minus", -211, 139.570, -1, "had", False),
)


@dataclass(frozen=True)
class DetectorPhysics:
    """Per-detector shower and light parameters."""

    length_cm: float  # absorber depth; SOURCES.md (ZN 100 cm, ZP 150 cm)
    lambda_int_cm: float  # nuclear interaction length; PDG (W 9.95 cm, brass ~15.6 cm)
    photons_per_vis_gev: float  # photons per visible GeV at the 5 % efficiency of the Geant4
    # table; fitted to SOURCES.md's n-in-ZN / p-in-ZP rows at 100 GeV and 1 TeV
    had_stochastic: float  # a in sigma/E = a/sqrt(E/GeV) (+) b, hadronic; fitted to the
    had_constant: float  # table's relative rms (ZN 18 % at 100 GeV, ZP 20-35 %)
    width_scale: float  # transverse size relative to ZN (lambda_I ratio, PDG)


@dataclass(frozen=True)
class SimulationParameters:
    """All parameters of the parametric ZDC Monte Carlo (units in the field comments)."""

    # --- source: fractions and spectra tuned (choice) so that the non-empty photon-sum
    # quartiles come out of the order of the published ones (SOURCES.md: ZN 12/111/510, max
    # 3360; ZP 2/5/18, max 2312); order of species as in SPECIES ---
    species_fractions: tuple[float, ...] = (0.035, 0.002, 0.463, 0.25, 0.09, 0.08, 0.08)
    spectator_energy_gev: float = 2500.0  # SOURCES.md: 2.5 TeV spectators
    spectator_energy_rel_sigma: float = 0.05  # Fermi-motion smearing, choice
    spectator_pt_sigma_gev: float = 0.10  # per component, Fermi motion + beam divergence, choice
    photon_energy_mean_gev: float = 40.0  # exponential spectrum of forward photons, choice
    photon_pt_sigma_gev: float = 0.008
    secondary_energy_range_gev: tuple[float, float] = (1.0, 1500.0)  # log-uniform, choice
    secondary_pt_sigma_gev: float = 0.02
    pion_energy_range_gev: tuple[float, float] = (2.0, 600.0)
    min_energy_gev: float = 2.0
    vertex_xy_sigma_cm: float = 0.002  # LHC luminous region ~20 um, choice
    vertex_z_sigma_cm: float = 5.0  # ALICE luminous region, choice
    # --- transport ---
    distance_cm: float = 11250.0  # SOURCES.md: ~112.5 m from the interaction point
    magnet_kick_cm_gev: float = 19.0 * 2500.0  # x-deflection * p / q; puts 2.5 TeV p on ZP
    # --- showers ---
    em_fraction_e0_meson_gev: float = 1.0  # PDG Calorimetry (Groom): f_em = 1-(E/E0)^(m-1)
    em_fraction_e0_baryon_gev: float = 2.6  # PDG Calorimetry: E0 ~ 2.6 GeV for protons
    em_fraction_m: float = 0.83  # PDG Calorimetry
    h_over_e: float = 0.2  # Cherenkov (quartz-fibre) calorimeters are non-compensating,
    # h/e ~ 0.2 (Wigmans, Calorimetry); with the above reproduces the table's E-dependence
    longitudinal_beta_lambda: float = 1.0  # gamma-profile scale [lambda_I], choice
    em_stochastic: float = 0.5  # EM resolution a, b, choice
    em_constant: float = 0.03
    track_photons_per_cm: float = 0.02  # photons/cm of a charged primary before it showers, at
    # the published datasets' yield; choice
    relative_efficiency: float = 1.0 / 20.0  # SOURCES.md: published data ~15x below the table;
    # 1/20 puts the 2.5 TeV spectator peak at the published ZN maximum (~3,400 photons)
    # --- transverse profile (fit to SOURCES.md: 44/66/86 % within 5/10/20 mm in ZN) ---
    core_fraction: float = 0.447
    core_sigma_cm: float = 0.276
    halo_scale_cm: float = 0.747
    em_width_factor: float = 0.4  # EM showers: Moliere radius of W (0.93 cm, PDG) vs hadronic
    subshower_rate_per_log: float = 0.6  # mean extra sub-showers per ln(E / 10 GeV), choice
    subshower_max: int = 6
    subshower_sigma_cm: float = 0.3  # scatter of sub-shower centres (ZN), choice
    detectors: dict = field(default_factory=lambda: {
        "ZN": DetectorPhysics(100.0, 9.95, 28.8, 1.5, 0.10, 1.0),
        "ZP": DetectorPhysics(150.0, 15.6, 21.0, 2.3, 0.15, 15.6 / 9.95),
    })

    def __post_init__(self) -> None:
        if set(self.detectors) != set(DETECTORS):
            raise ConfigError(f"detectors needs the physics of exactly {sorted(DETECTORS)}, "
                              f"got {sorted(self.detectors)}")
        if len(self.species_fractions) != len(SPECIES):
            raise ConfigError(f"species_fractions needs {len(SPECIES)} numbers "
                              f"({', '.join(s[0] for s in SPECIES)})")
        if min(self.species_fractions) < 0 or abs(sum(self.species_fractions) - 1) > 1e-6:
            raise ConfigError(f"species_fractions {self.species_fractions} must be >= 0 and sum to 1")
        if self.relative_efficiency <= 0:
            raise ConfigError("relative_efficiency must be positive")

    def as_dict(self) -> dict:
        record = asdict(self)
        record["detectors"] = {k: asdict(v) for k, v in self.detectors.items()}
        return record


@dataclass
class Particles:
    """A batch of particles. conditions (N, 9) in the event-file column order and units."""

    conditions: np.ndarray
    pdg: np.ndarray
    species: np.ndarray  # index into SPECIES


def sample_particles(n: int, rng: np.random.Generator,
                     params: SimulationParameters = SimulationParameters()) -> Particles:
    """Draw ``n`` particles from the source mixture."""
    species = rng.choice(len(SPECIES), size=n, p=np.asarray(params.species_fractions))
    mass_mev = np.array([s[2] for s in SPECIES])[species]
    charge = np.array([s[3] for s in SPECIES], dtype=float)[species]
    pdg = np.array([s[1] for s in SPECIES], dtype=np.int32)[species]

    energy = np.empty(n)
    pt_sigma = np.empty(n)
    names = np.array([s[0] for s in SPECIES])[species]
    spectator = np.isin(names, ["spectator_neutron", "spectator_proton"])
    energy[spectator] = params.spectator_energy_gev * (
        1 + params.spectator_energy_rel_sigma * rng.standard_normal(spectator.sum()))
    pt_sigma[spectator] = params.spectator_pt_sigma_gev
    photon = names == "photon"
    energy[photon] = params.min_energy_gev + rng.exponential(params.photon_energy_mean_gev,
                                                             photon.sum())
    pt_sigma[photon] = params.photon_pt_sigma_gev
    secondary = np.isin(names, ["secondary_neutron", "k0_long"])
    low, high = np.log(params.secondary_energy_range_gev)
    energy[secondary] = np.exp(rng.uniform(low, high, secondary.sum()))
    pt_sigma[secondary] = params.secondary_pt_sigma_gev
    pion = np.isin(names, ["pi_plus", "pi_minus"])
    low, high = np.log(params.pion_energy_range_gev)
    energy[pion] = np.exp(rng.uniform(low, high, pion.sum()))
    pt_sigma[pion] = params.secondary_pt_sigma_gev
    energy = np.maximum(energy, np.maximum(params.min_energy_gev, 1.001 * mass_mev / 1000))

    momentum = np.sqrt(energy ** 2 - (mass_mev / 1000) ** 2)
    px = np.clip(pt_sigma * rng.standard_normal(n), -0.5 * momentum, 0.5 * momentum)
    py = np.clip(pt_sigma * rng.standard_normal(n), -0.5 * momentum, 0.5 * momentum)
    side = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    pz = side * np.sqrt(np.maximum(momentum ** 2 - px ** 2 - py ** 2, 0.0))
    vx = params.vertex_xy_sigma_cm * rng.standard_normal(n)
    vy = params.vertex_xy_sigma_cm * rng.standard_normal(n)
    vz = params.vertex_z_sigma_cm * rng.standard_normal(n)
    conditions = np.stack([energy, vx, vy, vz, px, py, pz, mass_mev, charge], axis=1)
    return Particles(conditions=conditions, pdg=pdg, species=species)


def impact_points(conditions_N9: np.ndarray, params: SimulationParameters) -> np.ndarray:
    """Transverse impact (x, y) in cm at the ZDC face on the particle's side, shape (N, 2)."""
    _, vx, vy, vz, px, py, pz, _, charge = conditions_N9.T
    side = np.sign(pz)
    side[side == 0] = 1.0
    path = params.distance_cm - side * vz
    abs_pz = np.maximum(np.abs(pz), 1e-9)
    momentum = np.sqrt(px ** 2 + py ** 2 + pz ** 2)
    x = vx + px / abs_pz * path + params.magnet_kick_cm_gev * charge / np.maximum(momentum, 1e-9)
    y = vy + py / abs_pz * path
    return np.stack([x, y], axis=1)


def _species_arrays(conditions_N9: np.ndarray, pdg_N: np.ndarray):
    em = np.isin(np.abs(pdg_N), [22, 11])
    baryon = np.isin(np.abs(pdg_N), [2112, 2212, 3122])
    energy = conditions_N9[:, 0]
    available = np.where(baryon, energy - conditions_N9[:, 7] / 1000, energy)
    return em, baryon, np.maximum(available, 0.0)


def mean_visible_energy(energy_gev: np.ndarray, em: np.ndarray, baryon: np.ndarray,
                        params: SimulationParameters) -> np.ndarray:
    """Mean Cherenkov-visible energy [GeV] of a fully contained shower."""
    e0 = np.where(baryon, params.em_fraction_e0_baryon_gev, params.em_fraction_e0_meson_gev)
    f_em = np.clip(1 - (np.maximum(energy_gev, 1e-3) / e0) ** (params.em_fraction_m - 1), 0, 1)
    f_em = np.where(em, 1.0, f_em)
    return energy_gev * (f_em + params.h_over_e * (1 - f_em))


def _mean_photons(energy: np.ndarray, em: np.ndarray, baryon: np.ndarray, inside: np.ndarray,
                  phys: DetectorPhysics, params: SimulationParameters,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Shower start depth [cm] and mean photon number of each particle: exponential start
    (hadrons), longitudinal containment, fluctuated visible energy."""
    n = len(energy)
    # Shower start depth (cm) and longitudinal containment.
    start_cm = np.where(em, 0.0, rng.exponential(phys.lambda_int_cm, n))
    showers = inside & (start_cm < phys.length_cm)
    t_max = np.maximum(0.2 * np.log(np.maximum(energy, 1.0)) + 0.7, 0.1)
    shape_k = 1.0 + t_max / params.longitudinal_beta_lambda
    remaining_lambda = np.maximum(phys.length_cm - start_cm, 0) / phys.lambda_int_cm
    containment = np.where(em, 1.0, gammainc(shape_k, remaining_lambda
                                             / params.longitudinal_beta_lambda))

    # Visible energy with fluctuations, then the mean photon number.
    e_safe = np.maximum(energy, 1e-3)
    stochastic = np.where(em, params.em_stochastic, phys.had_stochastic)
    constant = np.where(em, params.em_constant, phys.had_constant)
    rel_sigma = np.sqrt(stochastic ** 2 / e_safe + constant ** 2)
    shape = 1.0 / rel_sigma ** 2
    fluctuation = rng.gamma(shape, 1.0 / shape)
    visible = mean_visible_energy(energy, em, baryon, params) * containment * fluctuation
    mean_photons = np.where(showers, phys.photons_per_vis_gev * params.relative_efficiency
                            * visible, 0.0)
    return start_cm, mean_photons


def simulate_response(conditions_N9: np.ndarray, pdg_N: np.ndarray, detector: Detector,
                      rng: np.random.Generator,
                      params: SimulationParameters = SimulationParameters()) -> np.ndarray:
    """Photon-count images (N, H, W) uint32 for particles with the given conditions."""
    n = len(conditions_N9)
    phys = params.detectors[detector.name]
    rows, cols = detector.shape
    em, baryon, energy = _species_arrays(conditions_N9, pdg_N)
    charged = conditions_N9[:, 8] != 0

    xy = impact_points(conditions_N9, params)
    u = xy[:, 0] - detector.centre_x_cm
    v = xy[:, 1] - detector.centre_y_cm
    inside = (np.abs(u) < detector.size_x_cm / 2) & (np.abs(v) < detector.size_y_cm / 2)

    start_cm, mean_photons = _mean_photons(energy, em, baryon, inside, phys, params, rng)

    # Sub-showers: the first one sits on the impact point, the others scatter around it.
    extra = rng.poisson(np.where(em, 0.0, params.subshower_rate_per_log
                                 * np.log(np.maximum(energy / 10.0, 1.0))))
    n_sub = 1 + np.minimum(extra, params.subshower_max - 1)
    sub_event = np.repeat(np.arange(n), n_sub)
    first = np.zeros(len(sub_event), dtype=bool)
    first[np.cumsum(n_sub) - n_sub] = True
    weight = rng.gamma(1.0, 1.0, len(sub_event))
    weight /= np.bincount(sub_event, weights=weight, minlength=n)[sub_event]
    width = phys.width_scale * np.where(em, params.em_width_factor, 1.0)
    scatter = params.subshower_sigma_cm * width[sub_event]
    sub_u = u[sub_event] + np.where(first, 0.0, scatter * rng.standard_normal(len(sub_event)))
    sub_v = v[sub_event] + np.where(first, 0.0, scatter * rng.standard_normal(len(sub_event)))
    sub_photons = rng.poisson(mean_photons[sub_event] * weight)

    # Photons: radial core + halo around their sub-shower centre.
    photon_sub = np.repeat(np.arange(len(sub_event)), sub_photons)
    n_photons = len(photon_sub)
    photon_width = width[sub_event][photon_sub]
    core = rng.random(n_photons) < params.core_fraction
    radius = np.where(core, params.core_sigma_cm * np.sqrt(2 * rng.exponential(1.0, n_photons)),
                      params.halo_scale_cm * rng.gamma(2.0, 1.0, n_photons)) * photon_width
    angle = rng.uniform(0, 2 * np.pi, n_photons)
    pu = sub_u[photon_sub] + radius * np.cos(angle)
    pv = sub_v[photon_sub] + radius * np.sin(angle)
    photon_event = sub_event[photon_sub]

    # Light of a charged primary along its track before the shower starts, in its own fibre.
    track = inside & charged
    track_photons = rng.poisson(np.where(track, params.track_photons_per_cm
                                         * np.minimum(start_cm, phys.length_cm), 0.0))
    track_event = np.repeat(np.arange(n), track_photons)
    pu = np.concatenate([pu, u[track_event]])
    pv = np.concatenate([pv, v[track_event]])
    photon_event = np.concatenate([photon_event, track_event])

    row = np.floor((pu + detector.size_x_cm / 2) / detector.pitch_x_cm).astype(np.int64)
    col = np.floor((pv + detector.size_y_cm / 2) / detector.pitch_y_cm).astype(np.int64)
    on_face = (row >= 0) & (row < rows) & (col >= 0) & (col < cols)
    flat = (photon_event[on_face] * rows + row[on_face]) * cols + col[on_face]
    counts = np.bincount(flat, minlength=n * rows * cols)
    return counts.reshape(n, rows, cols).astype(np.uint32)


def simulate_events(
    n_events: int,
    detector: str | Detector,
    *,
    seed: int,
    repeat: int = 1,
    params: SimulationParameters = SimulationParameters(),
    batch_events: int = 4096,
    on_batch: Callable[[int, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
) -> None:
    """Simulate ``n_events`` responses; ``on_batch(start, images, conditions, pdg)`` gets them.

    With ``repeat`` = K each particle (condition) is simulated K times in a row, so the
    response spread per condition can be measured. Results depend only on ``seed``,
    ``repeat`` and ``params`` (the batch size is fixed so that they do not depend on it).
    """
    detector = detector if isinstance(detector, Detector) else get_detector(detector)
    if n_events < 1:
        raise ConfigError(f"n_events must be >= 1, got {n_events}")
    if repeat < 1:
        raise ConfigError(f"repeat must be >= 1, got {repeat}")
    source_seed, shower_seed = np.random.SeedSequence(seed).spawn(2)
    n_particles = -(-n_events // repeat)
    particles = sample_particles(n_particles, np.random.default_rng(source_seed), params)
    conditions_N9 = np.repeat(particles.conditions, repeat, axis=0)[:n_events]
    pdg_N = np.repeat(particles.pdg, repeat)[:n_events]
    n_batches = -(-n_events // batch_events)
    for index, batch_seed in enumerate(shower_seed.spawn(n_batches)):
        start = index * batch_events
        stop = min(start + batch_events, n_events)
        images = simulate_response(conditions_N9[start:stop], pdg_N[start:stop], detector,
                                   np.random.default_rng(batch_seed), params)
        if on_batch is not None:
            on_batch(start, images, conditions_N9[start:stop], pdg_N[start:stop])


def simulate_to_file(path, detector: str, n_events: int, *, seed: int, repeat: int = 1,
                     split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
                     params: SimulationParameters = SimulationParameters(),
                     progress: Callable[[int], None] | None = None) -> None:
    """Simulate ``n_events`` into a complete event file (what ``expertsim simulate`` does).

    ``progress(n)`` is called with the number of events finished in each batch.
    """
    from expertsim.eventfile import EventFileWriter
    from expertsim.provenance import make_provenance

    provenance = make_provenance(
        made_by="expertsim simulate", seed=seed,
        config={"detector": detector.upper(), "n_events": n_events, "repeat": repeat,
                "split_fractions": list(split_fractions), "parameters": params.as_dict()})
    with EventFileWriter(path, detector, n_events, provenance=provenance, with_pdg=True,
                         split_seed=seed, split_fractions=split_fractions) as writer:
        def write(start, images, conditions, pdg):
            writer.write(start, images, conditions, pdg)
            if progress is not None:
                progress(len(images))

        simulate_events(n_events, detector, seed=seed, repeat=repeat, params=params,
                        on_batch=write)
