"""Sampling commands: sample, merge."""

from __future__ import annotations

import click
from tqdm import tqdm


@click.command()
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="Model file written by expertsim train (model.pt).")
@click.option("--conditions", "conditions_path", required=True, type=click.Path(dir_okay=False),
              help="Event file (.h5), .npz (key 'conditions') or .csv with the nine columns.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Event file to write (counts space).")
@click.option("--seed", default=0, show_default=True, type=int, help="Noise seed (recorded).")
@click.option("--repeat", default=1, show_default=True, type=click.IntRange(min=1),
              help="Responses per condition.")
@click.option("--shard", "shard_text", default="0/1", show_default=True, metavar="I/N",
              help="Generate only shard I (0-based) of N contiguous condition ranges.")
@click.option("--batch-size", default=4096, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="auto", show_default=True,
              help="auto (CUDA if present), cpu or cuda[:N].")
@click.option("--gate/--no-gate", default=None,
              help="Run the model's empty-response gate first (default: when the model has "
                   "one): particles it stops are written as empty events at the gate's cost "
                   "only. --no-gate gives every particle a response with light.")
@click.option("--workers", default=None, type=click.IntRange(min=1),
              help="Worker threads on a CPU, each running whole batches with single-threaded "
                   "kernels (default: the cores this job was given: its CPU affinity mask, "
                   "capped by SLURM_CPUS_PER_TASK and OMP_NUM_THREADS). The events do not "
                   "depend on it.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="PyTorch CPU threads inside each kernel, with --workers 1. They wait for "
                   "each other at every operator, so they lose to workers on a node shared "
                   "with other jobs.")
@click.option("--precision", default="float32", show_default=True,
              type=click.Choice(["float32", "bfloat16"]),
              help="The experts' arithmetic: bfloat16 is ~1.5x faster on CPUs with bf16 "
                   "instructions (README, Speed, for its fidelity); the router, gate and "
                   "counting stay float32.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
def sample(model_path, conditions_path, output, seed, repeat, shard_text, batch_size,
           device, gate, workers, threads, precision, overwrite) -> None:
    """Generate events for the given conditions with a trained model.

    Shards of one run (same model, seed, repeat) hold exactly the rows of the unsharded run;
    join them with `expertsim merge`.

    \b
    Examples:
      expertsim sample --model runs/smoke/model.pt --conditions data/smoke_zn.h5 -o gen.h5
      expertsim sample --model model.pt --conditions particles.csv --repeat 5 -o gen.h5
      expertsim sample --model model.pt --conditions mc.h5 --shard 3/10 -o gen_3.h5
    """
    import torch

    from expertsim.devices import select_device
    from expertsim.fileio import check_output
    from expertsim.sampling import (Shard, available_cores, describe, read_conditions,
                                    sample_to_file)

    check_output(output, inputs=(model_path, conditions_path), overwrite=overwrite)
    torch.set_num_threads(threads)
    shard = Shard.parse(shard_text)
    first, stop = shard.bounds(len(read_conditions(conditions_path)[0]))
    n_rows = (stop - first) * repeat
    if workers is None:
        workers = available_cores()
    with tqdm(total=n_rows, unit="ev", desc="sample") as bar:
        sample_to_file(model_path, conditions_path, output, seed=seed, repeat=repeat,
                       shard=shard, batch_size=batch_size, workers=workers, precision=precision,
                       device=str(select_device(device)), gate=gate, progress=bar.update)
    click.echo(f"wrote {output}: {describe(output)}")


@click.command()
@click.argument("shards", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Merged event file to write (never one of the shards).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
def merge(shards, output, overwrite) -> None:
    """Join the shard files of one sampling run into one event file.

    Refuses shards of different models, detectors, seeds or runs, and missing shards.

    \b
    Example:
      expertsim merge gen_0.h5 gen_1.h5 gen_2.h5 -o gen.h5
    """
    from expertsim.fileio import check_output
    from expertsim.sampling import describe, merge_shards

    check_output(output, inputs=shards, overwrite=overwrite)
    with tqdm(unit="ev", desc="merge") as bar:
        merge_shards(list(shards), output, progress=bar.update)
    click.echo(f"wrote {output}: {describe(output)}")


COMMANDS = (sample, merge)
