"""The comparison study: several configurations x seeds, one event file, one test split.

Layout of a study folder:

    runs/<config name>/seed<k>/     training output (model.pt, checkpoints), report/ (the
                                    validation of the test split), result.json (written last:
                                    its presence marks the run done)
    reference_<min photon sum>.h5   the test-split reference events, shared by every run
    study.json, table.md            the table: one row per configuration, mean +- std over seeds
    heldout/                        with --heldout FILE: reference.h5 (FILE's events with light),
                                    <config name>/seed<k>/ and nn-lookup/ (each model and the
                                    lookup table validated on it); a second table in table.md
    channels_overlay.png            channel-sum histograms of every model against the reference
    experts_<config name>.png       per-expert analysis of multi-expert models (seed of the
                                    lowest-numbered run)

A study can be stopped at any point and run again with the same command: finished runs are
reused and the others trained. A run stopped by SIGTERM or SIGUSR1 (``expertsim study``, as
under SLURM pre-emption) saves checkpoint_last.pt and resumes from it; a run killed outright
starts again from its beginning.
Training is deterministic on a CPU for a fixed seed (train.deterministic), and validation
noise is seeded, so a rerun reproduces every number except the measured sampling speed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from expertsim import __version__
from expertsim.errors import ConfigError, ExpertSimError
from expertsim.eventfile import EventFile, check_event_file
from expertsim.fileio import write_text

RESULT_FILE = "result.json"


class StudyStopped(ExpertSimError):
    """A stop signal arrived; the training in progress saved its checkpoint."""

SPEED_EVENTS = 2000


@dataclass(frozen=True)
class StudyRun:
    name: str
    config_path: Path
    seed: int
    directory: Path


def config_files(configs: list[str | os.PathLike]) -> list[Path]:
    """Config files in the given order; a directory stands for its *.yaml files, sorted by
    name (training/study/ numbers them so that baselines come first)."""
    files: list[Path] = []
    for item in map(Path, configs):
        if item.is_dir():
            found = sorted(item.glob("*.yaml"))
            if not found:
                raise ConfigError(f"{item}: no *.yaml configs in this folder")
            files += found
        else:
            files.append(item)
    return files


SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def plan(configs: list[str | os.PathLike], seeds: int, output_dir: Path,
         data: Path | None = None) -> list[StudyRun]:
    """One run per (config, seed), seed-major (every config's seed 0 first: a study cut short
    has each model once before any twice); config names (``name:``) must be unique. ``data``:
    the study's event file (it picks a config's ``detectors`` section)."""
    from expertsim.config import load_config

    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    configs = config_files(configs)
    if not configs:
        raise ConfigError("the study needs at least one config (--configs)")
    names = {}
    for path in configs:
        name = load_config(path, [] if data is None else [
            f"data.path={data}", "data.simulate=null"]).name
        if not SAFE_NAME.fullmatch(name) or name in (".", ".."):
            raise ConfigError(f"{path}: name {name!r} names the run's folder under "
                              f"{output_dir}/runs: use letters, digits, '.', '_' and '-' only "
                              "(no '/' and no '..')")
        if name in names:
            raise ConfigError(f"{path} and {names[name]} share the name {name!r}; give each "
                              "study config its own 'name:'")
        names[name] = path
    return [StudyRun(name, Path(path), seed, output_dir / "runs" / name / f"seed{seed}")
            for seed in range(seeds) for name, path in names.items()]


def run_study(data: str | os.PathLike, configs: list[str | os.PathLike], output_dir:
              str | os.PathLike, *, seeds: int = 3, overrides: list[str] | None = None,
              generations: int = 3, tracking_uri: str | None = None,
              log: Callable[[str], None] = lambda message: None,
              progress_factory: Callable[[int, str], Any] | None = None,
              stop_signals: tuple[int, ...] = (),
              heldout: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train (or reuse), validate and tabulate every (config, seed); returns study.json.

    Args:
        data: the event file every model trains and is tested on (its split).
        configs: training configs (training/study/*.yaml); their data.path is replaced.
        overrides: ``key=value`` applied to every config (e.g. train.epochs=10).
        tracking_uri: MLflow store (default: sqlite:///<output_dir>/mlflow.db).
        log: receives one line per event of the study.
        progress_factory: (total steps, description) -> a context manager with update(n),
            e.g. a tqdm bar; None for no progress display.
        stop_signals: signals (e.g. SIGTERM, SIGUSR1) that make the training in progress save
            its checkpoint and the study raise StudyStopped; the same call later resumes it.
            Handled only while a model trains, and only from the main thread.
        heldout: an independent Monte Carlo event file (other seeds than ``data``, every
            particle twice for the floor): every run and the lookup table are validated on its
            events with light as well (reused when done for the same model file), for
            intervals the test split is too small to give.

    Raises:
        StudyStopped: one of ``stop_signals`` arrived.
    """
    data, output_dir = Path(data), Path(output_dir)
    check_event_file(data)
    runs = plan(configs, seeds, output_dir, data)
    output_dir.mkdir(parents=True, exist_ok=True)
    tracking_uri = tracking_uri or f"sqlite:///{(output_dir / 'mlflow.db').resolve()}"
    results = []
    for index, run in enumerate(runs, 1):
        result_path = run.directory / RESULT_FILE
        if result_path.exists():
            result = json.loads(result_path.read_text())
            _check_reusable(result, _run_config(run, data, overrides or [], tracking_uri),
                            result_path)
            log(f"[{index}/{len(runs)}] {run.name} seed {run.seed}: done before, reused")
            results.append({**result, "name": run.name})
            continue
        log(f"[{index}/{len(runs)}] {run.name} seed {run.seed}: training")
        started = time.perf_counter()
        result = _train_and_validate(run, data, output_dir, overrides or [], generations,
                                     tracking_uri, progress_factory, stop_signals)
        result["wall_seconds"] = time.perf_counter() - started
        write_text(result_path, json.dumps(result, indent=2))
        log(f"    channel-WS {result['headline']['ws_mean']:.3f} +- "
            f"{result['headline']['ws_mean_std']:.3f}, AUC {result['classifier_auc']:.3f} "
            f"({result['wall_seconds']:.0f} s)")
        results.append(result)
    lookup = _lookup(data, output_dir, results, log) if results else []
    study = summarise(results + lookup, data, output_dir, tracking_uri)
    if heldout is not None and results:
        study["heldout"] = heldout_rows(results, data, Path(heldout), output_dir, generations,
                                        log, check_size=study["n_test_pairs"])
    write_text(output_dir / "study.json", json.dumps(study, indent=2))
    write_text(output_dir / "table.md", markdown_table(study))
    write_study_plots(results, output_dir)
    return study


