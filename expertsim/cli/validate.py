"""The validate command."""

from __future__ import annotations

from pathlib import Path

import click

EXIT_THRESHOLDS_FAILED = 3


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
@click.option("--generations", default=3, show_default=True, type=click.IntRange(min=1),
              help="With --model: how many generations (seeds seed, seed+1, ...).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Report folder (metrics.json, PNGs, index.html).")
@click.option("--thresholds", type=click.Path(dir_okay=False), default=None,
              help="JSON or YAML {metric.path: maximum}; exit 3 if any is exceeded.")
@click.option("--split", default="all", show_default=True,
              type=click.Choice(["all", "train", "val", "test"]),
              help="Use only this split of the reference (with --model).")
@click.option("--min-photon-sum", type=float, default=None,
              help="Use only reference events with at least this many photons (with --model; "
                   "match the training filter).")
@click.option("--mlflow-run", default=None, help="Also log the headline numbers to this run.")
def validate(reference, generated, model_path, lookup_train, generations, seed, output,
             thresholds, split, min_photon_sum, mlflow_run) -> None:
    """Compare generated events with Monte Carlo and write a report.

    \b
    Examples:
      expertsim validate --model runs/smoke/model.pt --reference data/smoke_zn_mc.h5 \
          --min-photon-sum 1 -o report/
      expertsim validate --generated gen.h5 --reference mc.h5 -o report/ --thresholds limits.yaml
      expertsim validate --lookup data/smoke_zn.h5 --reference data/smoke_zn_mc.h5 \
          --min-photon-sum 1 -o lookup_report/
    """
    import yaml

    from expertsim.errors import ConfigError
    from expertsim.validation import (summary_lines, validate as run_validation,
                                      validate_lookup, validate_model)

    if sum(map(bool, (generated, model_path, lookup_train))) != 1:
        raise ConfigError("give one of --generated files, --model or --lookup")
    if (split != "all" or min_photon_sum is not None) and generated:
        raise ConfigError("--split and --min-photon-sum select the conditions to generate on: "
                          "use them with --model or --lookup")
    limits = yaml.safe_load(Path(thresholds).read_text()) if thresholds else None
    if model_path:
        report = validate_model(model_path, reference, output, generations=generations,
                                seed=seed, split=split, min_photon_sum=min_photon_sum,
                                thresholds=limits)
    elif lookup_train:
        report = validate_lookup(lookup_train, reference, output, split=split,
                                 min_photon_sum=min_photon_sum, seed=seed, thresholds=limits)
    else:
        report = run_validation(list(generated), reference, output, thresholds=limits,
                                seed=seed)
    for line in summary_lines(report):
        click.echo(line)
    click.echo(f"report: {output}/index.html")
    headline = report["headline"]
    if mlflow_run:
        from expertsim.config import TrackingConfig
        from expertsim.tracking import log_to_run

        log_to_run(TrackingConfig().uri, mlflow_run,
                   {"validate/ws_mean": headline["ws_mean"],
                    "validate/classifier_auc": report["classifier_auc"]},
                   artifacts=(Path(output) / "metrics.json",))
    if not report["passed"]:
        click.echo("thresholds failed: " + "; ".join(report["failed_thresholds"]), err=True)
        raise SystemExit(EXIT_THRESHOLDS_FAILED)


COMMANDS = (validate,)
