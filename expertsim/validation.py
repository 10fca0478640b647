"""The validation suite: generated events against Monte Carlo, metric by metric.

``validate`` compares one or more generated event files (each made on the reference's
conditions, e.g. by ``expertsim sample --conditions MC.h5``; rows are paired through
``/source_row``) with the reference Monte Carlo and writes a report folder: ``metrics.json``
(schema below), PNG plots and ``index.html``. Every number is computed by the pure functions
of :mod:`expertsim.metrics`; the trainer's validation uses the same ones.

Fair comparison. When the reference simulates each particle at least twice (``expertsim
simulate --repeat 2``), its two responses A and B to every particle make a *matched* design:
the model is scored on the particles of A against MC B, and the Monte Carlo floor is MC A
against MC B: the same conditions and the same sample sizes, so ``ratio`` = model / floor is 1
for a generator as good as the simulation. (Scoring the model on all N events against all N
while the floor compares N/2 halves would make the floor ~sqrt(2) too high.) Without repeats
the design is *unmatched*: every generated row against its own reference row, and no floor.

Uncertainties are 95 % intervals, point +- 1.96 standard errors, the standard error from
balanced half-sampling of the particles (``expertsim.metrics.half_sample_standard_error``);
``uncertainty`` also holds two cross-checks of that error: disjoint quarters of the
particles, and the spread over independent generations (the model's own noise alone).

metrics.json (schema_version 4):
    design: "matched" or "unmatched"; n_pairs: particles scored
    headline: convention, ws_channels (5, photons, mean over generations), ws_mean,
        ws_mean_std (over generations), ws_mean_ci95, floor_ws_mean, floor_ci95, ratio,
        ratio_ci95 (floor and ratio null when unmatched)
    headline_by_convention: {name: {ws_channels, ws_mean, floor_ws_mean, ratio}} for every
        channel convention of expertsim.detector (the headline uses the default)
    uncertainty: method, n_draws, se (model, floor, ratio), disjoint_quarters_se,
        generation_std
    paired: per particle, generated vs MC B and MC A vs MC B: median centroid distance and
        median width difference (fibres), their ratio, n (non-empty pairs); with two or more
        generations also centroid_spread and width_spread: generation 1 vs generation 2 of
        the same particle against MC A vs MC B (added in schema_version 4, December 2026)
    photon_sum_spread: with two or more generations, {unit, energy_edges_gev, all, 0, 1, 2:
        {model_std, floor_std, ratio, n}}: the RMS over particles of (S1 - S2) / sqrt(2) for two
        generations of a particle and for its two MC repeats (photons), for all particles and
        per third of their energies (added December 2026); else null
    photon_sum: wasserstein (photons), ks; fraction_empty: generated, reference;
        mean_photon_sum: generated (pooled over generations), generated_se, reference
    headline_non_empty: the headline on the events with light only (generated non-empty
        events against the paired MC's non-empty ones; floor MC A's against MC B's), with
        n_generated, n_reference, mean_photon_sum; null when no event is empty
    gate: empty responses particle by particle (generation vs MC B; floor MC A vs MC B):
        all, by_energy (energy_edges_gev), by_species (PDG id): accuracy, false_empty,
        false_non_empty, generated/reference/floor empty fractions, n; max_bin_difference
        (and its floor) over energy bins of >= 500 particles; null when no event is empty
    community: the calorimeter community's metrics, {model, floor} each: fpd and kpd
        {value, error} on the high-level features of events with light, separation_power
        per observable (counts on a log(1 + x) axis, 50 bins), classifier {auc, jsd,
        n_test} (calibrated); for all, by_energy (bin index; energy_edges_gev) and
        by_species (PDG id), slices of >= 500 events with light (added in schema_version 4)
    fibres_hit, brightest_row, brightest_col, centroid_x, centroid_y, width_x, width_y:
        wasserstein (fibres), ks - shape metrics over non-empty events
    classifier_auc: generated vs reference (0.5 = indistinguishable)
    per_expert, per_group: {label: {n, ws_mean}}
    response_vs_energy: edges (GeV), generated/reference: {count, mean, resolution}
    floor: the same metrics (and classifier_auc) for MC A against MC B (null when unmatched)
    thresholds, passed: the thresholds file's limits and whether all hold
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from expertsim import __version__
from expertsim import metrics
from expertsim.detector import CHANNEL_CONVENTIONS, DEFAULT_CHANNEL_CONVENTION, channel_sums
from expertsim.errors import ConfigError, DataSchemaError
from expertsim.eventfile import EventFile, EventFileWriter
from expertsim.fileio import write_text
from expertsim.plots import validation_figures

REPORT_SCHEMA_VERSION = 4
N_DRAWS = 200  # half-samples for the standard errors
Z95 = 1.959964  # two-sided 95 % normal quantile
MIN_UNITS_FOR_ERRORS = 16  # particles below which no standard error is estimated
SHAPE_KEYS = ("fibres_hit", "brightest_row", "brightest_col", "centroid_x", "centroid_y",
              "width_x", "width_y")


READ_BLOCK = 4096  # events per block when features are computed (~60 MB of float64 ZN images)


def _read(path: Path, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Features of every event of an event file (expertsim.metrics.event_features), computed
    block by block so that the images are never held whole, with energy, conditions,
    intensity group, condition id, "row" (the file row) and, for sample files, expert and
    source row; "path" names the file (the plots read the few images they show from it)."""
    with EventFile(path) as events:
        parts = []
        for start in range(0, events.n_events, READ_BLOCK):
            images = events.image_range(start, min(start + READ_BLOCK, events.n_events))
            part = metrics.event_features(images)
            for convention in CHANNEL_CONVENTIONS:  # the default one is computed already
                part[f"channels@{convention}"] = (part["channels"]
                                                  if convention == DEFAULT_CHANNEL_CONVENTION
                                                  else channel_sums(images, convention))
            parts.append(part)
            if progress is not None:
                progress(len(images))
        out: dict[str, Any] = {key: np.concatenate([part[key] for part in parts])
                               for key in parts[0]}
        out["row"] = np.arange(events.n_events)
        out["path"] = str(path)
        out["conditions"] = events.conditions()
        out["energy"] = out["conditions"][:, 0]
        out["group"] = events.derived("group")
        out["condition_id"] = events.derived("condition_id")
        pdg = events.pdg()
        if pdg is not None:
            out["pdg"] = pdg
        for key in ("expert", "source_row"):
            values = events.extra(key)
            if values is not None:
                out[key] = values
    return out


def compare(generated: dict, reference: dict) -> dict[str, Any]:
    """Headline, photon-sum, emptiness and shape metrics of two feature sets."""
    ws = metrics.channel_wasserstein(generated["channels"], reference["channels"])
    result: dict[str, Any] = {
        "ws_channels": ws.tolist(), "ws_mean": float(ws.mean()),
        "photon_sum": metrics.distribution_distances(generated["photon_sum"],
                                                      reference["photon_sum"]),
        "fraction_empty": {"generated": float((generated["photon_sum"] <= 0).mean()),
                           "reference": float((reference["photon_sum"] <= 0).mean())},
        "mean_photon_sum": {"generated": float(generated["photon_sum"].mean()),
                            "reference": float(reference["photon_sum"].mean())},
    }
    for key in SHAPE_KEYS:
        ours = generated[key][np.isfinite(generated[key]) & (generated["photon_sum"] > 0)]
        theirs = reference[key][np.isfinite(reference[key]) & (reference["photon_sum"] > 0)]
        result[key] = (metrics.distribution_distances(ours, theirs)
                       if len(ours) and len(theirs) else {"wasserstein": None, "ks": None})
    return result


