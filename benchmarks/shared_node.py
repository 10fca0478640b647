"""`expertsim sample` as a whole process, alone and beside another busy process.

    python benchmarks/shared_node.py --model studies/zn/runs/expertsim-3/seed0/model.pt \
        --conditions data/study_zn.h5 --events 30000 --repeats 3 -o shared_node.json

Grid and cluster nodes run several jobs at once. This times the command a user runs (a fresh
process: imports, model load, gate, generators, counts, the compressed file) with its default
settings and with explicit worker/thread settings, on an idle machine and with one CPU-bound
neighbour (a single-threaded busy loop in its own process, started before and stopped after
each timed run). The settings are run in rotated order in every repeat (paired runs: drifts of
the shared machine touch every setting alike); the table gives the median wall time and events
per second of each.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SETTINGS = {
    "default": [],
    "1 worker, 1 thread": ["--workers", "1", "--threads", "1"],
    "1 worker, 2 intra-op threads": ["--workers", "1", "--threads", "2"],
    "2 workers": ["--workers", "2"],
    "2 workers, bfloat16": ["--workers", "2", "--precision", "bfloat16"],
}


def _busy() -> None:
    while True:
        pass


def _conditions(source: str, n_events: int, light_only: bool, folder: Path) -> Path:
    """An npz of the first ``n_events`` conditions of ``source`` (cycled if it has fewer),
    of the particles that left light in it when ``light_only``."""
    from expertsim.eventfile import EventFile

    with EventFile(source) as events:
        conditions = events.conditions(slice(0, events.n_events)).astype(np.float64)
        if light_only:
            conditions = conditions[events.derived("photon_sum") > 0]
    rows = np.arange(n_events) % len(conditions)
    path = folder / "conditions.npz"
    np.savez(path, conditions=conditions[rows])
    return path


def _timed_sample(model: str, conditions: Path, output: Path, extra: list[str]) -> float:
    command = [sys.executable, "-m", "expertsim", "sample", "--model", model, "--conditions",
               str(conditions), "-o", str(output), "--overwrite", *extra]
    environment = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    start = time.perf_counter()
    subprocess.run(command, check=True, env=environment, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure(model: str, conditions: Path, folder: Path, repeats: int, neighbour: bool
            ) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in SETTINGS}
    names = list(SETTINGS)
    for repeat in range(repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            busy = multiprocessing.get_context("spawn").Process(target=_busy, daemon=True)
            if neighbour:
                busy.start()
            try:
                times[name].append(_timed_sample(model, conditions, folder / "out.h5",
                                                 SETTINGS[name]))
            finally:
                if neighbour:
                    busy.terminate()
                    busy.join()
            print(f"  {'busy' if neighbour else 'idle'} {name}: {times[name][-1]:.1f} s",
                  flush=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--conditions", required=True, help="event file of conditions")
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--light-only", action="store_true",
                        help="only particles that left light in the conditions file")
    parser.add_argument("--neighbour", choices=["both", "idle", "busy"], default="both")
    parser.add_argument("-o", "--output", default="shared_node.json")
    args = parser.parse_args()
    # SIGTERM as an exception: the finally blocks stop the busy neighbour and subprocess.run
    # kills the timed sample, instead of both outliving a killed benchmark
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    report = {"model": args.model, "conditions": args.conditions, "events": args.events,
              "light_only": args.light_only, "repeats": args.repeats,
              "cores": len(os.sched_getaffinity(0)), "results": {}}
    neighbours = {"both": (False, True), "idle": (False,), "busy": (True,)}[args.neighbour]
    with tempfile.TemporaryDirectory() as folder:
        conditions = _conditions(args.conditions, args.events, args.light_only, Path(folder))
        for neighbour in neighbours:
            key = "one busy neighbour" if neighbour else "idle"
            times = measure(args.model, conditions, Path(folder), args.repeats, neighbour)
            report["results"][key] = {
                name: {"seconds": values, "median_s": statistics.median(values),
                       "events_per_s": args.events / statistics.median(values)}
                for name, values in times.items()}
    with open(args.output, "w") as handle:
        json.dump(report, handle, indent=2)
    print(f"\n{args.events:,} events, median of {args.repeats} (whole process)")
    for key, results in report["results"].items():
        print(f"{key}: {'setting':<28}{'s':>8}{'ev/s':>9}")
        for name, result in results.items():
            print(f"{'':<{len(key) + 2}}{name:<28}{result['median_s']:>8.1f}"
                  f"{result['events_per_s']:>9,.0f}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
