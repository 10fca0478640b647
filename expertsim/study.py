"""The comparison study: several configurations x seeds, one event file, one test split.

Layout of a study folder:

    runs/<config name>/seed<k>/     training output (model.pt, checkpoints), report/ (the
                                    validation of the test split), result.json (written last:
                                    its presence marks the run done)
    reference_<min photon sum>.h5   the test-split reference events, shared by every run
    study.json, table.md            the table: one row per configuration, mean +- std over seeds
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

import json
import os
import shutil
import signal
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from expertsim import __version__
from expertsim.errors import ConfigError, ExpertSimError
from expertsim.eventfile import atomic_path, check_event_file, open_event_file

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


def plan(configs: list[str | os.PathLike], seeds: int, output_dir: Path) -> list[StudyRun]:
    """One run per (config, seed); config names (their ``name:`` key) must be unique."""
    from expertsim.config import load_config

    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    configs = config_files(configs)
    if not configs:
        raise ConfigError("the study needs at least one config (--configs)")
    runs, names = [], {}
    for path in configs:
        name = load_config(path).name
        if name in names:
            raise ConfigError(f"{path} and {names[name]} share the name {name!r}; give each "
                              "study config its own 'name:'")
        names[name] = path
        for seed in range(seeds):
            runs.append(StudyRun(name, Path(path), seed,
                                 output_dir / "runs" / name / f"seed{seed}"))
    return runs


def run_study(data: str | os.PathLike, configs: list[str | os.PathLike], output_dir:
              str | os.PathLike, *, seeds: int = 3, overrides: list[str] | None = None,
              generations: int = 3, tracking_uri: str | None = None,
              log: Callable[[str], None] = lambda message: None,
              progress_factory: Callable[[int, str], Any] | None = None,
              stop_signals: tuple[int, ...] = ()) -> dict[str, Any]:
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

    Raises:
        StudyStopped: one of ``stop_signals`` arrived.
    """
    data, output_dir = Path(data), Path(output_dir)
    check_event_file(data)
    output_dir.mkdir(parents=True, exist_ok=True)
    tracking_uri = tracking_uri or f"sqlite:///{(output_dir / 'mlflow.db').resolve()}"
    runs = plan(configs, seeds, output_dir)
    results = []
    for index, run in enumerate(runs, 1):
        result_path = run.directory / RESULT_FILE
        if result_path.exists():
            log(f"[{index}/{len(runs)}] {run.name} seed {run.seed}: done before, reused")
            results.append(json.loads(result_path.read_text()))
            continue
        log(f"[{index}/{len(runs)}] {run.name} seed {run.seed}: training")
        started = time.perf_counter()
        result = _train_and_validate(run, data, output_dir, overrides or [], generations,
                                     tracking_uri, progress_factory, stop_signals)
        result["wall_seconds"] = time.perf_counter() - started
        with atomic_path(result_path) as temporary:
            temporary.write_text(json.dumps(result, indent=2))
        log(f"    channel-WS {result['headline']['ws_mean']:.3f} +- "
            f"{result['headline']['ws_mean_std']:.3f}, AUC {result['classifier_auc']:.3f} "
            f"({result['wall_seconds']:.0f} s)")
        results.append(result)
    study = summarise(results, data, output_dir, tracking_uri)
    with atomic_path(output_dir / "study.json") as temporary:
        temporary.write_text(json.dumps(study, indent=2))
    with atomic_path(output_dir / "table.md") as temporary:
        temporary.write_text(markdown_table(study))
    write_study_plots(results, output_dir)
    return study


def _reference_for(data: Path, output_dir: Path, min_photon_sum: float | None) -> Path:
    from expertsim.validation import select_reference

    path = output_dir / f"reference_{'all' if min_photon_sum is None else min_photon_sum}.h5"
    if not path.exists():
        select_reference(data, path, split="test", min_photon_sum=min_photon_sum)
    return path