def _reference_for(data: Path, output_dir: Path, min_photon_sum: float | None) -> Path:
    from expertsim.validation import select_reference

    path = output_dir / f"reference_{'all' if min_photon_sum is None else min_photon_sum}.h5"
    if not path.exists():
        select_reference(data, path, split="test", min_photon_sum=min_photon_sum)
    return path


def _lookup(data: Path, output_dir: Path, results: list[dict], log) -> list[dict]:
    """The nearest-neighbour lookup table of the data's train split, scored on the study's
    reference like a model (once per study; reused when its report exists)."""
    from expertsim.validation import validate_lookup

    report_path = output_dir / "lookup" / "metrics.json"
    reference = Path(results[0]["reference"])
    min_photon_sum = results[0]["config"]["data"]["min_photon_sum"]
    if report_path.exists():
        report = json.loads(report_path.read_text())
    else:
        log("nn-lookup: scoring the nearest-neighbour lookup table")
        report = validate_lookup(data, reference, output_dir / "lookup",
                                 min_photon_sum=min_photon_sum, selected_reference=reference,
                                 plots=False)
    return [{"name": "nn-lookup", "config_path": "-", "seed": 0, "n_experts": 0,
             "parameters": 0, "sample_events_per_s": None, "run_id": None,
             "reference": str(reference), **{key: report[key] for key in (
                 "headline", "classifier_auc", "uncertainty", "paired", "floor",
                 "per_expert")}}]


