"""The ``expertsim`` command: one click group, one module per command group."""

from __future__ import annotations

import click

from expertsim import __version__
from expertsim.errors import ExpertSimError


class _Group(click.Group):
    """Turns the package's own errors into a one-line message and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ExpertSimError as error:
            click.echo(f"Error: {error}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="expertsim")
def main() -> None:
    """ExpertSim: fast generative simulation of the ALICE Zero Degree Calorimeters.

    \b
    Typical flow:
      expertsim simulate --detector zn -n 100000 -o zn.h5
      expertsim inspect zn.h5 --plot zn.png
      expertsim train --config training/smoke.yaml
      expertsim sample --model runs/smoke/model.pt --conditions data/smoke_zn.h5 -o gen.h5
      expertsim validate --model runs/smoke/model.pt --reference mc.h5 -o report/
      expertsim export --model runs/smoke/model.pt --format onnx -o export/
    """


def _register() -> None:
    from expertsim.cli import data, export, sample, study, train, validate

    for command in (*data.COMMANDS, *train.COMMANDS, *sample.COMMANDS, *validate.COMMANDS,
                    *export.COMMANDS, *study.COMMANDS):
        main.add_command(command)


_register()