def _classifier_features(features: dict) -> np.ndarray:
    columns = [np.log1p(features["channels"]), np.log1p(features["photon_sum"])[:, None],
               features["fibres_hit"][:, None]]
    columns += [np.nan_to_num(features[k], nan=-1.0)[:, None]
                for k in ("centroid_x", "centroid_y", "width_x", "width_y")]
    return np.concatenate(columns, axis=1)


def _subset(features: dict, mask: np.ndarray) -> dict:
    """The events ``mask`` selects (a boolean mask or rows) of every per-event array."""
    return {k: v[mask] if isinstance(v, np.ndarray) else v for k, v in features.items()}


def _model_pairs(generated: dict, reference: dict, matched: tuple | None, path: Path
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(generated rows, reference rows) scored against each other: matched, the generation
    for each particle of MC A against MC B; unmatched, every row against its own source."""
    source_row = generated["source_row"]
    if matched is None:
        return np.arange(len(source_row)), source_row
    rows_a, rows_b = matched
    first_of = np.full(len(reference["condition_id"]), -1)
    first_of[source_row[::-1]] = np.arange(len(source_row))[::-1]
    generated_rows = first_of[rows_a]
    if (generated_rows < 0).any():
        raise DataSchemaError(f"{path}: no generated event for {(generated_rows < 0).sum()} of "
                              "the reference's repeated particles; generate on all its rows")
    return generated_rows, rows_b


def matched_channels(generated_paths: list[str | os.PathLike], reference_path: str | os.PathLike
                     ) -> tuple[list[np.ndarray], np.ndarray]:
    """(per generated file, its channel sums (n, 5); the reference channel sums (n, 5) they
    are scored against), paired as the headline pairs them (matched: the generation for each
    particle of MC repeat A against repeat B; unmatched: each row against its source row), in
    the default channel convention: several models' files on one reference, row i the same
    particle in all (metrics.paired_difference_standard_error)."""
    reference_path = Path(reference_path)

    def channels(path: Path) -> np.ndarray:
        with EventFile(path) as events:
            return np.concatenate([
                channel_sums(events.image_range(start, min(start + READ_BLOCK, events.n_events)))
                for start in range(0, events.n_events, READ_BLOCK)])

    with EventFile(reference_path) as events:
        condition_id = events.derived("condition_id")
    pairs = metrics.repeat_pairs(condition_id)
    matched = pairs if len(pairs[0]) >= metrics.MIN_TRUSTED_EVENTS else None
    generated_NC, reference_rows = [], None
    for path in map(Path, generated_paths):
        with EventFile(path) as events:
            source_row = events.extra("source_row")
        if source_row is None or len(source_row) == 0 or source_row.max() >= len(condition_id):
            raise DataSchemaError(f"{path}: not generated on {reference_path}'s conditions "
                                  f"(expertsim sample --conditions {reference_path})")
        rows, reference_rows = _model_pairs({"source_row": source_row},
                                            {"condition_id": condition_id}, matched, path)
        generated_NC.append(channels(path)[rows])
    if reference_rows is None:
        raise ConfigError("matched_channels needs at least one generated file")
    return generated_NC, channels(reference_path)[reference_rows]


def _ws_mean(generated: dict, reference: dict, key: str = "channels") -> float:
    return float(metrics.channel_wasserstein(generated[key], reference[key]).mean())


def _uncertainty(first: dict, paired: dict, floor_pair: tuple[dict, dict] | None,
                 ws_means: np.ndarray, seed: int, n_draws: int) -> dict[str, Any]:
    """Standard errors of the headline, the floor and their ratio by half-sampling the
    particles (the same halves for model and floor), with the cross-checks."""
    def statistic(index: np.ndarray) -> list[float]:
        model = _ws_mean(_subset(first, index), _subset(paired, index))
        if floor_pair is None:
            return [model, np.nan, np.nan]
        floor = _ws_mean(_subset(floor_pair[0], index), _subset(floor_pair[1], index))
        return [model, floor, model / floor]

    n_units = len(first["photon_sum"])
    if n_units >= MIN_UNITS_FOR_ERRORS:
        se = metrics.half_sample_standard_error(statistic, n_units, n_draws=n_draws, seed=seed)
        quarters = np.array_split(np.random.default_rng(seed).permutation(n_units), 4)
        quarter_values = np.array([statistic(np.sort(q)) for q in quarters])
    else:  # too few particles for an error estimate: the numbers carry none
        se, quarter_values = np.full(3, np.nan), np.full((4, 3), np.nan)
    return {
        "method": "balanced half-sampling of the particles; interval = point +- 1.96 se",
        "n_draws": n_draws,
        "se": dict(zip(("model", "floor", "ratio"), _numbers(se))),
        # each quarter has n/4 particles: se of the full-sample value = std over quarters / 2
        "disjoint_quarters_se": dict(zip(("model", "floor", "ratio"),
                                         _numbers(quarter_values.std(axis=0, ddof=1) / 2))),
        "generation_std": float(ws_means.std(ddof=1)) if len(ws_means) > 1 else None,
    }


def _numbers(values) -> list[float | None]:
    return [None if not np.isfinite(v) else float(v) for v in values]


def _interval(value: float | None, se: float | None) -> list[float] | None:
    if value is None or se is None:
        return None
    return [value - Z95 * se, value + Z95 * se]


def _headline(comparisons: list[dict], floor: dict | None, uncertainty: dict
              ) -> dict[str, Any]:
    ws_means = np.array([c["ws_mean"] for c in comparisons])
    ws_mean = float(ws_means.mean())
    floor_ws = None if floor is None else floor["ws_mean"]
    ratio = None if floor_ws is None else ws_mean / floor_ws
    se = uncertainty["se"]
    return {
        "convention": DEFAULT_CHANNEL_CONVENTION,
        "ws_channels": np.mean([c["ws_channels"] for c in comparisons], axis=0).tolist(),
        "ws_mean": ws_mean,
        "ws_mean_std": float(ws_means.std(ddof=1)) if len(ws_means) > 1 else 0.0,
        "ws_mean_ci95": _interval(ws_mean, se["model"]),
        "floor_ws_mean": floor_ws,
        "floor_ci95": _interval(floor_ws, se["floor"]),
        "ratio": ratio,
        "ratio_ci95": _interval(ratio, se["ratio"]),
    }


def _by_convention(scored: list[tuple], floor_pair: tuple[dict, dict] | None
                   ) -> dict[str, Any]:
    """The headline under every channel convention (mean over the generations)."""
    out = {}
    for convention in CHANNEL_CONVENTIONS:
        key = f"channels@{convention}"
        ws = np.mean([metrics.channel_wasserstein(generated[key], paired[key])
                      for _, generated, paired in scored], axis=0)
        floor = None if floor_pair is None else _ws_mean(*floor_pair, key=key)
        out[convention] = {"ws_channels": ws.tolist(), "ws_mean": float(ws.mean()),
                           "floor_ws_mean": floor,
                           "ratio": None if floor is None else float(ws.mean()) / floor}
    return out


def _paired(first: dict, paired: dict, floor_pair: tuple[dict, dict] | None,
            second: dict | None = None) -> dict[str, Any]:
    """Conditional shape agreement: per particle, generated vs MC B (and MC A vs MC B); with
    a second generation, also generation 1 vs generation 2 of the same particle against the
    same floor (``centroid_spread``, ``width_spread``): how much the model's showers move
    between two draws for one particle, beside how much the simulation's move between its
    two repeats (above 1: the model scatters its showers more than the MC; below 1: less)."""
    model = metrics.paired_shape_distances(first, paired)
    floor = None if floor_pair is None else metrics.paired_shape_distances(*floor_pair)
    if second is not None:
        spread = metrics.paired_shape_distances(first, second)
        model["centroid_spread"] = spread["centroid_distance"]
        model["width_spread"] = spread["width_difference"]
        if floor is not None:
            floor["centroid_spread"] = floor["centroid_distance"]
            floor["width_spread"] = floor["width_difference"]
    out: dict[str, Any] = {}
    for key, values in model.items():
        median = float(np.nanmedian(values)) if np.isfinite(values).any() else None
        floor_median = (float(np.nanmedian(floor[key]))
                        if floor is not None and np.isfinite(floor[key]).any() else None)
        out[key] = {"unit": "fibres", "model_median": median, "floor_median": floor_median,
                    "ratio": (median / floor_median if median is not None and floor_median
                              else None),
                    "n": int(np.isfinite(values).sum())}
    return out


def _photon_sum_spread(first: dict, second: dict | None, paired: dict,
                       floor_pair: tuple[dict, dict] | None) -> dict[str, Any] | None:
    """How much a particle's photon sum varies from one response to the next: the RMS over
    particles of (S1 - S2) / sqrt(2), S1 and S2 two generations of the particle (the model)
    or its two MC repeats (the floor), i.e. the shower-to-shower standard deviation at fixed
    conditions; for all particles and per third of the particles' energies (groups made from
    the conditions alone, so that neither pair is selected on its own fluctuations), with the
    ratio (above 1: the model's photon sums scatter more than the simulation's for one
    particle). None with one generation."""
    if second is None:
        return None
    energy = paired["energy"]
    edges = np.quantile(energy, [1 / 3, 2 / 3])
    third = np.digitize(energy, edges)
    groups = {"all": np.ones(len(energy), dtype=bool),
              **{str(k): third == k for k in range(3)}}

    def rms(a: np.ndarray, b: np.ndarray) -> float | None:
        return float(np.sqrt(np.mean((a - b) ** 2) / 2)) if len(a) else None

    out: dict[str, Any] = {"unit": "photons", "energy_edges_gev": edges.tolist()}
    for label, mask in groups.items():
        model = rms(first["photon_sum"][mask], second["photon_sum"][mask])
        floor = (None if floor_pair is None
                 else rms(floor_pair[0]["photon_sum"][mask], floor_pair[1]["photon_sum"][mask]))
        out[label] = {"model_std": model, "floor_std": floor, "n": int(mask.sum()),
                      "ratio": model / floor if model is not None and floor else None}
    return out


def select_reference(path: str | os.PathLike, output: str | os.PathLike, *, split: str = "all",
                     min_photon_sum: float | None = None, max_events: int | None = None
                     ) -> Path:
    """Write the reference events of ``split`` with photon sum >= ``min_photon_sum`` (the
    first ``max_events`` of them when given) as a new event file (validate against what the
    model was trained to produce, on held-out events)."""
    from expertsim.provenance import make_provenance

    with EventFile(path) as events:
        info = events.info
        rows = events.rows(split, min_photon_sum)[:max_events]
        if len(rows) == 0:
            raise ConfigError(f"{path}: no events in split {split!r} with photon sum >= "
                              f"{min_photon_sum}")
        provenance = make_provenance(made_by="expertsim validate (reference)",
                                     config={"split": split, "min_photon_sum": min_photon_sum,
                                             "max_events": max_events},
                                     inputs=[path], hash_inputs=False)
        with EventFileWriter(output, info.detector, len(rows), provenance=provenance,
                             with_pdg=info.has_pdg, image_dtype=info.image_dtype) as writer:
            for start in range(0, len(rows), READ_BLOCK):
                block = rows[start:start + READ_BLOCK]
                writer.write(start, events.images(block), events.conditions(block),
                             events.pdg(block))
    return Path(output)


def validate(generated_paths: list[str | os.PathLike], reference_path: str | os.PathLike,
             output_dir: str | os.PathLike, *, thresholds: dict[str, float] | None = None,
             seed: int = 0, energy_bins: int = 8, plots: bool = True,
             n_draws: int = N_DRAWS, progress: Callable[[int], None] | None = None,
             sections: dict[str, Any] | None = None, figures: list[str] = ()
             ) -> dict[str, Any]:
    """Compare generated files with the reference; write the report; return metrics.json.
    The files are read block by block (``progress(n_events)`` after each block); only
    per-event features are held. ``sections`` are added to metrics.json as they are (e.g.
    "pbpb"), ``figures`` (already in output_dir) to the page."""
    if not generated_paths:
        raise ConfigError("validate needs at least one generated file")
    reference_path, output_dir = Path(reference_path), Path(output_dir)
    reference = _read(reference_path, progress)
    pairs = metrics.repeat_pairs(reference["condition_id"])
    matched = pairs if len(pairs[0]) >= metrics.MIN_TRUSTED_EVENTS else None
    scored = _scored(generated_paths, reference, reference_path, matched, progress)
    comparisons = [compare(generated, paired) for _, generated, paired in scored]
    _, first, paired = scored[0]
    floor_pair = None if matched is None else (_subset(reference, matched[0]),
                                               _subset(reference, matched[1]))
    floor = None if floor_pair is None else {
        **compare(*floor_pair), "classifier_auc": metrics.classifier_auc(
            _classifier_features(floor_pair[0]), _classifier_features(floor_pair[1]), seed=seed)}
    uncertainty = _uncertainty(first, paired, floor_pair,
                               np.array([c["ws_mean"] for c in comparisons]), seed, n_draws)
    report: dict[str, Any] = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "expertsim_version": __version__,
        "reference": str(reference_path.resolve()),
        "generated": [str(path.resolve()) for path, _, _ in scored],
        "design": "unmatched" if matched is None else "matched",
        "n_reference": int(len(reference["photon_sum"])),
        "n_pairs": int(len(first["photon_sum"])),
        "headline": _headline(comparisons, floor, uncertainty),
        "headline_by_convention": _by_convention(scored, floor_pair),
        "uncertainty": uncertainty,
        "paired": _paired(first, paired, floor_pair,
                          scored[1][1] if len(scored) > 1 else None),
        "photon_sum_spread": _photon_sum_spread(first, scored[1][1] if len(scored) > 1
                                                else None, paired, floor_pair),
        **{k: comparisons[0][k] for k in ("photon_sum", "fraction_empty", *SHAPE_KEYS)},
        "mean_photon_sum": _mean_photon_sum([g for _, g, _ in scored], paired),
        "classifier_auc": metrics.classifier_auc(_classifier_features(first),
                                                 _classifier_features(paired), seed=seed),
        "per_expert": (_headline_by_label(first, paired, first["expert"])
                       if "expert" in first else {}),
        "per_group": _headline_by_label(first, paired, paired["group"]),
        "response_vs_energy": _response_vs_energy(first, paired, energy_bins),
        "headline_non_empty": _non_empty_headline(scored, floor_pair),
        "gate": _gate_section(scored, floor_pair, energy_bins),
        "community": _community(first, paired, floor_pair, energy_bins, seed),
        "floor": floor,
        **(sections or {}),
        "thresholds": thresholds or {},
    }
    report["failed_thresholds"] = check_thresholds(report, thresholds or {})
    report["passed"] = not report["failed_thresholds"]

    output_dir.mkdir(parents=True, exist_ok=True)
    figures = [*(validation_figures(first, paired, paired, report, output_dir) if plots
                 else []), *figures]
    write_text(output_dir / "metrics.json", json.dumps(report, indent=2, allow_nan=True))
    write_text(output_dir / "index.html", render_html(report, figures))
    return report


def _scored(generated_paths: list, reference: dict, reference_path: Path,
            matched: tuple | None, progress) -> list[tuple[Path, dict, dict]]:
    """(path, generated events, the reference events they are scored against) per file."""
    scored = []
    for path in map(Path, generated_paths):
        generated = _read_generated(path, reference, reference_path, progress)
        generated_rows, reference_rows = _model_pairs(generated, reference, matched, path)
        scored.append((path, _subset(generated, generated_rows),
                       _subset(reference, reference_rows)))
    return scored


def _non_empty(features: dict) -> dict:
    return _subset(features, features["photon_sum"] > 0)


def _non_empty_headline(scored: list[tuple], floor_pair: tuple[dict, dict] | None
                        ) -> dict[str, Any] | None:
    """The headline on the events with light only: generated non-empty events against the
    paired MC's non-empty ones (the floor: MC A's against MC B's); None when no event of
    either side is empty (it would repeat the headline)."""
    if all((g["photon_sum"] > 0).all() and (p["photon_sum"] > 0).all()
           for _, g, p in scored):
        return None
    ws = np.mean([metrics.channel_wasserstein(_non_empty(g)["channels"],
                                              _non_empty(p)["channels"])
                  for _, g, p in scored], axis=0)
    floor = None if floor_pair is None else _ws_mean(*map(_non_empty, floor_pair))
    _, first, paired = scored[0]
    return {"ws_channels": ws.tolist(), "ws_mean": float(ws.mean()), "floor_ws_mean": floor,
            "ratio": None if floor is None else float(ws.mean()) / floor,
            "n_generated": int((first["photon_sum"] > 0).sum()),
            "n_reference": int((paired["photon_sum"] > 0).sum()),
            "mean_photon_sum": _mean_photon_sum([_non_empty(g) for _, g, _ in scored],
                                                _non_empty(paired))}


def _mean_photon_sum(generations: list[dict], reference: dict) -> dict[str, float]:
    """Mean photon sum of the generated events (all generations pooled) with its standard
    error, and the reference's."""
    pooled = np.concatenate([g["photon_sum"] for g in generations])
    return {"generated": float(pooled.mean()),
            "generated_se": float(pooled.std(ddof=1) / math.sqrt(len(pooled)))
            if len(pooled) > 1 else None,
            "reference": float(reference["photon_sum"].mean())}