def heldout_rows(results: list[dict], data: Path, heldout: Path, output_dir: Path,
                 generations: int, log, check_size: int | None = None) -> dict[str, Any]:
    """Every run's model and the lookup table validated on an independent file's events with
    light (output_dir/heldout); one row per config, as in the study's table."""
    from expertsim.validation import select_reference, validate_lookup, validate_model

    check_event_file(heldout)
    folder = output_dir / "heldout"
    reference = folder / "reference.h5"
    min_photon_sum = results[0]["config"]["data"]["min_photon_sum"]
    if reference.exists():
        _check_heldout_reference(reference, heldout, min_photon_sum)
    else:
        log(f"held out: selecting the events of {heldout} with photon sum >= {min_photon_sum}")
        select_reference(heldout, reference, min_photon_sum=min_photon_sum)
    reports = []
    for result in results:
        model = output_dir / "runs" / result["name"] / f"seed{result['seed']}" / "model.pt"
        report_dir = folder / result["name"] / f"seed{result['seed']}"
        report = _reusable_report(report_dir, model, reference, generations)
        if report is None:
            log(f"held out: validating {result['name']} seed {result['seed']} on {heldout}")
            report = validate_model(model, heldout, report_dir, generations=generations,
                                    seed=0, selected_reference=reference, plots=False)
        reports.append({"name": result["name"], "seed": result["seed"],
                        "n_experts": result["n_experts"], **report})
    lookup_report = folder / "nn-lookup" / "metrics.json"
    if lookup_report.exists():
        lookup = json.loads(lookup_report.read_text())
    else:
        log(f"held out: scoring the nearest-neighbour lookup table on {heldout}")
        lookup = validate_lookup(data, reference, folder / "nn-lookup",
                                 min_photon_sum=min_photon_sum, selected_reference=reference,
                                 plots=False)
    reports.append({"name": "nn-lookup", "seed": 0, "n_experts": 0, **lookup})
    rows = []
    for name in dict.fromkeys(r["name"] for r in reports):
        group = [r for r in reports if r["name"] == name]
        ws = np.array([r["headline"]["ws_mean"] for r in group])
        rows.append({
            "model": name, "n_experts": group[0]["n_experts"],
            "seeds": [r["seed"] for r in group], "ws_mean": float(ws.mean()),
            "ws_std_over_seeds": float(ws.std(ddof=1)) if len(ws) > 1 else 0.0,
            "ws_per_seed": ws.tolist(),
            "ws_se": float(np.mean([r["uncertainty"]["se"]["model"] for r in group])),
            "floor_ws": float(np.mean([r["headline"]["floor_ws_mean"] for r in group])),
            "ratio_to_floor": float(np.mean([r["headline"]["ratio"] for r in group])),
            "centroid_ratio": float(np.mean([r["paired"]["centroid_distance"]["ratio"]
                                             for r in group])),
            "classifier_auc": float(np.mean([r["classifier_auc"] for r in group])),
            "auc_per_seed": [r["classifier_auc"] for r in group]})

    def files_of(row: dict) -> list[Path]:
        if row["n_experts"] == 0:
            return [folder / "nn-lookup" / "lookup_0.h5"]
        return [folder / row["model"] / f"seed{seed}" / "generated_0.h5" for seed in row["seeds"]]

    paired = _paired_errors(rows, files_of, reference, check_size)
    _compare_with_best_single(rows, None if paired is None else paired["se"])
    return {"file": str(heldout.resolve()), "n_events": check_event_file(reference).n_events,
            "min_photon_sum": min_photon_sum, "rows": rows,
            "test_size_check": None if paired is None else paired["check"]}


def _check_heldout_reference(reference: Path, heldout: Path, min_photon_sum) -> None:
    """A study's held-out selection must come from the same file with the same filter."""
    with EventFile(reference) as events:
        made = events.info.provenance
    source = [entry["path"] for entry in made.get("inputs", [])]
    if source != [str(heldout.resolve())] or made.get("config", {}).get(
            "min_photon_sum") != min_photon_sum:
        raise ConfigError(f"{reference} was selected from {source} with photon sum >= "
                          f"{made.get('config', {}).get('min_photon_sum')}, not from "
                          f"{heldout.resolve()} with >= {min_photon_sum}: give the same "
                          f"--heldout file, or delete {reference.parent} to start it again")


