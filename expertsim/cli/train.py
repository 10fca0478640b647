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
@click.option("--resume-changed", is_flag=True,
              help="Resume even though settings (other than run length, logging, device, "
                   "threads and paths) or the training events differ from the checkpoint's; "
                   "refused without it.")
@click.option("--overwrite", is_flag=True,
              help="Replace the model and checkpoints of another run in OUTPUT_DIR (refused "
                   "without it, unless the run resumes them).")
def train(config_path: str, overrides: tuple[str, ...], resume: bool, resume_changed: bool,
          overwrite: bool) -> None:
    """Train a Mixture-of-Generative-Experts model.

    Writes OUTPUT_DIR/model.pt (best validation channel-WS), checkpoint_best.pt and
    checkpoint_last.pt, and logs to MLflow. SIGTERM or SIGUSR1 makes it save a checkpoint and
    exit with status 75; run it again (same command) to continue where it stopped. One
    training at a time per OUTPUT_DIR (OUTPUT_DIR/train.lock names the holder). A NaN or
    infinite loss stops the run with an error naming the step and the term (exit 2).

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
        config, resume=resume, overwrite=overwrite, resume_changed=resume_changed,
        log=click.echo,
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
        click.echo(gate_summary(result.gate_report))
    if result.status == "preempted":
        raise SystemExit(EXIT_PREEMPTED)


def gate_summary(report: dict | None) -> str:
    """One line on the empty-response gate a training run made."""
    if not report or not report.get("trained"):
        reason = (report or {}).get("reason", "not trained")
        return f"empty-response gate: none ({reason}); every particle goes to the generators"
    val = report.get("val") or report["train"]
    where = "validation" if report.get("val") else "train"
    return (f"empty-response gate ({where} split, {val['n']} events): empty fraction "
            f"{val['empty_fraction']:.3f}, predicted {val['predicted_empty_fraction']:.3f}; "
            f"accuracy {val['accuracy_drawn']:.3f} drawn, {val['accuracy_threshold']:.3f} "
            f"at p = 0.5; false-empty {val['false_empty']:.3f}, false-non-empty "
            f"{val['false_non_empty']:.3f}")


@click.command("gate")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="Model file written by expertsim train (model.pt).")
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False),
              help="Event file whose train split (every event, empty ones included) trains "
                   "the gate; the model's detector.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Model file to write: the model with the gate (not the input file).")
@click.option("--steps", default=5000, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=2048, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=3e-3, show_default=True, type=click.FloatRange(min=0,
                                                                             min_open=True))
@click.option("--hidden", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
def gate(model_path, data_path, output, steps, batch_size, lr, hidden, seed,
         overwrite) -> None:
    """Train the empty-response gate for an existing model and write the gated model.

    expertsim train trains one already (section gate: of the config); this adds or replaces
    it for a model file, e.g. one trained with gate.enabled: false.

    \b
    Example:
      expertsim gate --model runs/zp/model.pt --data data/zp.h5 -o runs/zp/model_gated.pt
    """
    from expertsim.fileio import check_output
    from expertsim.gate import add_gate

    check_output(output, inputs=(model_path, data_path), overwrite=overwrite)
    report = add_gate(model_path, data_path, output, steps=steps, batch_size=batch_size,
                      lr=lr, hidden=hidden, seed=seed)
    click.echo(f"wrote {output}")
    click.echo(gate_summary(report))


@click.command("distill")
@click.option("--teacher", "teacher_path", required=True, type=click.Path(dir_okay=False),
              help="Trained model file to distil (model.pt).")
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False),
              help="Event file whose train-split conditions (events with light) the student "
                   "learns on; the teacher's detector.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Model file to write: the student (not the teacher's file).")
@click.option("--channels", default=8, show_default=True, type=click.IntRange(min=2),
              help="Student generator channels (even; the study's models have 16).")
@click.option("--steps", default=3000, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=1e-3, show_default=True, type=click.FloatRange(min=0,
                                                                             min_open=True))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
def distill(teacher_path, data_path, output, channels, steps, batch_size, lr, seed,
            overwrite) -> None:
    """Train a lighter one-expert generator to draw what a trained model draws.

    The student regresses on the teacher's images for the same noise and conditions; it
    keeps the teacher's gate and scaler. Judge it like any model (expertsim validate).

    \b
    Example:
      expertsim distill --teacher runs/zn/model.pt --data data/zn.h5 --channels 8 \
          -o runs/zn/student8.pt
    """
    from tqdm import tqdm

    from expertsim.distill import distill as run_distillation
    from expertsim.fileio import check_output

    check_output(output, inputs=(teacher_path, data_path), overwrite=overwrite)
    with tqdm(total=steps, unit="step", desc="distill") as bar:
        def progress(n: int, loss: float) -> None:
            bar.update(n)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

        report = run_distillation(teacher_path, data_path, output, channels=channels,
                                  steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                                  progress=progress)
    click.echo(f"wrote {output}: {report['student_parameters']:,} parameters (teacher "
               f"{report['teacher_parameters']:,}); loss {report['loss_first']:.4f} -> "
               f"{report['loss_last']:.4f} in {report['seconds']:.0f} s; median student / "
               f"teacher photon sum {report['photon_sum_ratio_median']:.3f}")


COMMANDS = (train, gate, distill)
