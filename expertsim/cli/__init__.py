"""The ``expertsim`` command: one click group, one module per command group."""

from __future__ import annotations

import signal
import sys
import threading
import warnings

import click

from expertsim import __version__
from expertsim.errors import ExpertSimError
from expertsim.fileio import unprotect_all

EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(BaseException):
    """SIGTERM arrived: unwinds the command so that its temporary files are removed."""


def _terminate(signum, _frame):
    raise Terminated(signum)


def _unraisable(info) -> None:
    """A Terminated raised where Python cannot propagate it (a weakref callback, a __del__)
    would be printed and dropped (seen: sampling went on after SIGTERM): raise it again 50 ms
    later from an alarm, which lands at an ordinary line (re-armed if dropped again)."""
    if isinstance(info.exc_value, Terminated):
        signal.signal(signal.SIGALRM, _terminate)
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        return
    sys.__unraisablehook__(info)


_SHOWN: set[str] = set()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """The package's warnings (a small sample, conditions outside the training range) as one
    line each, like its errors, and each once per command (a validation generating three times
    would repeat them)."""
    if str(message) not in _SHOWN:
        _SHOWN.add(str(message))
        click.echo(f"Warning: {message}", err=True)


class _Group(click.Group):
    """Turns the package's own errors, and the operating system's refusals (a file that
    cannot be read or written), into a one-line message and exit code 2; makes SIGTERM unwind
    the command (temporary files deleted) and exit 143. Training replaces the SIGTERM handler
    with its own while it runs (checkpoint, then exit 75)."""

    def invoke(self, ctx: click.Context):
        previous, shown, unraisable = None, warnings.showwarning, sys.unraisablehook
        warnings.showwarning, sys.unraisablehook = _show_warning, _unraisable
        _SHOWN.clear()
        unprotect_all()
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            return super().invoke(ctx)
        except ExpertSimError as error:
            click.echo(f"Error: {error}", err=True)
            ctx.exit(2)
        except OSError as error:
            where = f"{error.filename}: " if error.filename else ""
            click.echo(f"Error: {where}{error.strerror or error}", err=True)
            ctx.exit(2)
        except Terminated:
            click.echo("Error: terminated (SIGTERM); nothing was left half-written", err=True)
            ctx.exit(EXIT_TERMINATED)
        finally:
            warnings.showwarning, sys.unraisablehook = shown, unraisable
            unprotect_all()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


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
