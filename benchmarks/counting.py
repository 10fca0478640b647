"""The sampler's counting step alone: whole photons from a trained model's expected photons,
each fibre drawn on its own against the faint fibres drawn as one total per row.

    python benchmarks/counting.py \
        --model studies/zp/runs/expertsim-3/seed0/model.pt --reference data/heldout_zp.h5 \
        --model studies/zn/runs/expertsim-3/seed0/model.pt --reference data/heldout_zn.h5 \
        -o benchmarks/results/counting.json

Per model: the expected photons of --events particles of the reference file whose Monte Carlo
response has light (the generator run once, seed 0; its time is reported beside, for scale),
then ``expertsim.photon_counts.poisson_counts`` as the sampler calls it (given at least one
photon) with each --faint-up-to threshold (0: every fibre with a positive expectation drawn on
its own, the draw before the faint split), on 1 and 2 threads: milliseconds per 1,000 events,
median of --repeats passes after a warm-up. The draws differ between thresholds but their law
does not; as a check, the mean photon sum per event and the mean count of the brightest fibre
for each threshold beside the expected values (they agree within sampling noise).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import h5py
import numpy as np
import torch

from expertsim.photon_counts import poisson_counts
from expertsim.trained_model import TrainedModel
from stream import timed  # benchmarks/stream.py: median of repeats after a warm-up


def light_conditions(reference: str, n_events: int) -> np.ndarray:
    """The conditions (n, 9) of the first n_events particles with photon sum >= 1."""
    with h5py.File(reference, "r") as f:
        photon_sum = f["derived/photon_sum"]
        rows: list[np.ndarray] = []
        found, start = 0, 0
        while found < n_events and start < len(photon_sum):
            block = np.nonzero(photon_sum[start:start + 200_000] >= 1)[0] + start
            rows.append(block)
            found += len(block)
            start += 200_000
        index = np.concatenate(rows)[:n_events]
        if len(index) < n_events:
            raise SystemExit(f"{reference}: only {len(index)} particles with light; "
                             f"ask for fewer --events")
        return f["conditions"][index]


def benchmark(model_path: str, reference: str, args) -> dict:
    model = TrainedModel.load(model_path)
    raw = light_conditions(reference, args.events)
    per_1k = 1000.0 / len(raw)
    entry: dict = {"model": model_path, "reference": reference, "events": len(raw)}
    with torch.no_grad():
        z = model.noise(len(raw), torch.Generator().manual_seed(0))
        c = model.scale(raw)
        torch.set_num_threads(2)
        entry["generator_ms_per_1k_2_threads"] = per_1k * 1e3 * timed(
            lambda: model.expected_photons(z, c), args.repeats)
        expected, _ = model.expected_photons(z, c)
    flat = expected.reshape(len(expected), -1)
    brightest = flat.argmax(axis=1)
    entry["expected_photon_sum"] = float(flat.sum(axis=1).mean())
    entry["expected_brightest"] = float(flat[np.arange(len(flat)), brightest].mean())
    entry["fibre_fraction_at_most"] = {str(t): float(((flat > 0) & (flat <= t)).mean())
                                       for t in args.faint_up_to if t > 0}
    entry["fibre_fraction_positive"] = float((flat > 0).mean())
    entry["counting"] = []
    for threshold in args.faint_up_to:
        row: dict = {"faint_up_to": threshold}
        for threads in (1, 2):
            row[f"ms_per_1k_{threads}_threads"] = per_1k * 1e3 * timed(
                lambda: poisson_counts(expected, 0, nonempty=True, threads=threads,
                                       faint_up_to=threshold), args.repeats)
        counts = poisson_counts(expected, 0, nonempty=True, faint_up_to=threshold)
        counts = counts.reshape(len(counts), -1).astype(np.float64)
        sums = counts.sum(axis=1)
        row["photon_sum"] = float(sums.mean())
        row["photon_sum_error"] = float(sums.std() / np.sqrt(len(sums)))
        row["brightest"] = float(counts[np.arange(len(counts)), brightest].mean())
        entry["counting"].append(row)
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--reference", action="append", required=True,
                        help="an event file of the model's detector, one per --model")
    parser.add_argument("--events", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--faint-up-to", type=float, nargs="+", default=[0.0, 0.1, 0.3, 1.0])
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    if len(args.model) != len(args.reference):
        raise SystemExit("give one --reference per --model")
    report = {"command": sys.argv, "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "numpy": np.__version__,
              "repeats": args.repeats, "models": []}
    for model_path, reference in zip(args.model, args.reference):
        entry = benchmark(model_path, reference, args)
        report["models"].append(entry)
        print(f"{model_path} ({entry['events']} events with light): generator "
              f"{entry['generator_ms_per_1k_2_threads']:.1f} ms / 1,000 events on 2 threads; "
              f"expected photon sum {entry['expected_photon_sum']:.2f}, brightest fibre "
              f"{entry['expected_brightest']:.2f}")
        for row in entry["counting"]:
            print(f"  faint_up_to {row['faint_up_to']:>4}: counting "
                  f"{row['ms_per_1k_1_threads']:6.1f} ms (1 thread) "
                  f"{row['ms_per_1k_2_threads']:6.1f} ms (2 threads) per 1,000 events; "
                  f"photon sum {row['photon_sum']:.2f} +- {row['photon_sum_error']:.2f}, "
                  f"brightest {row['brightest']:.2f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    partial = args.output.with_name(args.output.name + ".partial")
    partial.write_text(json.dumps(report, indent=1))
    partial.replace(args.output)


if __name__ == "__main__":
    main()