def _reusable_report(report_dir: Path, model: Path, reference: Path, generations: int
                     ) -> dict | None:
    """A finished held-out report of this very model file (its generations name the model's
    SHA-256 and cover the reference's rows, and there are as many), else None."""
    from expertsim.provenance import file_sha256

    metrics, generated = report_dir / "metrics.json", report_dir / "generated_0.h5"
    if not (metrics.exists() and generated.exists()):
        return None
    with EventFile(generated) as events:
        made = events.info.provenance.get("config", {})
    if (made.get("model_sha256") != file_sha256(model)
            or made.get("n_conditions") != check_event_file(reference).n_events):
        return None
    report = json.loads(metrics.read_text())
    return report if len(report["generated"]) == generations else None


def _run_config(run: StudyRun, data: Path, overrides: list[str], tracking_uri: str):
    """The config a study run trains with: its file, the study's overrides, then the study's
    data, seed, folder and tracking."""
    from expertsim.config import load_config

    config = load_config(run.config_path, [
        *overrides, f"data.path={data}", "data.simulate=null", f"train.seed={run.seed}",
        f"train.output_dir={run.directory}"])
    return dataclasses.replace(config, tracking=dataclasses.replace(
        config.tracking, uri=tracking_uri, experiment="expertsim-study",
        run_name=f"{run.name}-seed{run.seed}"))


# settings that do not change what a run computes, or name where it was kept or what it is
# called (a config renamed without other changes reuses its runs under its new name)
REUSE_IGNORED = ("name", "tracking.", "train.output_dir", "train.log_every", "train.threads",
                 "train.device")


def _check_reusable(result: dict[str, Any], config, result_path: Path) -> None:
    """Refuse to reuse a finished run whose settings differ from the current ones (an edited
    config, other --set values): its numbers would be put in the table under the new ones."""
    from expertsim.config import config_from_dict

    saved = config_from_dict(result["config"], str(result_path)).flat()
    current = config.flat()
    changed = sorted(key for key in set(saved) | set(current)
                     if not key.startswith(REUSE_IGNORED) and saved.get(key) != current.get(key))
    if changed:
        listed = "; ".join(f"{key}: {saved.get(key)!r} then, {current.get(key)!r} now"
                           for key in changed[:6])
        raise ConfigError(f"{result_path}: this finished run was made with other settings "
                          f"({listed}{'; ...' if len(changed) > 6 else ''}); write the study "
                          f"to a new folder, or delete {result_path.parent} to train it again")


def _train_and_validate(run: StudyRun, data: Path, output_dir: Path, overrides: list[str],
                        generations: int, tracking_uri: str, progress_factory,
                        stop_signals: tuple[int, ...]) -> dict[str, Any]:
    from expertsim.runner import train_run
    from expertsim.tracking import log_to_run
    from expertsim.trained_model import TrainedModel
    from expertsim.validation import validate_model

    config = _run_config(run, data, overrides, tracking_uri)
    if run.directory.exists() and not (run.directory / "checkpoint_last.pt").exists():
        # a run killed before its first checkpoint: start clean (plan() made sure that the
        # folder lies inside the study folder)
        shutil.rmtree(run.directory)
    progress = None if progress_factory is None else _progress(
        progress_factory, f"{run.name} s{run.seed}")
    started = time.perf_counter()
    fit = train_run(config, progress=progress, stop_signals=stop_signals)
    train_seconds = time.perf_counter() - started  # of this call (a resumed run: the rest)
    if fit.status == "preempted":
        raise StudyStopped(f"{run.name} seed {run.seed} stopped at step {fit.step} by a "
                           f"signal, checkpoint saved; run the same study command again")
    reference = _reference_for(data, output_dir, config.data.min_photon_sum)
    model_path = run.directory / "model.pt"
    report = validate_model(model_path, data, run.directory / "report",
                            generations=generations, seed=0, selected_reference=reference,
                            plots=False)
    if fit.run_id and config.tracking.enabled:
        log_to_run(tracking_uri, fit.run_id, {"study/ws_mean": report["headline"]["ws_mean"],
                                              "study/classifier_auc": report["classifier_auc"]},
                   step=fit.step)
    return {
        "name": run.name, "config_path": str(run.config_path), "seed": run.seed,
        "config": config.to_dict(),
        "run_id": fit.run_id, "tracking_uri": tracking_uri, "version": __version__,
        "steps": fit.step, "train_seconds": train_seconds, "best_val_ws": fit.best_ws,
        "n_experts": config.model.n_experts,
        "parameters": TrainedModel.load(model_path).n_parameters,
        "sample_events_per_s": sampling_speed(model_path, reference),
        "headline": report["headline"], "classifier_auc": report["classifier_auc"],
        "uncertainty": report["uncertainty"], "paired": report["paired"],
        "floor": report["floor"], "per_expert": report["per_expert"],
        "per_group": report["per_group"], "reference": str(reference),
        "analysis": expert_analysis(run.directory / "report" / "generated_0.h5", reference,
                                    config.model.n_experts),
        "utilisation": [{"step": h["step"], **{k.split("/")[-1]: v for k, v in h.items()
                                                if "expert_fraction" in k}}
                        for h in fit.history],
    }