def _gate_section(scored: list[tuple], floor_pair: tuple[dict, dict] | None,
                  energy_bins: int) -> dict[str, Any] | None:
    """Empty responses, particle by particle (the generation for a particle against its MC B
    response; the floor: MC A against MC B), overall, per energy bin and per species; None
    when neither side has an empty event."""
    empties = [(g["photon_sum"] <= 0, p["photon_sum"] <= 0) for _, g, p in scored]
    if not any(g.any() or p.any() for g, p in empties):
        return None
    _, first, paired = scored[0]
    floor_empty = None if floor_pair is None else [f["photon_sum"] <= 0 for f in floor_pair]
    energy = paired["energy"]
    edges = np.geomspace(max(energy.min(), 1e-3), energy.max() * 1.0001, energy_bins + 1)
    labels = {"energy": np.digitize(energy, edges) - 1}
    if "pdg" in paired:
        labels["species"] = paired["pdg"]

    def agreement(mask: np.ndarray) -> dict[str, Any]:
        model = [metrics.emptiness_agreement(g[mask], p[mask]) for g, p in empties]
        out = {k: float(np.mean([m[k] for m in model])) for k in model[0] if k != "n"}
        out["n"] = int(mask.sum())
        out["floor_generated_empty_fraction"] = (
            None if floor_empty is None else float(floor_empty[0][mask].mean()))
        out["floor_accuracy"] = (None if floor_empty is None else metrics.emptiness_agreement(
            floor_empty[0][mask], floor_empty[1][mask])["accuracy"])
        return out

    section: dict[str, Any] = {"all": agreement(np.ones(len(energy), dtype=bool)),
                               "energy_edges_gev": edges.tolist(), "by_energy": [],
                               "by_species": {}}
    for k in range(energy_bins):
        mask = labels["energy"] == k
        if mask.any():
            section["by_energy"].append({"bin": k, **agreement(mask)})
    for species in np.unique(labels.get("species", [])):
        section["by_species"][str(int(species))] = agreement(labels["species"] == species)
    trusted = [b for b in section["by_energy"] if b["n"] >= metrics.MIN_TRUSTED_EVENTS * 5]
    section["max_bin_difference"] = max(
        (abs(b["generated_empty_fraction"] - b["reference_empty_fraction"]) for b in trusted),
        default=None)
    section["max_bin_difference_floor"] = None if floor_empty is None else max(
        (abs(b["floor_generated_empty_fraction"] - b["reference_empty_fraction"])
         for b in trusted), default=None)
    return _nan_to_none(section)


