"""Export command: a trained model for production runtimes (ALICE O2 through ONNX Runtime)."""

from __future__ import annotations

import click


@click.command()
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="Model file written by expertsim train (model.pt).")
@click.option("--format", "export_format", type=click.Choice(["onnx"]), default="onnx",
              show_default=True, help="Export format.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Directory for model.onnx, scales.txt and model.json.")
@click.option("--opset", default=17, show_default=True, type=click.IntRange(13, 21),
              help="ONNX opset.")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Run the export in ONNX Runtime against PyTorch before writing it.")
@click.option("--check-events", default=1000, show_default=True, type=click.IntRange(min=1),
              help="Random conditions in the check.")
@click.option("--check-seed", default=0, show_default=True, type=int,
              help="Seed of the check's conditions and noise.")
def export(model_path, export_format, output, opset, check, check_events, check_seed) -> None:
    """Export a trained model in the ALICE O2 fast-simulation ONNX contract.

    Input 0 noise (batch, 10), input 1 scaled conditions (batch, 9), output 0 the image in
    log(1 + photons) (batch, H, W); dynamic batch; float32. The scales file uses O2's
    #means / #scales text format. The check compares ONNX Runtime with PyTorch and the
    O2-style channel sums with the package's own; a failed check writes nothing (exit 2).

    \b
    Example:
      expertsim export --model runs/zn_cpu/model.pt --format onnx -o export/zn
    """
    from expertsim.export import export_onnx

    directory, result = export_onnx(model_path, output, opset=opset, check=check,
                                    check_events=check_events, seed=check_seed)
    click.echo(f"wrote {directory}/model.onnx, scales.txt, model.json (opset {opset})")
    if result is not None:
        click.echo(f"check on {result.n_events} random conditions: max |ONNX - PyTorch| "
                   f"{result.max_abs_log_difference:.2e} in log(1+photons) (tolerance "
                   f"{result.log_tolerance:g}); O2-style channels vs package "
                   f"{result.max_channel_relative_difference:.2e} relative (tolerance "
                   f"{result.channel_tolerance:g}); mean expected photons per event "
                   f"{result.mean_photon_sum:.1f}; events per expert "
                   f"{result.events_per_expert}: passed")


COMMANDS = (export,)
