"""The study command: the comparison table of ExpertSim against its baselines."""

from __future__ import annotations

import click
from tqdm import tqdm


@click.command()
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="Event file every model trains on and is tested on (its test split).")
@click.option("--configs", required=True, multiple=True, type=click.Path(exists=True),
              help="Training config, one per model, or a folder of them (repeatable; e.g. "
                   "training/study).")
@click.option("--seeds", default=3, show_default=True, type=click.IntRange(min=1),
              help="Training seeds 0..N-1 per config.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Study folder (runs, table.md, study.json, plots).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a value in every config, e.g. --set train.epochs=10.")
@click.option("--generations", default=3, show_default=True, type=click.IntRange(min=1),
              help="Generations per validation (their spread is reported too).")
@click.option("--heldout", type=click.Path(exists=True, dir_okay=False),
              help="Independent Monte Carlo event file: validate every model and the lookup "
                   "table on its events with light too (a second table; reused when done).")
def study(data, configs, seeds, output, overrides, generations, heldout) -> None:
    """Train, validate and tabulate several models on one event file.

    Each config is trained with seeds 0..N-1 on DATA's train split and validated on its test
    split; the table (table.md, study.json) gives the channel-WS mean +- std over seeds,
    per-channel WS, classifier AUC, the MC floor (when DATA repeats conditions), sampling
    speed, parameters and MLflow runs. Run the same command again after an interruption:
    finished runs are reused, the rest are trained (deterministically: the same numbers).
    SIGTERM or SIGUSR1 makes the training in progress save a checkpoint (exit status 75);
    the rerun resumes it.

    \b
    Example:
      expertsim simulate --detector zn -n 24000 --repeat 2 -o data/study_zn.h5
      expertsim study --data data/study_zn.h5 --configs training/study --seeds 3 \\
          -o studies/zn
    """
    import signal

    from expertsim.cli.train import EXIT_PREEMPTED
    from expertsim.study import StudyStopped, run_study

    try:
        result = run_study(data, list(configs), output, seeds=seeds, overrides=list(overrides),
                           generations=generations, log=click.echo,
                           progress_factory=lambda total, name: tqdm(
                               total=total, unit="step", desc=name, leave=False),
                           stop_signals=(signal.SIGTERM, signal.SIGUSR1), heldout=heldout)
    except StudyStopped as stopped:
        click.echo(str(stopped), err=True)
        raise SystemExit(EXIT_PREEMPTED) from None
    from pathlib import Path

    click.echo(Path(output, "table.md").read_text())
    click.echo(f"study: {output}/study.json, table.md, channels_overlay.png "
               f"({len(result['rows'])} models)")


COMMANDS = (study,)