def _train_and_validate(run: StudyRun, data: Path, output_dir: Path, overrides: list[str],
                        generations: int, tracking_uri: str, progress_factory,
                        stop_signals: tuple[int, ...]) -> dict[str, Any]:
    from expertsim.checkpoint import load_mixture
    from expertsim.config import load_config
    from expertsim.tracking import make_tracker
    from expertsim.trainer import Trainer
    from expertsim.validation import validate_model

    config = load_config(run.config_path, [
        *overrides, f"data.path={data}", "data.simulate=null", f"train.seed={run.seed}",
        f"train.output_dir={run.directory}"])
    tracker = make_tracker(config.tracking.enabled, tracking_uri, "expertsim-study",
                           f"{run.name}-seed{run.seed}")
    last = run.directory / "checkpoint_last.pt"
    if run.directory.exists() and not last.exists():
        shutil.rmtree(run.directory)  # a run killed before its first checkpoint: start clean
    trainer = Trainer(config, tracker=tracker)
    if last.exists():
        trainer.resume_from(last)
    total = config.train.max_steps or config.train.epochs * len(trainer.loader)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {signum: signal.signal(signum, lambda *_: trainer.request_stop())
                    for signum in stop_signals}
    try:
        if progress_factory is None:
            fit = trainer.fit()
        else:
            with progress_factory(total, f"{run.name} s{run.seed}") as bar:
                bar.update(trainer.step)
                fit = trainer.fit(progress=lambda _: bar.update(1))
    except BaseException:
        tracker.finish("FAILED")
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if fit.status == "preempted":
        tracker.finish("KILLED")
        raise StudyStopped(f"{run.name} seed {run.seed} stopped at step {fit.step} by a "
                           f"signal, checkpoint saved; run the same study command again")
    reference = _reference_for(data, output_dir, config.data.min_photon_sum)
    model_path = run.directory / "model.pt"
    report = validate_model(model_path, data, run.directory / "report",
                            generations=generations, seed=0, selected_reference=reference,
                            plots=False)
    tracker.log_metrics({"study/ws_mean": report["headline"]["ws_mean"],
                         "study/classifier_auc": report["classifier_auc"]}, step=fit.step)
    tracker.finish("FINISHED")
    mixture, _ = load_mixture(model_path)
    return {
        "name": run.name, "config_path": str(run.config_path), "seed": run.seed,
        "config": config.to_dict(),
        "run_id": fit.run_id, "tracking_uri": tracking_uri, "version": __version__,
        "steps": fit.step, "best_val_ws": fit.best_ws,
        "n_experts": config.model.n_experts,
        "parameters": sum(p.numel() for p in mixture.parameters()),
        "sample_events_per_s": sampling_speed(model_path, reference),
        "headline": report["headline"], "classifier_auc": report["classifier_auc"],
        "floor": report["floor"], "per_expert": report["per_expert"],
        "per_group": report["per_group"], "reference": str(reference),
        "analysis": expert_analysis(run.directory / "report" / "generated_0.h5", reference,
                                    config.model.n_experts),
        "utilisation": [{"step": h["step"], **{k.split("/")[-1]: v for k, v in h.items()
                                                if "expert_fraction" in k}}
                        for h in fit.history],
    }


def sampling_speed(model_path: Path, reference: Path, n_events: int = SPEED_EVENTS) -> float:
    """Events per second of the sampler's path (generate + Poisson counts) on the reference's
    conditions, batch 256, median of 3 after a warm-up."""
    import torch

    from expertsim.checkpoint import load_mixture
    from expertsim.sampling import poisson_counts

    mixture, payload = load_mixture(model_path)
    with open_event_file(reference) as handle:
        raw = handle["conditions"][:n_events].astype(np.float64)
    mean, scale = payload["scaler"]["mean"].numpy(), payload["scaler"]["scale"].numpy()
    c = torch.from_numpy(((raw - mean) / scale).astype(np.float32))
    z = torch.randn(len(c), payload["config"]["model"]["noise_dim"],
                    generator=torch.Generator().manual_seed(0))

    def once() -> float:
        start = time.perf_counter()
        for i in range(0, len(c), 256):
            image, _ = mixture.generate(z[i:i + 256], c[i:i + 256])
            poisson_counts(torch.expm1(image).numpy(), 0, i)
        return time.perf_counter() - start

    once()
    return len(c) / statistics.median(once() for _ in range(3))


