"""The validate command."""

from __future__ import annotations

from pathlib import Path

import click
from tqdm import tqdm

EXIT_THRESHOLDS_FAILED = 3
# What a validation writes into its report folder (--overwrite replaces them)
REPORT_FILES = ("metrics.json", "index.html", "*.png", "reference.h5", "generated_*.h5",
                "lookup_*.h5", "o2_*.h5", "agreement.json")


@click.command()
@click.option("--reference", required=True, type=click.Path(dir_okay=False),
              help="Monte Carlo event file (held-out events).")
@click.option("--generated", "generated", multiple=True, type=click.Path(dir_okay=False),
              help="Generated event file made on the reference's conditions (repeatable: "
                   "several generations give mean +- std).")
@click.option("--model", "model_path", type=click.Path(dir_okay=False), default=None,
              help="Instead of --generated: generate with this model on the reference first.")
@click.option("--lookup", "lookup_train", type=click.Path(dir_okay=False), default=None,
              help="Instead of a model: score the nearest-neighbour lookup table of this "
                   "event file's train split (the baseline a model must beat).")
@click.option("--export", "export_dir", type=click.Path(file_okay=False), default=None,
              help="Instead of a model: run this ONNX export (expertsim export) through the "
                   "replica of ALICE O2's consumer (classifier, generator at batch 1, "
                   "truncation, O2's pixel order) on the reference's particles.")
