"""Training throughput of the batched experts against a per-expert Python loop.

Same model, same data, same losses; only the expert dispatch differs (expertsim.models.layers):
  gather  each event gathers its expert's weights, one grouped convolution (the default)
  dense   every expert on every event, routed output selected (E x FLOPs, static shapes)
  loop    Python loop over experts on boolean-selected subsets (the reference implementations)

    python benchmarks/train_throughput.py --data data/smoke_zn.h5 -o benchmarks/train_throughput.json

Prints a table and writes JSON: events per second (median over repeats) and the ratio to
the loop, per device (CPU here, and CUDA when present).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from expertsim import __version__
from expertsim.config import config_from_dict
from expertsim.trainer import Trainer


def measure(data: str, device: str, dispatch: str, batch_size: int, steps: int, repeats: int,
            channels: int, threads: int | None) -> float:
    config = config_from_dict({
        "data": {"path": data, "batch_size": batch_size, "min_photon_sum": 1,
                 "val_max_events": 200},
        "model": {"n_experts": 3, "generator_channels": channels,
                  "discriminator_channels": channels // 2, "dispatch": dispatch},
        "train": {"device": device, "threads": threads, "seed": 0},
        "tracking": {"enabled": False},
    })
    trainer = Trainer(config)
    batches = []
    for batch in trainer.loader:
        batches.append(batch)
        if len(batches) == steps + 2:
            break
    for batch in batches[:2]:  # warm-up
        trainer.train_step(batch)
    rates = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for batch in batches[2:]:
            trainer.train_step(batch)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        rates.append(steps * batch_size / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("-o", "--output", default="benchmarks/train_throughput.json")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = []
    for device in devices:
        rates = {mode: measure(args.data, device, mode, args.batch_size, args.steps,
                               args.repeats, args.channels, args.threads)
                 for mode in ("loop", "dense", "gather")}
        for mode, rate in rates.items():
            results.append({"device": device, "dispatch": mode, "events_per_s": rate,
                            "speedup_vs_loop": rate / rates["loop"]})
    report = {"version": __version__, "torch": torch.__version__, "machine": platform.node(),
              "cpu_threads": torch.get_num_threads(), "batch_size": args.batch_size,
              "steps": args.steps, "repeats": args.repeats, "generator_channels": args.channels,
              "n_experts": 3, "results": results}
    with open(args.output, "w") as handle:
        json.dump(report, handle, indent=2)
    print(f"{'device':<6} {'dispatch':<8} {'events/s':>10} {'vs loop':>8}")
    for row in results:
        print(f"{row['device']:<6} {row['dispatch']:<8} {row['events_per_s']:>10.0f} "
              f"{row['speedup_vs_loop']:>7.2f}x")


if __name__ == "__main__":
    main()