SHAPE_OBSERVABLES = ("photon_sum", "fibres_hit", "centroid_x", "centroid_y", "width_x",
                     "width_y")
MIN_SLICE_EVENTS = 500  # slices (energy bins, species) with fewer events with light: skipped


def _high_level(features: dict) -> np.ndarray:
    """The high-level features of FPD and KPD (N, 11): log(1 + channel sums), log(1 + photon
    sum), fibres hit, centroid and width; NaN rows (empty events) are dropped by the metrics."""
    columns = [np.log1p(features["channels"]), np.log1p(features["photon_sum"])[:, None]]
    columns += [features[k][:, None] for k in SHAPE_OBSERVABLES[1:]]
    return np.concatenate(columns, axis=1)


def _community_pair(generated: dict, reference: dict, seed: int, quick: bool
                    ) -> dict[str, Any]:
    """FPD, KPD (events with light), separation power per observable and the calibrated
    classifier (all events) of one pair of samples; ``quick``: fewer draws (slices)."""
    x, y = _high_level(generated), _high_level(reference)
    observables = {f"channel_{k + 1}": k for k in range(generated["channels"].shape[1])}
    # counts (channel sums, photon sum, fibres hit) on a log(1 + x) axis: their heavy tails
    # would put most events into the first of 50 linear bins
    separation = {name: metrics.separation_power(np.log1p(generated["channels"][:, k]),
                                                 np.log1p(reference["channels"][:, k]))
                  for name, k in observables.items()}
    separation.update({name: metrics.separation_power(
        *(np.log1p(f[name]) if name in ("photon_sum", "fibres_hit") else f[name]
          for f in (generated, reference)))
        for name in SHAPE_OBSERVABLES})
    return {
        "n_generated": int(len(x)), "n_reference": int(len(y)),
        "fpd": metrics.frechet_physics_distance(x, y, seed=seed, draws=4 if quick else 8),
        "kpd": metrics.kernel_physics_distance(x, y, seed=seed, batches=5 if quick else 10,
                                               batch=2000 if quick else 4000),
        "separation_power": separation,
        "classifier": metrics.classifier_test(_classifier_features(generated),
                                              _classifier_features(reference), seed=seed,
                                              epochs=100 if quick else 200)}


