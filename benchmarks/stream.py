"""A realistic particle stream through the gated model: what a grid job or O2 pays per particle.

    python benchmarks/stream.py --model runs/smoke/model.pt --export runs/smoke/onnx \
        --particles data/smoke_zn_mc.h5 -n 10000 -o stream_zn.json

The particles are the first N of an event file, empty responses included (the built-in
simulator's mix: ~55 % of ZN and ~98 % of ZP particles leave no light). Two paths, each timed
whole (median of --repeats runs after one warm-up run):

    sampler   ``expertsim sample`` (expertsim.sampling.sample_to_file, gate on), batches of
              4,096, writing the event file; once per --layout WxT: W worker processes of
              one thread each (W > 1; their start is timed too), or one process on T threads
    replica   the O2 replica (expertsim.o2.O2Replica): classifier then generator at batch 1,
              ONNX Runtime on one intra-op thread, as ALICE O2 runs them

and the same two on the particles that leave light only (the generators' own cost).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from expertsim import __version__
from expertsim.eventfile import EventFile
from expertsim.o2 import O2Replica
from expertsim.sampling import sample_to_file


def timed(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _sampler_seconds(model: str, npz: Path, output: Path, layout: str, repeats: int) -> float:
    workers, threads = (int(v) for v in layout.split("x"))
    torch.set_num_threads(threads)
    return timed(lambda: sample_to_file(model, npz, output, seed=0, workers=workers),
                  repeats)


def measure(model: str, export: str, conditions: np.ndarray, repeats: int,
            folder: Path, layouts: list[str]) -> dict:
    npz = folder / "particles.npz"
    np.savez(npz, conditions=conditions)
    sampler = {layout: len(conditions) / _sampler_seconds(model, npz, folder / "out.h5",
                                                          layout, repeats)
               for layout in layouts}
    torch.set_num_threads(1)
    replica = O2Replica(export, threads=1, seed=0)
    replica_s = timed(lambda: replica.run(conditions), repeats)
    images, _, _ = replica.run(conditions)
    return {"n_particles": len(conditions),
            "replica_empty_fraction": float((images.sum(axis=(1, 2)) == 0).mean()),
            "sampler_events_per_s": sampler,
            "replica_events_per_s": len(conditions) / replica_s,
            "replica_ms_per_particle": 1e3 * replica_s / len(conditions)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="gated model file (model.pt)")
    parser.add_argument("--export", required=True, help="its export directory")
    parser.add_argument("--particles", required=True, help="event file with empty events")
    parser.add_argument("-n", type=int, default=10_000, help="particles of the stream")
    parser.add_argument("--layout", nargs="+", default=["1x1", "1x2", "2x1"],
                        help="sampler layouts WxT: W worker processes, T torch threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("-o", "--output", default="stream_benchmark.json")
    args = parser.parse_args()
    with EventFile(args.particles) as events:
        conditions = events.conditions(slice(0, args.n))
        light = events.derived("photon_sum", slice(0, args.n)) > 0
    with tempfile.TemporaryDirectory() as folder:
        report = {
            "expertsim_version": __version__, "model": args.model, "export": args.export,
            "particles": args.particles, "sampler_layouts": args.layout, "repeats": args.repeats,
            "mc_empty_fraction": float(1 - light.mean()),
            "stream": measure(args.model, args.export, conditions, args.repeats, Path(folder),
                              args.layout),
            "light_only": measure(args.model, args.export, conditions[light], args.repeats,
                                  Path(folder), args.layout)}
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    for name in ("stream", "light_only"):
        part = report[name]
        rates = ", ".join(f"{layout} {rate:,.0f}"
                          for layout, rate in part["sampler_events_per_s"].items())
        print(f"{name:10s} {part['n_particles']:7d} particles: sampler ev/s ({rates}); "
              f"O2 replica (batch 1, 1 thread) "
              f"{part['replica_events_per_s']:7.0f} ev/s = {part['replica_ms_per_particle']:.3f}"
              " ms/particle")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