def _progress(factory: Callable[[int, str], Any], description: str):
    """The study's progress factory as train_run wants it: (total, steps done) -> bar."""
    @contextlib.contextmanager
    def progress(total: int, done: int):
        with factory(total, description) as bar:
            bar.update(done)
            yield bar
    return progress


def sampling_speed(model_path: Path, reference: Path, n_events: int = SPEED_EVENTS) -> float:
    """Events per second of the sampler's path (generate + Poisson counts) on the reference's
    conditions, batch 256, median of 3 after a warm-up."""
    import torch

    from expertsim.trained_model import TrainedModel

    model = TrainedModel.load(model_path)
    with EventFile(reference) as events:
        c = model.scale(events.conditions(slice(0, n_events)))
    z = model.noise(len(c), torch.Generator().manual_seed(0))

    def once() -> float:
        start = time.perf_counter()
        for i in range(0, len(c), 256):
            model.sample_counts(z[i:i + 256], c[i:i + 256], seed=0, first_row=i)
        return time.perf_counter() - start

    once()
    return len(c) / statistics.median(once() for _ in range(3))


def expert_analysis(generated: Path, reference: Path, n_experts: int) -> dict[str, Any]:
    """Which conditions each expert receives: energy, species, Monte Carlo photon sum and
    intensity group of the reference event of each generated row."""
    from expertsim.metrics import routing_agreement

    with EventFile(generated) as events:
        expert = events.extra("expert").astype(int)
        rows = events.extra("source_row")
    with EventFile(reference) as events:
        energy = events.conditions(rows)[:, 0]
        photon_sum = events.derived("photon_sum", rows)
        group = events.derived("group", rows).astype(int)
        pdg = events.pdg(rows)
    if pdg is None:
        pdg = np.zeros(len(rows), dtype=int)
    species = sorted(int(p) for p in np.unique(pdg))
    out: dict[str, Any] = {"species": species, "experts": []}
    for e in range(n_experts):
        mask = expert == e
        entry: dict[str, Any] = {"expert": e, "n": int(mask.sum()),
                                 "fraction": float(mask.mean()) if len(mask) else 0.0}
        if mask.any():
            entry["energy_gev_quartiles"] = np.percentile(energy[mask], [25, 50, 75]).tolist()
            entry["photon_sum_quartiles"] = np.percentile(photon_sum[mask],
                                                          [25, 50, 75]).tolist()
            entry["species_fraction"] = {str(s): float((pdg[mask] == s).mean()) for s in species}
            entry["group_counts"] = np.bincount(group[mask], minlength=3).tolist()
        out["experts"].append(entry)
    out["group_agreement"] = routing_agreement(expert, group, n_experts)
    out["energy"], out["photon_sum"] = energy.tolist(), photon_sum.tolist()
    out["expert_of_event"], out["pdg"] = expert.tolist(), pdg.tolist()
    return out


def summarise(results: list[dict], data: Path, output_dir: Path, tracking_uri: str
              ) -> dict[str, Any]:
    """One row per config: mean +- std over seeds of each seed's headline channel-WS, the
    sampling uncertainty, the ratio to the matched MC floor, and the comparison with the best
    single GAN."""
    rows = [_row([r for r in results if r["name"] == name])
            for name in dict.fromkeys(r["name"] for r in results)]

    def files_of(row: dict) -> list[Path]:
        if row["n_experts"] == 0:
            return [output_dir / "lookup" / "lookup_0.h5"]
        return [output_dir / "runs" / row["model"] / f"seed{seed}" / "report" / "generated_0.h5"
                for seed in row["seeds"]]

    paired = _paired_errors(rows, files_of, Path(results[0]["reference"])) if results else None
    _compare_with_best_single(rows, None if paired is None else paired["se"])
    return {"format": "expertsim-study", "version": __version__, "data": str(data.resolve()),
            "tracking_uri": tracking_uri, "n_test_events": _count(results),
            "n_test_pairs": None if paired is None else paired["n_pairs"], "rows": rows}


