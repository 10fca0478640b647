"""The train command."""

from __future__ import annotations

import signal
from pathlib import Path

import click
from tqdm import tqdm

# Exit status of a run stopped by SIGTERM / SIGUSR1 after saving its checkpoint (EX_TEMPFAIL:
# "try again"); the SLURM scripts requeue on it.
EXIT_PREEMPTED = 75


def ensure_data(config, is_main: bool) -> None:
    """Simulate the built-in data named by data.simulate if the data file is missing."""
    from expertsim.errors import ConfigError
    from expertsim.simulate import simulate_to_file

    path, spec = Path(config.data.path), config.data.simulate
    if path.exists():
        return
    if spec is None:
        raise ConfigError(f"{path}: no such data file (and no data.simulate section to make it)")
    if is_main:
        with tqdm(total=spec.n_events, unit="ev", desc=f"simulate {spec.detector.upper()}") as bar:
            simulate_to_file(path, spec.detector, spec.n_events, seed=spec.seed,
                             repeat=spec.repeat, progress=bar.update)


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
    import torch.distributed as dist

    from expertsim.config import load_config
    from expertsim.distributed import init_from_environment, shutdown
    from expertsim.tracking import make_tracker
    from expertsim.trainer import Trainer, select_device

    config = load_config(config_path, list(overrides))
    context = init_from_environment(select_device(config.train.device).type)
    try:
        ensure_data(config, context.is_main)
        if context.enabled:
            dist.barrier()
        tracking = config.tracking
        tracker = make_tracker(tracking.enabled, tracking.uri, tracking.experiment,
                               tracking.run_name or config.name, context.rank)
        trainer = Trainer(config, context=context, tracker=tracker)
        last = Path(config.train.output_dir) / "checkpoint_last.pt"
        if resume and last.exists():
            trainer.resume_from(last)
            if context.is_main:
                click.echo(f"resuming from {last} at epoch {trainer.epoch}, step {trainer.step}")
        for signum in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(signum, lambda *_: trainer.request_stop())

        total = config.train.max_steps or config.train.epochs * len(trainer.loader)
        try:
            with tqdm(total=total, initial=trainer.step, unit="step", desc=config.name,
                      disable=not context.is_main) as bar:
                result = trainer.fit(progress=lambda t: bar.update(1))
        except BaseException:
            tracker.finish("FAILED")
            raise
        tracker.finish("KILLED" if result.status == "preempted" else "FINISHED")
    finally:
        shutdown(context)
    if context.is_main:
        untrained = "n/a" if trainer.untrained_ws is None else f"{trainer.untrained_ws:.3f}"
        click.echo(
            f"{result.status} at epoch {result.epoch}, step {result.step}; validation channel-WS: "
            f"untrained {untrained}, best {result.best_ws:.3f}, mean-image baseline "
            f"{trainer.mean_image_ws:.3f} photons\n"
            f"model: {result.output_dir / 'model.pt'}  MLflow run: {result.run_id} "
            f"({config.tracking.uri if config.tracking.enabled else 'tracking off'})")
    if result.status == "preempted":
        raise SystemExit(EXIT_PREEMPTED)


COMMANDS = (train,)