def expert_analysis(generated: Path, reference: Path, n_experts: int) -> dict[str, Any]:
    """Which conditions each expert receives: energy, species, Monte Carlo photon sum and
    intensity group of the reference event of each generated row."""
    with open_event_file(generated) as handle:
        expert = handle["expert"][:].astype(int)
        rows = handle["source_row"][:]
    with open_event_file(reference) as handle:
        energy = handle["conditions"][:, 0][rows]
        photon_sum = handle["derived/photon_sum"][:][rows]
        group = handle["derived/group"][:][rows].astype(int)
        pdg = handle["pdg"][:][rows] if "pdg" in handle else np.zeros(len(rows), dtype=int)
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
    from expertsim.trainer import routing_agreement

    out["group_agreement"] = routing_agreement(expert, group, n_experts)
    out["energy"], out["photon_sum"] = energy.tolist(), photon_sum.tolist()
    out["expert_of_event"], out["pdg"] = expert.tolist(), pdg.tolist()
    return out


def summarise(results: list[dict], data: Path, output_dir: Path, tracking_uri: str
              ) -> dict[str, Any]:
    """One row per config: mean +- std over seeds of each seed's headline channel-WS."""
    rows = []
    for name in dict.fromkeys(r["name"] for r in results):
        group = [r for r in results if r["name"] == name]
        ws = np.array([r["headline"]["ws_mean"] for r in group])
        floors = [r["floor"]["ws_mean"] for r in group if r["floor"]]
        rows.append({
            "model": name, "config": group[0]["config_path"], "n_experts": group[0]["n_experts"],
            "seeds": [r["seed"] for r in group],
            "ws_mean": float(ws.mean()),
            "ws_std_over_seeds": float(ws.std(ddof=1)) if len(ws) > 1 else 0.0,
            "ws_per_seed": ws.tolist(),
            "ws_generation_std": float(np.mean([r["headline"]["ws_mean_std"] for r in group])),
            "ws_channels": np.mean([r["headline"]["ws_channels"] for r in group],
                                   axis=0).tolist(),
            "classifier_auc": float(np.mean([r["classifier_auc"] for r in group])),
            "floor_ws": float(np.mean(floors)) if floors else None,
            "sample_events_per_s": float(np.median([r["sample_events_per_s"] for r in group])),
            "parameters": group[0]["parameters"],
            "mlflow_runs": [f"runs:/{r['run_id']}" for r in group if r["run_id"]],
        })
    return {"format": "expertsim-study", "version": __version__, "data": str(data.resolve()),
            "tracking_uri": tracking_uri, "n_test_events": _count(results),
            "rows": rows}


def _count(results: list[dict]) -> int | None:
    if not results:
        return None
    with open_event_file(results[0]["reference"]) as handle:
        return int(handle["images"].shape[0])