def _row(group: list[dict]) -> dict[str, Any]:
    ws = np.array([r["headline"]["ws_mean"] for r in group])
    floors = [r["headline"]["floor_ws_mean"] for r in group
              if r["headline"].get("floor_ws_mean") is not None]
    ratios = [r["headline"]["ratio"] for r in group if r["headline"].get("ratio") is not None]
    centroid = [r["paired"]["centroid_distance"]["ratio"] for r in group
                if r["paired"]["centroid_distance"]["ratio"] is not None]
    speeds = [r["sample_events_per_s"] for r in group if r["sample_events_per_s"]]
    steps = [r["steps"] for r in group if r.get("steps")]
    train_seconds = [r["train_seconds"] for r in group if r.get("train_seconds")]
    fractions = [[entry["n"] / max(sum(e["n"] for e in r["per_expert"].values()), 1)
                  for entry in r["per_expert"].values()] for r in group]
    return {
        "model": group[0]["name"], "config": group[0]["config_path"],
        "n_experts": group[0]["n_experts"], "seeds": [r["seed"] for r in group],
        "ws_mean": float(ws.mean()),
        "ws_std_over_seeds": float(ws.std(ddof=1)) if len(ws) > 1 else 0.0,
        "ws_per_seed": ws.tolist(),
        # sampling uncertainty of one evaluation (half-sampling se, mean over seeds)
        "ws_se": float(np.mean([r["uncertainty"]["se"]["model"] or np.nan for r in group])),
        "ws_generation_std": float(np.mean([r["headline"]["ws_mean_std"] for r in group])),
        "ws_channels": np.mean([r["headline"]["ws_channels"] for r in group], axis=0).tolist(),
        "classifier_auc": float(np.mean([r["classifier_auc"] for r in group])),
        "floor_ws": float(np.mean(floors)) if floors else None,
        "ratio_to_floor": float(np.mean(ratios)) if ratios else None,
        "centroid_ratio": float(np.mean(centroid)) if centroid else None,
        "expert_fractions_per_seed": fractions,
        "min_expert_fraction": float(min(min(f) for f in fractions)) if fractions else None,
        "per_expert_ws": [{k: v["ws_mean"] for k, v in r["per_expert"].items()} for r in group],
        "sample_events_per_s": float(np.median(speeds)) if speeds else None,
        "steps": int(np.median(steps)) if steps else None,
        "train_minutes": float(np.median(train_seconds)) / 60 if train_seconds else None,
        "parameters": group[0]["parameters"],
        "mlflow_runs": [f"runs:/{r['run_id']}" for r in group if r["run_id"]],
    }


def _best_single(rows: list[dict]) -> dict | None:
    """The single-expert row with the lowest channel-WS (None without one)."""
    singles = [row for row in rows if row["n_experts"] == 1]
    return min(singles, key=lambda row: row["ws_mean"]) if singles else None


def _paired_errors(rows: list[dict], files_of: Callable[[dict], list[Path]], reference: Path,
                   check_size: int | None = None) -> dict[str, Any] | None:
    """Each row's channel-WS minus the best single GAN's, both scored on the same particles
    of ``reference``, from the first generation of every seed (``files_of(row)``): {"se":
    {model: standard error by half-sampling the particles with the same halves for both
    (metrics.paired_difference_standard_error)}, "n_pairs": particles, "check": with
    ``check_size``, the scatter of the trained rows' differences over disjoint subsets of
    that many particles (metrics.disjoint_difference_spread; None below 3 subsets)}. None
    without a single GAN, with a file missing or with too few particles."""
    from expertsim.metrics import disjoint_difference_spread, paired_difference_standard_error
    from expertsim.validation import MIN_UNITS_FOR_ERRORS, N_DRAWS, matched_channels

    best = _best_single(rows)
    files = {row["model"]: files_of(row) for row in rows}
    if best is None or not all(path.exists() for paths in files.values() for path in paths):
        return None
    channels, reference_NC = matched_channels([p for paths in files.values() for p in paths],
                                              reference)
    if len(reference_NC) < MIN_UNITS_FOR_ERRORS:
        return None
    generated, start = {}, 0
    for name, paths in files.items():
        generated[name], start = channels[start:start + len(paths)], start + len(paths)
    check = None
    if check_size:
        trained = {row["model"]: generated[row["model"]] for row in rows if row["n_experts"]}
        check = disjoint_difference_spread(trained, reference_NC, best["model"], check_size)
    return {"se": paired_difference_standard_error(generated, reference_NC, best["model"],
                                                   n_draws=N_DRAWS),
            "n_pairs": len(reference_NC),
            "check": None if check is None or check["n_subsets"] < 3 else check}


