"""Data commands: simulate, prepare, inspect."""

from __future__ import annotations

import json

import click
from tqdm import tqdm

from expertsim.detector import DETECTORS

DETECTOR_CHOICES = [name.lower() for name in DETECTORS]


def _split_option(function):
    def parse(_ctx, _param, value: str) -> tuple[float, float, float]:
        try:
            fractions = tuple(float(v) for v in value.split(","))
        except ValueError:
            raise click.BadParameter(f"{value!r}: give three numbers like 0.7,0.1,0.2") from None
        if len(fractions) != 3:
            raise click.BadParameter(f"{value!r}: give three numbers like 0.7,0.1,0.2")
        return fractions

    return click.option(
        "--split", "split_fractions", default="0.7,0.1,0.2", show_default=True, callback=parse,
        help="Train, validation and test fractions; repeats of a condition share a split.",
    )(function)


_seed_option = click.option("--seed", default=0, show_default=True, type=int,
                            help="Random seed (recorded in the file).")
_output_option = click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
                              help="Event file to write (HDF5); never one of the inputs.")
_overwrite_option = click.option("--overwrite", is_flag=True,
                                 help="Replace the output file if it exists.")


def _check_output(output: str, *inputs: str | None, overwrite: bool) -> None:
    from expertsim.fileio import check_output

    check_output(output, inputs=inputs, overwrite=overwrite)


@click.command()
@click.option("--detector", required=True, type=click.Choice(DETECTOR_CHOICES, case_sensitive=False),
              help="Calorimeter: zn (neutron, 44x44) or zp (proton, 56x30).")
@click.option("-n", "--n-events", required=True, type=click.IntRange(min=1),
              help="Number of events (responses) to simulate.")
@_output_option
@_seed_option
@click.option("--repeat", default=1, show_default=True, type=click.IntRange(min=1),
              help="Simulate each particle this many times (gives the per-condition spread).")
@_split_option
@_overwrite_option
def simulate(detector: str, n_events: int, output: str, seed: int, repeat: int,
             split_fractions: tuple[float, float, float], overwrite: bool) -> None:
    """Simulate ZDC responses with the built-in parametric Monte Carlo.

    \b
    Example:
      expertsim simulate --detector zn -n 100000 -o zn.h5 --seed 1
      expertsim simulate --detector zp -n 20000 --repeat 5 -o zp_rep.h5
    """
    from expertsim.simulate import simulate_to_file

    _check_output(output, overwrite=overwrite)
    with tqdm(total=n_events, unit="ev", desc=f"simulate {detector.upper()}") as bar:
        simulate_to_file(output, detector, n_events, seed=seed, repeat=repeat,
                         split_fractions=split_fractions, progress=bar.update)
    click.echo(f"wrote {n_events} {detector.upper()} events to {output}")


@click.group()
def prepare() -> None:
    """Convert Monte Carlo outputs you already have into an event file.

    \b
    Examples:
      expertsim prepare npz-pair data_nonrandom_responses.npz data_nonrandom_particles.npz -o zn.h5
      expertsim prepare npz my_events.npz -o zp.h5
      expertsim prepare pickle --images imgs.pkl --conditions conds.pkl --trust-pickle -o zp.h5
      expertsim prepare h5 raw.h5 -o full.h5
    """


_detector_hint = click.option(
    "--detector", type=click.Choice(DETECTOR_CHOICES, case_sensitive=False), default=None,
    help="Expected detector; the image shape must match it (default: from the shape).")


@prepare.command("npz-pair")
@click.argument("responses", type=click.Path(dir_okay=False))
@click.argument("particles", type=click.Path(dir_okay=False))
@_output_option
@_detector_hint
@_seed_option
@_split_option
@_overwrite_option
def prepare_npz_pair(responses, particles, output, detector, seed, split_fractions,
                     overwrite) -> None:
    """The flow-matching pair: RESPONSES (arr_0: N x H x W) and PARTICLES (arr_0: N x 10).

    \b
    Example:
      expertsim prepare npz-pair data_nonrandom_responses.npz data_nonrandom_particles.npz -o zn.h5
    """
    from expertsim.convert import from_npz_pair

    _check_output(output, responses, particles, overwrite=overwrite)
    from_npz_pair(responses, particles, output, detector=detector, seed=seed,
                  split_fractions=split_fractions)
    click.echo(f"wrote {output}")


@prepare.command("npz")
@click.argument("path", type=click.Path(dir_okay=False))
@_output_option
@_detector_hint
@_seed_option
@_split_option
@_overwrite_option
def prepare_npz(path, output, detector, seed, split_fractions, overwrite) -> None:
    """A generic npz holding 'images' (N, H, W), 'conditions' (N, 9) and optionally 'pdg' (N,).

    \b
    Example:
      expertsim prepare npz my_events.npz -o events.h5
    """
    from expertsim.convert import from_npz

    _check_output(output, path, overwrite=overwrite)
    from_npz(path, output, detector=detector, seed=seed, split_fractions=split_fractions)
    click.echo(f"wrote {output}")