def markdown_table(study: dict[str, Any]) -> str:
    lines = [
        f"Test split of `{Path(study['data']).name}` ({study['n_test_events']} events); "
        "channel-WS in photons, mean +- std over seeds (each seed: mean of its generations); "
        "lower is better. MLflow store: " + study["tracking_uri"] + ".",
        "",
        "| model | experts | channel-WS | per channel (1-5) | AUC | MC floor | ev/s | "
        "parameters | MLflow runs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in study["rows"]:
        floor = "-" if row["floor_ws"] is None else f"{row['floor_ws']:.2f}"
        channels = " / ".join(f"{w:.1f}" for w in row["ws_channels"])
        runs = " ".join(f"`{r}`" for r in row["mlflow_runs"])
        lines.append(f"| {row['model']} | {row['n_experts']} | {row['ws_mean']:.2f} +- "
                     f"{row['ws_std_over_seeds']:.2f} | {channels} | "
                     f"{row['classifier_auc']:.3f} | {floor} | "
                     f"{row['sample_events_per_s']:,.0f} | {row['parameters']:,} | {runs} |")
    return "\n".join(lines) + "\n"


def write_study_plots(results: list[dict], output_dir: Path) -> list[Path]:
    """channels_overlay.png and experts_<name>.png (lowest seed of each config)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from expertsim.validation import _read

    first = {}
    for result in sorted(results, key=lambda r: r["seed"]):
        first.setdefault(result["name"], result)
    if not first:
        return []
    reference = _read(Path(next(iter(first.values()))["reference"]))
    figure, axes = plt.subplots(1, 5, figsize=(20, 4))
    for channel, axis in enumerate(axes):
        top = max(np.percentile(reference["channels"][:, channel], 99.5), 1.0)
        bins = np.linspace(0, top, 40)
        axis.hist(reference["channels"][:, channel], bins=bins, histtype="stepfilled",
                  color="0.8", label="Monte Carlo")
        for name, result in first.items():
            generated = _read(output_dir / "runs" / name / f"seed{result['seed']}" / "report"
                              / "generated_0.h5")
            axis.hist(generated["channels"][:, channel], bins=bins, histtype="step",
                      label=name)
        axis.set_yscale("log")
        axis.set_xlabel(f"channel {channel + 1} sum [photons]")
    axes[0].set_ylabel("events")
    axes[-1].legend(fontsize=8)
    figure.suptitle("Channel sums on the test split: every model against the Monte Carlo")
    figure.tight_layout()
    paths = [output_dir / "channels_overlay.png"]
    _save(figure, paths[0])
    for name, result in first.items():
        if result["n_experts"] > 1:
            paths.append(output_dir / f"experts_{name}.png")
            _save(expert_figure(result), paths[-1])
    return paths


def _save(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=90)
    plt.close(figure)


def expert_figure(result: dict):
    """Per-expert analysis: energy, Monte Carlo photon sum, species and intensity group of the
    events each expert receives, and utilisation over training."""
    import matplotlib.pyplot as plt

    analysis = result["analysis"]
    expert = np.array(analysis["expert_of_event"])
    energy, photon_sum = np.array(analysis["energy"]), np.array(analysis["photon_sum"])
    pdg = np.array(analysis["pdg"])
    n_experts = result["n_experts"]
    figure, axes = plt.subplots(1, 5, figsize=(24, 4.2))
    energy_bins = np.geomspace(max(energy.min(), 1.0), energy.max() * 1.01, 30)
    sum_bins = np.geomspace(1, max(photon_sum.max(), 2) * 1.01, 30)
    for e in range(n_experts):
        mask = expert == e
        axes[0].hist(energy[mask], bins=energy_bins, histtype="step", label=f"expert {e}")
        axes[1].hist(photon_sum[mask], bins=sum_bins, histtype="step", label=f"expert {e}")
    for axis, label in ((axes[0], "energy [GeV]"), (axes[1], "Monte Carlo photon sum")):
        axis.set_xscale("log")
        axis.set_xlabel(label)
        axis.set_ylabel("events")
        axis.legend(fontsize=8)
    species = analysis["species"]
    width = 0.8 / max(len(species), 1)
    for k, s in enumerate(species):
        fractions = [((expert == e) & (pdg == s)).sum() / max((expert == e).sum(), 1)
                     for e in range(n_experts)]
        axes[2].bar(np.arange(n_experts) + k * width, fractions, width, label=f"PDG {s}")
    axes[2].set_xticks(np.arange(n_experts) + 0.4 - width / 2,
                       [f"expert {e}" for e in range(n_experts)])
    axes[2].set_ylabel("fraction of the expert's events")
    axes[2].legend(fontsize=7)
    counts = np.array([entry.get("group_counts", [0, 0, 0]) for entry in analysis["experts"]])
    axes[3].imshow(counts / np.maximum(counts.sum(axis=1, keepdims=True), 1), cmap="viridis",
                   vmin=0, vmax=1)
    for (i, j), value in np.ndenumerate(counts):
        axes[3].text(j, i, str(value), ha="center", va="center", color="w")
    axes[3].set_xticks(range(3), ["low", "medium", "high"])
    axes[3].set_yticks(range(n_experts), [f"expert {e}" for e in range(n_experts)])
    axes[3].set_xlabel("intensity group of the MC response")
    axes[3].set_title(f"agreement {analysis['group_agreement']:.2f}")
    for e in range(n_experts):
        steps = [u["step"] for u in result["utilisation"] if f"expert_fraction_{e}" in u]
        values = [u[f"expert_fraction_{e}"] for u in result["utilisation"]
                  if f"expert_fraction_{e}" in u]
        axes[4].plot(steps, values, label=f"expert {e}")
    axes[4].set_xlabel("training step")
    axes[4].set_ylabel("fraction of the batch routed")
    axes[4].legend(fontsize=8)
    figure.suptitle(f"{result['name']} (seed {result['seed']}): what each expert receives, "
                    "test split")
    figure.tight_layout()
    return figure