@click.option("--against", "against", type=click.Path(file_okay=False), default=None,
              help="With --export: a report folder of the same model's package sampler on the "
                   "same reference; prints and stores the export's agreement with it.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="With --export: ONNX Runtime intra-op threads (O2 uses 1).")
@click.option("--generations", default=3, show_default=True, type=click.IntRange(min=1),
              help="With --model: how many generations (seeds seed, seed+1, ...).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Report folder (metrics.json, PNGs, index.html).")
@click.option("--thresholds", type=click.Path(dir_okay=False), default=None,
              help="JSON or YAML {metric.path: maximum}; exit 3 if any is exceeded.")
@click.option("--split", default="all", show_default=True,
              type=click.Choice(["all", "train", "val", "test"]),
              help="Use only this split of the reference (with --model, --lookup, --export).")
@click.option("--min-photon-sum", type=float, default=None,
              help="Use only reference events with at least this many photons (with --model; "
                   "match the training filter).")
@click.option("--pbpb", "collisions", default=0, show_default=True,
              type=click.IntRange(min=0),
              help="With --model: also compare this many Pb-Pb collisions (Glauber spectators "
                   "summed per collision side) generated against the built-in Monte Carlo.")
@click.option("--mlflow-run", default=None, help="Also log the headline numbers to this run.")
@click.option("--overwrite", is_flag=True,
              help="Replace the report files in OUTPUT if it holds a report already.")
def validate(reference, generated, model_path, lookup_train, export_dir, against, threads,
             generations, seed, output, thresholds, split, min_photon_sum, collisions,
             mlflow_run, overwrite) -> None:
    """Compare generated events with Monte Carlo and write a report.

    \b
    Examples:
      expertsim validate --model runs/smoke/model.pt --reference data/smoke_zn_mc.h5 \
          --min-photon-sum 1 -o report/ --pbpb 300
      expertsim validate --generated gen.h5 --reference mc.h5 -o report/ --thresholds limits.yaml
      expertsim validate --lookup data/smoke_zn.h5 --reference data/smoke_zn_mc.h5 \
          --min-photon-sum 1 -o lookup_report/
      expertsim validate --export runs/smoke/onnx --reference data/smoke_zn_mc.h5 \
          -o o2_report/ --against report_all/
    """
    from expertsim.errors import ConfigError
    from expertsim.fileio import check_output_folder
    from expertsim.validation import (compare_with_package, summary_lines, validate_export,
                                      validate_lookup, validate_model)

    if sum(map(bool, (generated, model_path, lookup_train, export_dir))) != 1:
        raise ConfigError("give one of --generated files, --model, --lookup or --export")
    if collisions and not model_path:
        raise ConfigError("--pbpb generates Pb-Pb collisions with a model: use it with --model")
    if against and not export_dir:
        raise ConfigError("--against compares an export with the package: use it with --export")
    if (split != "all" or min_photon_sum is not None) and generated:
        raise ConfigError("--split and --min-photon-sum select the conditions to generate on: "
                          "use them with --model or --lookup")
    check_output_folder(output, overwrite=overwrite, writes=REPORT_FILES, inputs=(
        reference, *generated, model_path, lookup_train, thresholds, *_folder_inputs(
            export_dir, against)))
    limits = _read_thresholds(thresholds) if thresholds else None
    if mlflow_run:
        _check_mlflow_run(mlflow_run)
    if model_path:
        report = validate_model(model_path, reference, output, generations=generations,
                                seed=seed, split=split, min_photon_sum=min_photon_sum,
                                thresholds=limits, collisions=collisions)
    elif export_dir:
        with tqdm(total=generations * _n_particles(reference, split, min_photon_sum),
                  unit="particle", desc="O2 replica") as bar:
            report = validate_export(export_dir, reference, output, generations=generations,
                                     seed=seed, split=split, min_photon_sum=min_photon_sum,
                                     thresholds=limits, threads=threads, progress=bar.update)
    elif lookup_train:
        report = validate_lookup(lookup_train, reference, output, split=split,
                                 min_photon_sum=min_photon_sum, seed=seed, thresholds=limits)
    else:
        report = _validate_generated(list(generated), reference, output, limits, seed)
    for line in summary_lines(report):
        click.echo(line)
    click.echo(f"report: {output}/index.html")
    agrees = True
    if against:
        agreement = compare_with_package(report, _load_report(against))
        _print_agreement(agreement, output)
        agrees = agreement["passed"]
    if mlflow_run:
        _log_to_mlflow(mlflow_run, report, output)
    _exit_on_failure(report, agrees)


def _exit_on_failure(report: dict, agrees: bool) -> None:
    """Exit 3 when a threshold failed or the export disagrees with the package."""
    if not report["passed"]:
        click.echo("thresholds failed: " + "; ".join(report["failed_thresholds"]), err=True)
    if not (report["passed"] and agrees):
        raise SystemExit(EXIT_THRESHOLDS_FAILED)


def _validate_generated(generated: list[str], reference: str, output: str,
                        limits: dict | None, seed: int) -> dict:
    """The --generated branch, with a progress bar over the events read."""
    from expertsim.validation import validate

    total = sum(_n_particles(path, "all", None) for path in (reference, *generated))
    with tqdm(total=total, unit="ev", desc="features") as bar:
        return validate(generated, reference, output, thresholds=limits, seed=seed,
                        progress=bar.update)


def _folder_inputs(export_dir: str | None, against: str | None) -> list[Path]:
    """The files read from the --export and --against folders (never to be written over)."""
    from expertsim.export import EXPORT_FILES

    return [*((Path(export_dir) / name for name in EXPORT_FILES) if export_dir else ()),
            *((Path(export_dir),) if export_dir else ()),
            *((Path(against) / "metrics.json",) if against else ())]


def _read_thresholds(path: str) -> dict[str, float]:
    """{metric.path: maximum} from a JSON or YAML file; ConfigError naming what is wrong."""
    import math

    import yaml

    from expertsim.errors import ConfigError

    if not Path(path).is_file():
        raise ConfigError(f"--thresholds {path}: no such file")
    try:
        limits = yaml.safe_load(Path(path).read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"--thresholds {path}: not JSON or YAML "
                          f"({str(error).splitlines()[0]})") from None
    if not isinstance(limits, dict) or not limits:
        raise ConfigError(f"--thresholds {path}: write a mapping {{metric.path: maximum}}, "
                          "e.g. 'headline.ws_mean: 2.5'")
    for key, value in limits.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise ConfigError(f"--thresholds {path}: the limit of {key!r} must be a finite "
                              f"number, got {value!r}")
    return limits


def _check_mlflow_run(run_id: str) -> None:
    from expertsim.config import TrackingConfig
    from expertsim.tracking import check_run

    check_run(TrackingConfig().uri, run_id)


def _log_to_mlflow(run_id: str, report: dict, output: str) -> None:
    from expertsim.config import TrackingConfig
    from expertsim.tracking import log_to_run

    log_to_run(TrackingConfig().uri, run_id,
               {"validate/ws_mean": report["headline"]["ws_mean"],
                "validate/classifier_auc": report["classifier_auc"]},
               artifacts=(Path(output) / "metrics.json",))


def _n_particles(reference: str, split: str, min_photon_sum: float | None) -> int:
    from expertsim.eventfile import EventFile

    with EventFile(reference) as events:
        return len(events.rows(split, min_photon_sum))


def _load_report(folder: str) -> dict:
    import json

    from expertsim.errors import DataSchemaError

    path = Path(folder) / "metrics.json"
    if not path.exists():
        raise DataSchemaError(f"{path}: no such report (make it with expertsim validate "
                              f"--model ... -o {folder})")
    return json.loads(path.read_text())


def _print_agreement(agreement: dict, output: str) -> None:
    """The export-vs-package lines, and agreement.json beside the report."""
    import json

    from expertsim.fileio import write_text

    for name, check in agreement["checks"].items():
        extra = (f", {check['standard_errors']:+.2f} standard errors"
                 if "standard_errors" in check else "")
        difference = (f"{check['relative']:+.4f}, tolerance {check['tolerance']}"
                      if check.get("absolute") else
                      f"{check['relative']:+.2%}{extra}; tolerance {check['tolerance']:.0%}")
        click.echo(f"export vs package {name}: {check['export']:.4g} vs {check['package']:.4g}"
                   f" ({difference}): " + ("ok" if check["passed"] else "FAILED"))
    write_text(Path(output) / "agreement.json", json.dumps(agreement, indent=2))
    click.echo("export agrees with the package sampler" if agreement["passed"] else
               "export DISAGREES with the package sampler")


COMMANDS = (validate,)