def _compare_with_best_single(rows: list[dict], paired_se: dict[str, float] | None = None
                              ) -> None:
    """Adds ``vs_best_single_gan`` to every row: the difference in channel-WS to the best
    single-expert row, and whether it exceeds both the 95 % sampling interval of the
    difference and the two rows' seed spreads (None while a trained row has a single seed: its
    seed spread is unknown; the lookup table has none). The interval is paired (``paired_se``:
    both rows scored on the same particles, _paired_errors) where given, else it treats the
    two rows' errors as independent, which overstates it."""
    best = _best_single(rows)
    if best is None:
        return
    for row in rows:
        delta = row["ws_mean"] - best["ws_mean"]
        unpaired = float(np.hypot(row["ws_se"], best["ws_se"]))
        se = (paired_se or {}).get(row["model"])
        half_width = 1.96 * (unpaired if se is None else se)
        spread = row["ws_std_over_seeds"] + best["ws_std_over_seeds"]
        row["vs_best_single_gan"] = {
            "best": best["model"], "best_ws_mean": best["ws_mean"], "delta": delta,
            "relative": delta / best["ws_mean"],
            "interval": "unpaired" if se is None else "paired half-sampling",
            "se": unpaired if se is None else se, "unpaired_se": unpaired,
            "interval_half_width": half_width, "seed_spread": spread,
            "significant": (None if min(_n_seeds(row), _n_seeds(best)) < 2 else
                            row is not best and abs(delta) > max(half_width, spread))}


def _n_seeds(row: dict) -> float:
    """Seeds behind a row's spread; the deterministic lookup table needs none."""
    return math.inf if row["n_experts"] == 0 else len(row["seeds"])


def _count(results: list[dict]) -> int | None:
    if not results:
        return None
    return check_event_file(results[0]["reference"]).n_events