def _community(first: dict, paired: dict, floor_pair: tuple[dict, dict] | None,
               energy_bins: int, seed: int) -> dict[str, Any]:
    """The calorimeter community's metrics (expertsim.metrics: FPD, KPD, separation power,
    calibrated classifier AUC and JSD) for the model (each generation's particle against its
    MC B response) and, when the reference repeats particles, the floor (MC A against MC B)
    on the same particles; overall, per energy bin and per species (slices with at least
    MIN_SLICE_EVENTS events with light in both samples)."""
    def both(mask: np.ndarray | None, quick: bool) -> dict[str, Any]:
        pick = (lambda f: f) if mask is None else (lambda f: _subset(f, mask))
        out = {"model": _community_pair(pick(first), pick(paired), seed, quick)}
        if floor_pair is not None:
            out["floor"] = _community_pair(pick(floor_pair[0]), pick(floor_pair[1]), seed,
                                           quick)
        return out

    energy = paired["energy"]
    edges = np.geomspace(max(energy.min(), 1e-3), energy.max() * 1.0001, energy_bins + 1)
    slices = {f"energy {k}": np.digitize(energy, edges) - 1 == k for k in range(energy_bins)}
    if "pdg" in paired:
        slices.update({f"species {int(s)}": paired["pdg"] == s for s in np.unique(paired["pdg"])})
    light = (first["photon_sum"] > 0) & (paired["photon_sum"] > 0)
    section = {"all": both(None, quick=False), "energy_edges_gev": edges.tolist(),
               "by_energy": {}, "by_species": {}}
    for name, mask in slices.items():
        if (mask & light).sum() >= MIN_SLICE_EVENTS:
            kind, label = name.split(" ")
            section["by_energy" if kind == "energy" else "by_species"][label] = both(mask, True)
    return _nan_to_none(section)


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _read_generated(path: Path, reference: dict, reference_path: Path,
                    progress: Callable[[int], None] | None = None) -> dict:
    """A generated file's features, checked to be made on the reference's conditions."""
    generated = _read(path, progress)
    if "source_row" not in generated:
        raise DataSchemaError(f"{path}: no '/source_row': make it with expertsim sample "
                              f"--conditions {reference_path}")
    check_same_detector(path, reference_path)
    source_row = generated["source_row"]
    if source_row.min() < 0 or source_row.max() >= len(reference["photon_sum"]):
        raise DataSchemaError(f"{path}: its source rows exceed {reference_path}'s "
                              f"{len(reference['photon_sum'])} events: other conditions")
    differs = ~np.isclose(generated["conditions"], reference["conditions"][source_row],
                          rtol=1e-6, atol=1e-9).all(axis=1)
    if differs.any():
        row = int(np.flatnonzero(differs)[0])
        raise DataSchemaError(
            f"{path}: row {row} was generated on other conditions than {reference_path}'s row "
            f"{int(source_row[row])} ({int(differs.sum())} rows differ): generate on this "
            f"reference (expertsim sample --conditions {reference_path})")
    return generated


def check_same_detector(path: str | os.PathLike, reference_path: str | os.PathLike,
                        detector: str | None = None) -> None:
    """Refuse (DataSchemaError) to score ``path`` (an event file, or a model or export whose
    ``detector`` is given) against a reference of the other calorimeter."""
    if detector is None:
        with EventFile(path) as events:
            detector = events.detector.name
    with EventFile(reference_path) as events:
        theirs = events.detector.name
    if detector.upper() != theirs:
        raise DataSchemaError(f"{path} draws {detector.upper()}, but the reference "
                              f"{reference_path} holds {theirs} events: validate against a "
                              f"{detector.upper()} reference")


def _headline_by_label(generated: dict, paired: dict, label_N: np.ndarray) -> dict:
    """{label: {n, ws_mean}}: the headline on the events of each label (expert, group)."""
    out = {}
    for label in np.unique(label_N):
        if label < 0:  # a particle the gate stopped: no expert
            continue
        mask = label_N == label
        out[str(int(label))] = {
            "n": int(mask.sum()),
            "ws_mean": compare(_subset(generated, mask), _subset(paired, mask))["ws_mean"]}
    return out


def _response_vs_energy(generated: dict, reference: dict, energy_bins: int) -> dict:
    """Mean photon sum and resolution in log-spaced energy bins, generated and reference."""
    energy = reference["energy"]
    edges = np.geomspace(max(energy.min(), 1e-3), energy.max() * 1.0001, energy_bins + 1)
    return {
        "edges_gev": edges.tolist(),
        "generated": _jsonable(metrics.response_vs_energy(generated["energy"],
                                                          generated["photon_sum"], edges)),
        "reference": _jsonable(metrics.response_vs_energy(energy, reference["photon_sum"],
                                                          edges))}


def _reference(reference_path: str | os.PathLike, output_dir: Path, split: str,
               min_photon_sum: float | None,
               selected_reference: str | os.PathLike | None) -> Path:
    """The reference events to generate on: ``selected_reference`` when given, else the
    ``split`` / ``min_photon_sum`` selection of ``reference_path`` (written to
    output_dir/reference.h5), else the whole file."""
    output_dir.mkdir(parents=True, exist_ok=True)
    if selected_reference is not None:
        return Path(selected_reference)
    if split != "all" or min_photon_sum is not None:
        return select_reference(reference_path, output_dir / "reference.h5", split=split,
                                min_photon_sum=min_photon_sum)
    return Path(reference_path)


def validate_model(model_path: str | os.PathLike, reference_path: str | os.PathLike,
                   output_dir: str | os.PathLike, *, generations: int = 3, seed: int = 0,
                   split: str = "all", min_photon_sum: float | None = None,
                   thresholds: dict[str, float] | None = None, plots: bool = True,
                   selected_reference: str | os.PathLike | None = None,
                   collisions: int = 0) -> dict[str, Any]:
    """Generate ``generations`` times (seeds seed, seed + 1, ...) on the reference's
    conditions with the model, then ``validate``. The model's empty-response gate runs when
    the reference has empty events; on a reference of events with light only, the
    generators are scored alone. ``split`` / ``min_photon_sum`` select the
    reference events first (written to output_dir/reference.h5), unless
    ``selected_reference`` already holds that selection. With ``collisions`` > 0 the report
    gets a "pbpb" section: that many Pb-Pb collisions, generated against the built-in Monte
    Carlo (expertsim.collisions)."""
    from expertsim.sampling import sample_to_file
    from expertsim.trained_model import TrainedModel

    check_same_detector(model_path, reference_path, TrainedModel.load(model_path).detector.name)
    output_dir = Path(output_dir)
    reference = _reference(reference_path, output_dir, split, min_photon_sum,
                           selected_reference)
    with EventFile(reference) as events:
        # a reference of events with light only (a photon-sum filter) is scored against the
        # generators alone; one with empty events against the whole system, gate first
        gate = None if (events.derived("photon_sum") <= 0).any() else False
    files = []
    for k in range(generations):
        path = output_dir / f"generated_{k}.h5"
        sample_to_file(model_path, reference, path, seed=seed + k, gate=gate)
        files.append(path)
    sections, figures = {}, []
    if collisions:
        sections["pbpb"], figures = _collision_section(model_path, collisions, seed, output_dir,
                                                       plots)
    return validate(files, reference, output_dir, thresholds=thresholds, seed=seed, plots=plots,
                    sections=sections, figures=figures)


