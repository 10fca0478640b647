"""The train command."""

from __future__ import annotations

import click
from tqdm import tqdm

# Exit status of a run stopped by SIGTERM / SIGUSR1 after saving its checkpoint (EX_TEMPFAIL:
# "try again"); the SLURM scripts requeue on it.
EXIT_PREEMPTED = 75


@click.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="YAML config (see training/).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set train.epochs=5 (repeatable).")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Continue from OUTPUT_DIR/checkpoint_last.pt when it exists.")
def train(config_path: str, overrides: tuple[str, ...], resume: bool) -> None:
    """Train a Mixture-of-Generative-Experts model.

    Writes OUTPUT_DIR/model.pt (best validation channel-WS), checkpoint_best.pt and
    checkpoint_last.pt, and logs to MLflow. SIGTERM or SIGUSR1 makes it save a checkpoint and
    exit with status 75; run it again (same command) to continue where it stopped.

    \b
    Examples:
      expertsim train --config training/smoke.yaml
      expertsim train --config training/zn.yaml --set train.epochs=20 --set model.n_experts=1
      torchrun --nproc_per_node 2 -m expertsim train --config training/zn.yaml
    """
    from expertsim.config import load_config
    from expertsim.runner import train_run

    config = load_config(config_path, list(overrides))
    result = train_run(
        config, resume=resume, log=click.echo,
        progress=lambda total, done: tqdm(total=total, initial=done, unit="step",
                                          desc=config.name),
        data_progress=lambda n: tqdm(total=n, unit="ev",
                                     desc=f"simulate {config.data.simulate.detector.upper()}"))
    if result.rank == 0:
        untrained = "n/a" if result.untrained_ws is None else f"{result.untrained_ws:.3f}"
        click.echo(
            f"{result.status} at epoch {result.epoch}, step {result.step}; validation channel-WS: "
            f"untrained {untrained}, best {result.best_ws:.3f}, mean-image baseline "
            f"{result.mean_image_ws:.3f} photons\n"
            f"model: {result.output_dir / 'model.pt'}  MLflow run: {result.run_id} "
            f"({config.tracking.uri if config.tracking.enabled else 'tracking off'})")
    if result.status == "preempted":
        raise SystemExit(EXIT_PREEMPTED)


COMMANDS = (train,)
