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
@click.option("--overwrite", is_flag=True,
              help="Replace the export files in OUTPUT if it holds an export already.")
def export(model_path, export_format, output, opset, check, check_events, check_seed,
           overwrite) -> None:
    """Export a trained model for ALICE O2's ZDC fast simulation, as O2 consumes it.

    The generator (model.onnx: noise (batch, 10) and scaled conditions (batch, 9) in; photon
    counts drawn in the graph out, encoded so that O2's (int)expm1(pixel) gives them exactly,
    in O2's flat pixel order), the empty-response gate as O2's classifier (classifier.onnx),
    both scales files and model.json (the O2 settings to use and every convention). The
    check runs both in ONNX Runtime against PyTorch; a failed check writes nothing (exit 2).

    \b
    Example:
      expertsim export --model runs/zn_cpu/model.pt --format onnx -o export/zn
    """
    from expertsim.export import EXPORT_FILES, describe_check, export_onnx
    from expertsim.fileio import check_output_folder

    check_output_folder(output, inputs=(model_path,), writes=EXPORT_FILES, overwrite=overwrite)
    directory, result = export_onnx(model_path, output, opset=opset, check=check,
                                    check_events=check_events, seed=check_seed)
    click.echo(f"wrote {directory}: model.onnx, scales.txt, classifier.onnx, "
               f"classifier_scales.txt, model.json (opset {opset})")
    if result is not None:
        click.echo(f"check on {result.n_events} random conditions in ONNX Runtime: "
                   f"{describe_check(result)}; mean expected photons per event "
                   f"{result.mean_photon_sum:.1f}; events per expert "
                   f"{result.events_per_expert}: passed")


COMMANDS = (export,)