def _collision_section(model_path: str | os.PathLike, n_collisions: int, seed: int,
                       output_dir: Path, plots: bool) -> tuple[dict[str, Any], list[str]]:
    """The Pb-Pb comparison (its report section) and its figures, with a progress bar over
    the free nucleons simulated twice and generated once."""
    from tqdm import tqdm

    from expertsim.collisions import compare_collisions
    from expertsim.plots import collision_figures

    with tqdm(unit="particle", desc=f"Pb-Pb ({n_collisions} collisions)") as bar:
        section, arrays = compare_collisions(model_path, n_collisions, seed=seed,
                                             progress=bar.update)
    return section, (collision_figures(section, arrays, output_dir) if plots else [])


def validate_lookup(train_path: str | os.PathLike, reference_path: str | os.PathLike,
                    output_dir: str | os.PathLike, *, split: str = "all",
                    min_photon_sum: float | None = None, seed: int = 0,
                    thresholds: dict[str, float] | None = None, plots: bool = True,
                    selected_reference: str | os.PathLike | None = None) -> dict[str, Any]:
    """Score the nearest-neighbour lookup table of ``train_path``'s train split (events with
    photon sum >= ``min_photon_sum``, the filter a model trains with) like a model: one
    "generation" (the table is deterministic) on the selected reference events."""
    from expertsim.lookup import lookup_to_file

    check_same_detector(train_path, reference_path)
    output_dir = Path(output_dir)
    reference = _reference(reference_path, output_dir, split, min_photon_sum,
                           selected_reference)
    path = lookup_to_file(train_path, reference, output_dir / "lookup_0.h5",
                          min_photon_sum=min_photon_sum)
    return validate([path], reference, output_dir, thresholds=thresholds, seed=seed,
                    plots=plots)


def validate_export(export_dir: str | os.PathLike, reference_path: str | os.PathLike,
                    output_dir: str | os.PathLike, *, generations: int = 3, seed: int = 0,
                    split: str = "all", min_photon_sum: float | None = None,
                    thresholds: dict[str, float] | None = None, plots: bool = True,
                    threads: int = 1, progress=None) -> dict[str, Any]:
    """Score an ONNX export the way ALICE O2 would run it: ``generations`` passes of the O2
    replica (expertsim.o2: classifier, then generator, at batch 1 on ``threads`` threads,
    truncation, O2's pixel order) over the reference's particles, then ``validate``."""
    from expertsim.o2 import O2Replica, replica_to_file

    check_same_detector(export_dir, reference_path, O2Replica(export_dir).detector)
    output_dir = Path(output_dir)
    reference = _reference(reference_path, output_dir, split, min_photon_sum, None)
    files = [replica_to_file(export_dir, reference, output_dir / f"o2_{k}.h5", seed=seed + k,
                             threads=threads, progress=progress)
             for k in range(generations)]
    return validate(files, reference, output_dir, thresholds=thresholds, seed=seed, plots=plots)


EXPORT_WS_TOLERANCE = 0.10  # export / package channel-WS within 10 %
EXPORT_MEAN_TOLERANCE = 0.01  # mean photon sums within 1 %
EXPORT_EMPTY_TOLERANCE = 0.01  # empty fractions within 1 percentage point


def compare_with_package(export_report: dict, package_report: dict) -> dict[str, Any]:
    """The export's report (through the O2 replica) against the package sampler's on the same
    reference: the fraction of empty events (absolute difference), channel-WS on all and on
    non-empty events, and mean photon sums (relative differences), with their tolerances; the
    means' difference also in standard errors of the two means."""
    def pair(key: str, report: dict) -> float | None:
        value: Any = report
        for part in key.split("."):
            value = None if value is None else value.get(part)
        return value

    checks = {}
    ours, theirs = (pair("fraction_empty.generated", r) for r in (export_report, package_report))
    if ours is not None and theirs is not None:
        checks["empty_fraction"] = {"export": ours, "package": theirs, "relative": ours - theirs,
                                    "tolerance": EXPORT_EMPTY_TOLERANCE, "absolute": True,
                                    "passed": abs(ours - theirs) <= EXPORT_EMPTY_TOLERANCE}
    for name, key, tolerance in (
            ("ws_all", "headline.ws_mean", EXPORT_WS_TOLERANCE),
            ("ws_non_empty", "headline_non_empty.ws_mean", EXPORT_WS_TOLERANCE),
            ("mean_photon_sum_all", "mean_photon_sum.generated", EXPORT_MEAN_TOLERANCE),
            ("mean_photon_sum_non_empty", "headline_non_empty.mean_photon_sum.generated",
             EXPORT_MEAN_TOLERANCE)):
        ours, theirs = pair(key, export_report), pair(key, package_report)
        if ours is None or theirs is None:
            continue
        relative = ours / theirs - 1 if theirs else math.inf
        checks[name] = {"export": ours, "package": theirs, "relative": relative,
                        "tolerance": tolerance, "passed": abs(relative) <= tolerance}
        se_key = key.replace(".generated", ".generated_se")
        if se_key != key and pair(se_key, export_report) and pair(se_key, package_report):
            checks[name]["standard_errors"] = (ours - theirs) / math.hypot(
                pair(se_key, export_report), pair(se_key, package_report))
    return {"checks": checks, "passed": all(c["passed"] for c in checks.values())}


def _jsonable(values: dict[str, np.ndarray]) -> dict[str, list]:
    return {k: [None if isinstance(x, float) and math.isnan(x) else x
                for x in np.asarray(v, dtype=float).tolist()] for k, v in values.items()}


def lookup(report: dict, dotted: str) -> float:
    """A number of the report by dotted path, e.g. "headline.ws_mean", "photon_sum.ks"."""
    value: Any = report
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ConfigError(f"threshold key {dotted!r}: no such number in metrics.json")
        value = value[part]
    if not isinstance(value, (int, float)):
        raise ConfigError(f"threshold key {dotted!r} is not a number in metrics.json")
    return float(value)


def check_thresholds(report: dict, thresholds: dict[str, float]) -> list[str]:
    """Keys whose value exceeds its maximum (all thresholds are upper limits)."""
    return [f"{key} = {lookup(report, key):.4g} > {limit}"
            for key, limit in thresholds.items() if lookup(report, key) > float(limit)]