@prepare.command("pickle")
@click.option("--images", required=True, type=click.Path(dir_okay=False),
              help="Pickle of the image array.")
@click.option("--conditions", required=True, type=click.Path(dir_okay=False),
              help="Pickle of the conditions DataFrame (Energy, Vx, Vy, Vz, Px, Py, Pz, mass, "
                   "charge).")
@click.option("--positions", type=click.Path(dir_okay=False), default=None,
              help="Optional pickle of the positions DataFrame (max_x, max_y); length-checked.")
@click.option("--trust-pickle", is_flag=True,
              help="Required: unpickling executes code stored in the file, so only do it for "
                   "files from a source you trust.")
@_output_option
@_detector_hint
@_seed_option
@_split_option
@_overwrite_option
def prepare_pickle(images, conditions, positions, trust_pickle, output, detector, seed,
                   split_fractions, overwrite) -> None:
    """The ExpertSim / SDI-GAN pandas pickles (needs --trust-pickle and pandas).

    A pickle is a program, not data: loading one runs whatever it contains. This command
    refuses to load pickles unless you pass --trust-pickle for files you trust.

    \b
    Example:
      expertsim prepare pickle --images data_proton_photonsum_proton_1_2312.pkl \\
          --conditions data_proton_photonsum_proton_1_2312_cond.pkl --trust-pickle -o zp.h5
    """
    from expertsim.convert import from_pickle_trio

    _check_output(output, images, conditions, positions, overwrite=overwrite)
    from_pickle_trio(images, conditions, output, positions=positions, trust_pickle=trust_pickle,
                     detector=detector, seed=seed, split_fractions=split_fractions)
    click.echo(f"wrote {output}")


@prepare.command("h5")
@click.argument("path", type=click.Path(dir_okay=False))
@_output_option
@_seed_option
@_split_option
@_overwrite_option
def prepare_h5(path, output, seed, split_fractions, overwrite) -> None:
    """An HDF5 file with at least /images and /conditions: re-derive everything else.

    \b
    Example:
      expertsim prepare h5 raw.h5 -o events.h5 --split 0.8,0.1,0.1
    """
    from expertsim.convert import from_event_h5

    _check_output(output, path, overwrite=overwrite)
    from_event_h5(path, output, seed=seed, split_fractions=split_fractions)
    click.echo(f"wrote {output}")


def _format_summary(summary: dict) -> str:
    lines = [
        f"file              {summary['file']}",
        f"detector          {summary['detector']} {tuple(summary['image_shape'])}",
        f"events            {summary['n_events']}  (split {summary['split_counts']})",
        f"empty events      {summary['fraction_empty']:.2%}",
        f"zero fibres       {summary['fraction_zero_fibres']:.2%}",
        "photon sum (non-empty) quantiles: " + "  ".join(
            f"{k}={v:.0f}" for k, v in summary["photon_sum_quantiles_non_empty"].items()),
        "intensity group edges: " + ", ".join(f"{t:.0f}" for t in summary["intensity_thresholds"]),
        "conditions:",
    ]
    for name, stats in summary["conditions"].items():
        lines.append(f"  {name:<16} min {stats['min']:>12.5g}  mean {stats['mean']:>12.5g}  "
                     f"max {stats['max']:>12.5g}")
    provenance = summary["provenance"]
    lines.append(f"made by           {provenance.get('made_by')} (expertsim "
                 f"{provenance.get('version')}, seed {provenance.get('seed')}, "
                 f"{provenance.get('created_utc')})")
    return "\n".join(lines)


@click.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Save example images and channel histograms to this PNG.")
@click.option("--overwrite", is_flag=True, help="Replace the --plot file if it exists.")
def inspect(path: str, as_json: bool, plot: str | None, overwrite: bool) -> None:
    """Summarise an event file: detector, N, condition ranges, photon sums, empties.

    \b
    Example:
      expertsim inspect zn.h5 --plot zn.png
    """
    from expertsim.eventfile import summarize
    from expertsim.fileio import check_output
    from expertsim.plots import plot_event_file

    if plot:
        check_output(plot, inputs=(path,), overwrite=overwrite, option="--plot")
    summary = summarize(path)
    click.echo(json.dumps(summary, indent=2) if as_json else _format_summary(summary))
    if plot:
        plot_event_file(path, plot)
        click.echo(f"plot saved to {plot}")


COMMANDS = (simulate, prepare, inspect)
