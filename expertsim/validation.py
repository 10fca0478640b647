"""The validation suite: generated events against Monte Carlo, metric by metric.

``validate`` compares one or more generated event files (each made on the reference's
conditions, e.g. by ``expertsim sample --conditions MC.h5``; rows are paired through
``/source_row``) with the reference Monte Carlo and writes a report folder: ``metrics.json``
(schema below), PNG plots and ``index.html``. Every number is computed by the pure functions
of :mod:`expertsim.metrics`; the trainer's validation uses the same ones.

metrics.json (schema_version 1):
    headline: ws_channels (5, photons, mean over generations), ws_mean, ws_mean_std
    photon_sum: wasserstein (photons), ks; fraction_empty: generated, reference
    fibres_hit, brightest_row, brightest_col, centroid_x, centroid_y, width_x, width_y:
        wasserstein (fibres), ks - shape metrics over non-empty events
    classifier_auc: generated vs reference (0.5 = indistinguishable)
    per_expert, per_group: {label: {n, ws_mean}}
    response_vs_energy: edges (GeV), generated/reference: {count, mean, resolution}
    floor: the same headline/photon_sum/shape metrics between two independent halves of the
        reference's repeated simulations (null without repeats)
    thresholds, passed: the thresholds file's limits and whether all hold
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from expertsim import __version__
from expertsim import metrics
from expertsim.errors import ConfigError, DataSchemaError
from expertsim.eventfile import EventFile, write_event_file
from expertsim.fileio import write_text
from expertsim.plots import validation_figures

REPORT_SCHEMA_VERSION = 1
SHAPE_KEYS = ("fibres_hit", "brightest_row", "brightest_col", "centroid_x", "centroid_y",
              "width_x", "width_y")


def _read(path: Path) -> dict[str, np.ndarray]:
    """Features of every event of an event file (expertsim.metrics.event_features), with the
    images, energy, intensity group, condition id and, for sample files, expert and row."""
    with EventFile(path) as events:
        images = events.images()
        out = metrics.event_features(images)
        out["images"] = images
        out["energy"] = events.conditions()[:, 0]
        out["group"] = events.derived("group")
        out["condition_id"] = events.derived("condition_id")
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
    return {k: v[mask] for k, v in features.items()}


def _floor(reference: dict) -> dict[str, Any] | None:
    """Metrics between two halves of the reference's repeated simulations, or None."""
    ids = reference["condition_id"]
    counts = np.bincount(ids)
    repeated = counts[ids] >= 2
    if repeated.sum() < 2 * metrics.MIN_TRUSTED_EVENTS:
        return None
    order = np.argsort(ids, kind="stable")
    rank = np.empty(len(ids), dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank[order] = np.arange(len(ids)) - starts[ids[order]]
    half_a = repeated & (rank % 2 == 0)
    half_b = repeated & (rank % 2 == 1)
    return compare(_subset(reference, half_b), _subset(reference, half_a))


def select_reference(path: str | os.PathLike, output: str | os.PathLike, *, split: str = "all",
                     min_photon_sum: float | None = None) -> Path:
    """Write the reference events of ``split`` with photon sum >= ``min_photon_sum`` as a new
    event file (validate against what the model was trained to produce, on held-out events)."""
    from expertsim.provenance import make_provenance

    with EventFile(path) as events:
        info = events.info
        rows = events.rows(split, min_photon_sum)
        if len(rows) == 0:
            raise ConfigError(f"{path}: no events in split {split!r} with photon sum >= "
                              f"{min_photon_sum}")
        images, conditions, pdg = events.images(rows), events.conditions(rows), events.pdg(rows)
    write_event_file(output, images, conditions, detector=info.detector, pdg_N=pdg,
                     provenance=make_provenance(made_by="expertsim validate (reference)",
                                                config={"split": split,
                                                        "min_photon_sum": min_photon_sum},
                                                inputs=[path], hash_inputs=False))
    return Path(output)


def validate(generated_paths: list[str | os.PathLike], reference_path: str | os.PathLike,
             output_dir: str | os.PathLike, *, thresholds: dict[str, float] | None = None,
             seed: int = 0, energy_bins: int = 8, plots: bool = True) -> dict[str, Any]:
    """Compare generated files with the reference; write the report; return metrics.json."""
    if not generated_paths:
        raise ConfigError("validate needs at least one generated file")
    reference_path, output_dir = Path(reference_path), Path(output_dir)
    reference = _read(reference_path)
    runs = [(Path(path), _read_generated(Path(path), reference, reference_path))
            for path in generated_paths]
    comparisons = [compare(generated, reference) for _, generated in runs]
    ws_means = np.array([c["ws_mean"] for c in comparisons])
    _, first = runs[0]
    paired = _subset(reference, first["source_row"])  # the reference event of each row
    report: dict[str, Any] = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "expertsim_version": __version__,
        "reference": str(reference_path.resolve()),
        "generated": [str(p.resolve()) for p, _ in runs],
        "n_reference": int(len(reference["photon_sum"])),
        "n_generated": [int(len(g["photon_sum"])) for _, g in runs],
        "headline": {
            "ws_channels": np.mean([c["ws_channels"] for c in comparisons], axis=0).tolist(),
            "ws_mean": float(ws_means.mean()),
            "ws_mean_std": float(ws_means.std(ddof=1)) if len(ws_means) > 1 else 0.0,
        },
        **{k: comparisons[0][k] for k in ("photon_sum", "fraction_empty", *SHAPE_KEYS)},
        "classifier_auc": metrics.classifier_auc(_classifier_features(first),
                                                 _classifier_features(paired), seed=seed),
        "per_expert": (_headline_by_label(first, paired, first["expert"])
                       if "expert" in first else {}),
        "per_group": _headline_by_label(first, paired, paired["group"]),
        "response_vs_energy": _response_vs_energy(first, reference, energy_bins),
    }
    report["floor"] = _floor(reference)
    report["thresholds"] = thresholds or {}
    report["failed_thresholds"] = check_thresholds(report, thresholds or {})
    report["passed"] = not report["failed_thresholds"]

    output_dir.mkdir(parents=True, exist_ok=True)
    figures = validation_figures(first, reference, paired, report, output_dir) if plots else []
    write_text(output_dir / "metrics.json", json.dumps(report, indent=2, allow_nan=True))
    write_text(output_dir / "index.html", render_html(report, figures))
    return report