def markdown_table(study: dict[str, Any]) -> str:
    rows = study["rows"]
    floors = {round(r["floor_ws"], 3) for r in rows if r["floor_ws"] is not None}
    lines = [
        f"Test split of `{Path(study['data']).name}` ({study['n_test_events']} events); "
        "channel-WS in photons (default channel convention), mean +- std over seeds; "
        "+-95 % is the sampling interval of one evaluation (half-sampling); / floor is the "
        "ratio to the MC floor on the same particles and sample size "
        f"(floor {', '.join(f'{f:.2f}' for f in sorted(floors)) or 'n/a'}; 1 = as good as "
        "the simulation); centroid is the median generated-to-MC centroid distance over the "
        "MC repeat-to-repeat one. vs best single GAN: relative difference (+- its 95 % "
        "interval: paired, both models half-sampled on the same particles), * where it exceeds "
        "both that interval and the seed spreads, ? where a single seed leaves the spread "
        "unknown. steps and train min: training steps and minutes (median over seeds). "
        "Lower is better. MLflow store: "
        + study["tracking_uri"] + ".",
        "",
        "| model | experts | channel-WS | +-95 % | / floor | centroid | AUC | expert use | "
        "vs best single GAN | steps | train min | ev/s | parameters |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        use = " / ".join(f"{np.mean(f):.0%}" for f in zip(*row["expert_fractions_per_seed"])) \
            if row["n_experts"] > 1 else "-"
        versus = _versus_cell(row)
        lines.append(
            f"| {row['model']} | {row['n_experts']} | {row['ws_mean']:.2f} +- "
            f"{row['ws_std_over_seeds']:.2f} | {1.96 * row['ws_se']:.2f} | "
            f"{_cell(row['ratio_to_floor'])} | {_cell(row['centroid_ratio'])} | "
            f"{row['classifier_auc']:.3f} | {use} | {versus} | {_cell(row.get('steps'), 'd')} | "
            f"{_cell(row.get('train_minutes'), '.1f')} | "
            f"{_cell(row['sample_events_per_s'], ',.0f')} | {row['parameters']:,} |")
    if study.get("heldout"):
        lines += ["", *_heldout_table(study["heldout"])]
        lines += _test_size_lines(study)
    return "\n".join(lines) + "\n"


def _test_size_lines(study: dict[str, Any]) -> list[str]:
    """The held-out check of the test split's intervals of the differences, as a sentence."""
    check = study["heldout"].get("test_size_check")
    if not check:
        return []
    test_rows = {row["model"]: row for row in study["rows"]}
    parts = []
    for name, std in check["std"].items():
        versus = test_rows.get(name, {}).get("vs_best_single_gan")
        if std is None or versus is None:
            continue
        parts.append(f"{name} {std:.3f} (test split: paired {versus['se']:.3f}, unpaired "
                     f"{versus['unpaired_se']:.3f})")
    if not parts:
        return []
    best = next(iter(test_rows.values()))["vs_best_single_gan"]["best"]
    return ["", f"Check of the test split's intervals: over {check['n_subsets']} disjoint "
            f"subsets of {check['size']:,} held-out particles (the test split's number), the "
            f"standard deviation of each model's channel-WS minus {best}'s (first generation "
            f"of each seed) against the standard error the test split gave it: "
            + "; ".join(parts) + "."]


def _heldout_table(heldout: dict[str, Any]) -> list[str]:
    rows = heldout["rows"]
    floors = sorted({round(r["floor_ws"], 3) for r in rows})
    lines = [
        f"Held out: the same models on `{Path(heldout['file']).name}` ({heldout['n_events']:,} "
        f"events with photon sum >= {heldout['min_photon_sum']}, an independent simulation), "
        "columns as above "
        f"(floor {', '.join(f'{f:.3f}' for f in floors)}; per seed: each seed's channel-WS).",
        "",
        "| model | experts | channel-WS | +-95 % | / floor | centroid | AUC | per seed | "
        "vs best single GAN |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        versus = _versus_cell(row)
        lines.append(
            f"| {row['model']} | {row['n_experts']} | {row['ws_mean']:.3f} +- "
            f"{row['ws_std_over_seeds']:.3f} | {1.96 * row['ws_se']:.3f} | "
            f"{row['ratio_to_floor']:.2f} | {row['centroid_ratio']:.2f} | "
            f"{row['classifier_auc']:.3f} | "
            f"{' / '.join(f'{w:.3f}' for w in row['ws_per_seed'])} | {versus} |")
    return lines


def _versus_cell(row: dict[str, Any]) -> str:
    """The difference to the best single GAN as a table cell: * beyond the interval and the
    seed spreads, ? where one seed leaves the spread unknown."""
    versus = row.get("vs_best_single_gan")
    if versus is None or versus["best"] == row["model"]:
        return "-"
    return (f"{versus['relative']:+.0%} +- "
            f"{versus['interval_half_width'] / versus['best_ws_mean']:.0%}"
            + {True: " *", False: "", None: " ?"}[versus["significant"]])


def _cell(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def write_study_plots(results: list[dict], output_dir: Path) -> list[Path]:
    """channels_overlay.png and experts_<name>.png (lowest seed of each config)."""
    from expertsim.plots import channel_overlay_figure, expert_figure, save_figure

    first = {}
    for result in sorted(results, key=lambda r: r["seed"]):
        first.setdefault(result["name"], result)
    if not first:
        return []

    def channels(path: Path) -> np.ndarray:
        with EventFile(path) as events:
            return events.derived("channels")

    reference = channels(Path(next(iter(first.values()))["reference"]))
    generated = {name: channels(output_dir / "runs" / name / f"seed{result['seed']}" / "report"
                                / "generated_0.h5") for name, result in first.items()}
    paths = [save_figure(channel_overlay_figure(reference, generated),
                         output_dir / "channels_overlay.png")]
    for name, result in first.items():
        if result["n_experts"] > 1:
            paths.append(save_figure(expert_figure(result), output_dir / f"experts_{name}.png"))
    return paths