def summary_lines(report: dict) -> list[str]:
    """The report's headline numbers as a few lines of text (what the CLI prints)."""
    headline, floor = report["headline"], report["floor"]
    lines = [f"channel-WS {_fmt(headline['ws_mean'], headline['ws_mean_ci95'])} photons "
             f"(95 % interval; {headline['convention']} channels; std over "
             f"{len(report['generated'])} generation(s) {headline['ws_mean_std']:.3f})"]
    if floor is None:
        lines.append("no repeated MC in the reference: no floor (simulate with --repeat 2)")
    else:
        centroid = report["paired"]["centroid_distance"]
        lines += [f"MC floor {_fmt(headline['floor_ws_mean'], headline['floor_ci95'])} on the "
                  f"same {report['n_pairs']} particles; model / floor "
                  f"{_fmt(headline['ratio'], headline['ratio_ci95'], 2)}",
                  "median centroid distance per particle "
                  f"{_fmt(centroid['model_median'], digits=2)} fibres (MC repeats "
                  f"{_fmt(centroid['floor_median'], digits=2)}; ratio "
                  f"{_fmt(centroid['ratio'], digits=2)})"]
        spread = report["paired"].get("centroid_spread")
        if spread is not None:
            lines.append("median centroid distance between two generations of a particle "
                         f"{_fmt(spread['model_median'], digits=2)} fibres (MC repeats "
                         f"{_fmt(spread['floor_median'], digits=2)}; ratio "
                         f"{_fmt(spread['ratio'], digits=2)})")
        sums = report.get("photon_sum_spread")
        if sums is not None:
            lines.append("photon-sum scatter of one particle (RMS over particles, photons): "
                         + "; ".join(f"{label} {_fmt(v['model_std'], digits=1)} (MC "
                                     f"repeats {_fmt(v['floor_std'], digits=1)})"
                                     for label, v in _spread_groups(sums)))
    lines.append(f"classifier AUC {report['classifier_auc']:.3f}"
                 + (f" (MC vs MC {floor['classifier_auc']:.3f})" if floor else ""))
    non_empty, gate = report.get("headline_non_empty"), report.get("gate")
    if non_empty:
        lines.append(f"events with light only: channel-WS {_fmt(non_empty['ws_mean'])} "
                     f"({non_empty['n_generated']} generated, {non_empty['n_reference']} MC); "
                     f"MC floor {_fmt(non_empty['floor_ws_mean'])}; ratio "
                     f"{_fmt(non_empty['ratio'], digits=2)}")
    if gate:
        overall = gate["all"]
        lines.append(
            f"empty responses: generated {overall['generated_empty_fraction']:.3f}, MC "
            f"{overall['reference_empty_fraction']:.3f}; per particle accuracy "
            f"{overall['accuracy']:.3f} (MC repeats {_fmt(overall['floor_accuracy'])}), "
            f"false-empty {_fmt(overall['false_empty'])}, false-non-empty "
            f"{_fmt(overall['false_non_empty'])}; largest energy-bin difference "
            f"{_fmt(gate['max_bin_difference'])} (MC repeats "
            f"{_fmt(gate['max_bin_difference_floor'])})")
    for name, model, floor_value in _community_rows(report.get("community")):
        lines.append(f"{name}: {model} (MC vs MC {floor_value})")
    if report.get("pbpb"):
        lines.append(_collision_line(report["pbpb"]))
    lines.append(f"thresholds: {threshold_status(report)}")
    return lines


def threshold_status(report: dict) -> str:
    """"no thresholds given", "all N hold" or "FAILED: ..." (never a pass without limits)."""
    limits = report.get("thresholds") or {}
    if not limits:
        return "no thresholds given (nothing was checked)"
    if report["passed"]:
        return f"all {len(limits)} hold (PASSED)"
    return "FAILED: " + "; ".join(report["failed_thresholds"])


def _spread_groups(sums: dict | None) -> list[tuple[str, dict]]:
    """(label, entry) of a photon_sum_spread section: all particles, then each energy third
    with its range (GeV)."""
    if not sums:
        return []
    low, high = sums["energy_edges_gev"]
    ranges = [f"E < {low:.0f} GeV", f"{low:.0f} <= E < {high:.0f} GeV", f"E >= {high:.0f} GeV"]
    return [("all particles", sums["all"]), *((f"energy third {k} ({ranges[k]})", sums[str(k)])
                                              for k in range(3))]


def _fmt(value: float | None, interval: list[float] | None = None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.{digits}f}"
    if interval is not None:
        text += f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"
    return text


def _community_numbers(part: dict | None) -> dict[str, str]:
    """The community metrics of one sample pair as short strings (n/a when missing)."""
    if not part:
        return dict.fromkeys(("fpd", "kpd", "auc", "jsd", "separation"), "n/a")
    separation = {k: v for k, v in part["separation_power"].items() if v is not None}
    worst = max(separation, key=separation.get) if separation else None
    return {"fpd": f"{_fmt(part['fpd']['value'], digits=4)} +- "
                   f"{_fmt(part['fpd']['error'], digits=4)}",
            "kpd": f"{_fmt(part['kpd']['value'], digits=5)} +- "
                   f"{_fmt(part['kpd']['error'], digits=5)}",
            "auc": _fmt(part["classifier"]["auc"]), "jsd": _fmt(part["classifier"]["jsd"]),
            "separation": "n/a" if worst is None else f"{separation[worst]:.3f} ({worst})"}


def _community_rows(community: dict | None) -> list[tuple[str, str, str]]:
    if not community:
        return []
    model = _community_numbers(community["all"]["model"])
    floor = _community_numbers(community["all"].get("floor"))
    return [("FPD (events with light; Frechet physics distance, 0 = same)", model["fpd"],
             floor["fpd"]),
            ("KPD (events with light; kernel physics distance, 0 = same)", model["kpd"],
             floor["kpd"]),
            ("calibrated classifier AUC", model["auc"], floor["auc"]),
            ("calibrated classifier JSD (bits; 0 = same, 1 = disjoint)", model["jsd"],
             floor["jsd"]),
            ("largest separation power (0 = same, 1 = disjoint)", model["separation"],
             floor["separation"])]


PAGE_STYLE = ("body{font-family:'DejaVu Sans',Helvetica,Arial,sans-serif;max-width:1500px;"
              "margin:1em auto;padding:0 1em;color:#222}table{border-collapse:collapse;"
              "margin:0.5em 0 1.5em}td,th{border:1px solid #bbb;padding:3px 8px;"
              "text-align:right}td:first-child,th:first-child{text-align:left}"
              "th{background:#eee}.headline{font-size:1.35em;margin:0.4em 0}"
              ".status{display:inline-block;padding:2px 10px;border-radius:4px}"
              ".passed{background:#d4edda}.failed{background:#f8d7da}.unchecked{background:#eee}"
              "img{max-width:100%}.small{color:#666;font-size:0.9em}")
CAPTIONS = {
    "channels.png": "The five channel sums: Monte Carlo (points with Poisson errors) and "
                    "generated (line), ratio generated / MC below",
    "mean_images.png": "Mean images (photons per fibre)",
    "examples.png": "The same particles: Monte Carlo (top) and generated (bottom)",
    "response_energy.png": "Photon sum against the particle's energy: mean and resolution",
    "pbpb_linearity.png": "Pb-Pb: summed photons against the number of free spectator "
                          "nucleons per collision side (linearity and resolution)",
    "pbpb_centrality.png": "Pb-Pb: summed photons per centrality class, with the free-nucleon "
                           "numbers",
}


def render_html(report: dict, figures: list[str]) -> str:
    """A self-contained page read top-down: the headline with its interval and floor, the
    thresholds, the metrics table, the figures, then the per-expert, per-slice and Pb-Pb
    (per-centrality) tables with their figures."""
    table = "".join(f"<tr><td>{html.escape(a)}</td><td>{b}</td><td>{c}</td></tr>"
                    for a, b, c in _metric_rows(report))
    collision_figures = [name for name in figures if name.startswith("pbpb_")]
    particle_figures = [name for name in figures if name not in collision_figures]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>ExpertSim validation"
            f"</title><style>{PAGE_STYLE}</style></head><body><h1>ExpertSim validation</h1>"
            f"{_headline_html(report)}"
            f"<table><tr><th>metric</th><th>generated vs MC</th><th>MC vs MC (floor)</th></tr>"
            f"{table}</table>{_figures_html(particle_figures)}"
            f"{_per_expert_html(report.get('per_expert'))}"
            f"{_community_slices_html(report.get('community'))}"
            f"{_collision_html(report.get('pbpb'))}{_figures_html(collision_figures)}"
            f"<p>All numbers: <a href='metrics.json'>metrics.json</a></p></body></html>")