def _read_generated(path: Path, reference: dict, reference_path: Path) -> dict:
    """A generated file's features, checked to be made on the reference's conditions."""
    generated = _read(path)
    if "source_row" not in generated:
        raise DataSchemaError(f"{path}: no '/source_row': make it with expertsim sample "
                              f"--conditions {reference_path}")
    if generated["source_row"].max() >= len(reference["photon_sum"]):
        raise DataSchemaError(f"{path}: its source rows exceed {reference_path}'s "
                              f"{len(reference['photon_sum'])} events: other conditions")
    return generated


def _headline_by_label(generated: dict, paired: dict, label_N: np.ndarray) -> dict:
    """{label: {n, ws_mean}}: the headline on the events of each label (expert, group)."""
    out = {}
    for label in np.unique(label_N):
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


def validate_model(model_path: str | os.PathLike, reference_path: str | os.PathLike,
                   output_dir: str | os.PathLike, *, generations: int = 3, seed: int = 0,
                   split: str = "all", min_photon_sum: float | None = None,
                   thresholds: dict[str, float] | None = None, plots: bool = True,
                   selected_reference: str | os.PathLike | None = None) -> dict[str, Any]:
    """Generate ``generations`` times (seeds seed, seed + 1, ...) on the reference's
    conditions with the model, then ``validate``. ``split`` / ``min_photon_sum`` select the
    reference events first (written to output_dir/reference.h5), unless
    ``selected_reference`` already holds that selection."""
    from expertsim.sampling import sample_to_file

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    reference = Path(reference_path)
    if selected_reference is not None:
        reference = Path(selected_reference)
    elif split != "all" or min_photon_sum is not None:
        reference = select_reference(reference_path, output_dir / "reference.h5", split=split,
                                     min_photon_sum=min_photon_sum)
    files = []
    for k in range(generations):
        path = output_dir / f"generated_{k}.h5"
        sample_to_file(model_path, reference, path, seed=seed + k)
        files.append(path)
    return validate(files, reference, output_dir, thresholds=thresholds, seed=seed, plots=plots)


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


def render_html(report: dict, figures: list[str]) -> str:
    """A self-contained page showing the headline, the main metrics and the plots."""
    headline = report["headline"]
    floor = report.get("floor")
    rows = [("channel-WS mean (photons)",
             f"{headline['ws_mean']:.3f} &plusmn; {headline['ws_mean_std']:.3f}",
             f"{floor['ws_mean']:.3f}" if floor else "n/a"),
            ("photon-sum WS (photons)", f"{report['photon_sum']['wasserstein']:.3f}",
             f"{floor['photon_sum']['wasserstein']:.3f}" if floor else "n/a"),
            ("photon-sum KS", f"{report['photon_sum']['ks']:.3f}",
             f"{floor['photon_sum']['ks']:.3f}" if floor else "n/a"),
            ("classifier AUC (0.5 = indistinguishable)", f"{report['classifier_auc']:.3f}", "")]
    table = "".join(f"<tr><td>{html.escape(a)}</td><td>{b}</td><td>{c}</td></tr>"
                    for a, b, c in rows)
    status = "PASSED" if report["passed"] else "FAILED: " + html.escape(
        "; ".join(report["failed_thresholds"]))
    images = "".join(f'<h3>{html.escape(name)}</h3><img src="{html.escape(name)}" '
                     'style="max-width:100%">' for name in figures)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>ExpertSim validation"
            f"</title></head><body><h1>ExpertSim validation</h1><p>reference "
            f"{html.escape(report['reference'])} ({report['n_reference']} events); "
            f"{len(report['generated'])} generation(s); thresholds: {status}</p>"
            f"<table border='1' cellpadding='4'><tr><th>metric</th><th>generated vs MC</th>"
            f"<th>MC noise floor</th></tr>{table}</table>{images}"
            f"<p>All numbers: <a href='metrics.json'>metrics.json</a></p></body></html>")