def _metric_rows(report: dict) -> list[tuple[str, str, str]]:
    headline, floor, paired = report["headline"], report.get("floor"), report["paired"]
    centroid = paired["centroid_distance"]
    return [(f"channel-WS mean (photons, {headline['convention']} channels; 95 % interval)",
             _fmt(headline["ws_mean"], headline["ws_mean_ci95"]),
             _fmt(headline["floor_ws_mean"], headline["floor_ci95"])),
            ("model / floor (1 = as good as the simulation)",
             _fmt(headline["ratio"], headline["ratio_ci95"], 2), ""),
            ("median centroid distance per particle (fibres)",
             _fmt(centroid["model_median"], digits=2), _fmt(centroid["floor_median"], digits=2)),
            *([("median centroid distance between two generations of a particle (fibres)",
                _fmt(paired["centroid_spread"]["model_median"], digits=2),
                _fmt(paired["centroid_spread"]["floor_median"], digits=2))]
              if "centroid_spread" in paired else []),
            *([(f"photon-sum scatter of one particle, {label} (RMS, photons)",
                _fmt(value["model_std"], digits=1), _fmt(value["floor_std"], digits=1))
               for label, value in _spread_groups(report.get("photon_sum_spread"))]),
            ("photon-sum WS (photons)", _fmt(report["photon_sum"]["wasserstein"]),
             _fmt(floor["photon_sum"]["wasserstein"]) if floor else "n/a"),
            ("photon-sum KS", _fmt(report["photon_sum"]["ks"]),
             _fmt(floor["photon_sum"]["ks"]) if floor else "n/a"),
            ("classifier AUC (0.5 = indistinguishable)", _fmt(report["classifier_auc"]),
             _fmt(floor["classifier_auc"]) if floor else "n/a"),
            *_community_rows(report.get("community"))]


def _headline_html(report: dict) -> str:
    """The headline line (value, interval, floor, ratio), the threshold status, the source."""
    headline = report["headline"]
    text = (f"channel-WS <b>{_fmt(headline['ws_mean'], headline['ws_mean_ci95'], 2)}</b> "
            "photons")
    if headline.get("floor_ws_mean") is not None:
        text += (f" &middot; MC floor {_fmt(headline['floor_ws_mean'], headline['floor_ci95'], 2)}"
                 f" &middot; model / floor <b>{_fmt(headline['ratio'], headline['ratio_ci95'], 2)}"
                 "</b>")
    status = threshold_status(report)
    kind = ("unchecked" if not report.get("thresholds")
            else "passed" if report["passed"] else "failed")
    return (f"<p class='headline'>{text}</p><p>thresholds: <span class='status {kind}'>"
            f"{html.escape(status)}</span></p><p class='small'>reference "
            f"{html.escape(report['reference'])}: {report['n_reference']} events, "
            f"{report['design']} design, {report['n_pairs']} particles scored, "
            f"{len(report['generated'])} generation(s); 95 % intervals in brackets</p>")


def _figures_html(names: list[str]) -> str:
    return "".join(f"<h3>{html.escape(CAPTIONS.get(name, name))}</h3>"
                   f"<img src='{html.escape(name)}' alt='{html.escape(name)}'>" for name in names)


def _per_expert_html(per_expert: dict | None) -> str:
    """Events and channel-WS of each expert's particles."""
    if not per_expert:
        return ""
    total = sum(entry["n"] for entry in per_expert.values()) or 1
    cells = "".join(f"<tr><td>expert {name}</td><td>{entry['n']}</td>"
                    f"<td>{100 * entry['n'] / total:.0f} %</td><td>{_fmt(entry['ws_mean'])}</td>"
                    "</tr>" for name, entry in per_expert.items())
    return ("<h3>Per expert: the particles routed to each</h3><table><tr><th>expert</th>"
            "<th>particles</th><th>share</th><th>channel-WS (photons)</th></tr>"
            + cells + "</table>")


def _community_slices_html(community: dict | None) -> str:
    """The community metrics per energy bin and per species: model (floor) in each cell."""
    if not community or not (community["by_energy"] or community["by_species"]):
        return ""
    edges = community["energy_edges_gev"]
    labelled = [(f"{edges[int(k)]:.3g}-{edges[int(k) + 1]:.3g} GeV", entry)
                for k, entry in community["by_energy"].items()]
    labelled += [(f"PDG {code}", entry) for code, entry in community["by_species"].items()]
    cells = []
    for label, entry in labelled:
        model = _community_numbers(entry["model"])
        floor = _community_numbers(entry.get("floor"))
        cells.append(f"<tr><td>{html.escape(label)}</td><td>{entry['model']['n_reference']}</td>"
                     + "".join(f"<td>{model[key]} ({floor[key]})</td>"
                               for key in ("fpd", "kpd", "auc", "jsd", "separation"))
                     + "</tr>")
    return ("<h3>Per energy bin and species: generated vs MC (MC vs MC)</h3>"
            "<table><tr><th>slice</th><th>MC events</th>"
            "<th>FPD</th><th>KPD</th><th>classifier AUC</th><th>JSD</th>"
            "<th>largest separation power</th></tr>" + "".join(cells) + "</table>")


def _collision_line(section: dict) -> str:
    """The Pb-Pb headline as one line of text."""
    headline = section["headline"]
    return (f"Pb-Pb ({section['n_collisions']} collisions, {section['n_particles']} free "
            f"{section['nucleon']}s): summed photon-sum WS {_fmt(headline['ws_photon_sum'])} "
            f"(MC repeat {_fmt(headline['floor_ws_photon_sum'])}; ratio "
            f"{_fmt(headline['ratio'], digits=2)}); photons per {section['nucleon']} "
            f"generated / MC {_fmt(headline['slope_ratio'])}")


def _collision_html(section: dict | None) -> str:
    """The Pb-Pb table: one row per centrality class."""
    if not section:
        return ""
    cells = []
    for row in section["by_centrality"]:
        low, high = row["centrality"]
        mc, gen = row["photon_sum_mc"], row["photon_sum_generated"]
        cells.append(
            f"<tr><td>{low}-{high} %</td><td>{row['entries']}</td>"
            f"<td>{row['nucleons'][0]:.1f} ({row['nucleons'][1]:.1f})</td>"
            f"<td>{mc[0]:.0f} ({mc[1]:.0f})</td><td>{gen[0]:.0f} ({gen[1]:.0f})</td>"
            f"<td>{_fmt(row['ws_photon_sum'], digits=1)} "
            f"({_fmt(row['floor_ws_photon_sum'], digits=1)})</td>"
            f"<td>{_fmt(row['ratio'], digits=2)}</td></tr>")
    return (f"<h2>Pb-Pb collisions</h2><p>{html.escape(_collision_line(section))}</p>"
            "<table><tr><th>centrality</th><th>collision sides</th>"
            f"<th>free {section['nucleon']}s mean (rms)</th><th>MC summed photons mean (rms)"
            "</th><th>generated mean (rms)</th><th>WS generated vs MC (MC repeat vs MC)</th>"
            "<th>ratio</th></tr>" + "".join(cells) + "</table>")
