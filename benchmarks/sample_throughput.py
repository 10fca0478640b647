"""Sampling throughput of a trained model: events per second at batch 1, 100 and 10,000.

    python benchmarks/sample_throughput.py --model runs/zn_cpu/model.pt -o sample_throughput.json

Times the production path of `expertsim sample` (router + routed expert, expected photons,
Poisson counts on the host) on CPU (each --threads value) and on CUDA when present; median of
--repeats timed runs after a warm-up. Batch 1 runs --single-events events one at a time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from expertsim import __version__
from expertsim.checkpoint import load_mixture
from expertsim.sampling import poisson_counts


def rate(mixture, device: str, batch: int, n_events: int, repeats: int) -> float:
    n_calls = max(1, n_events // batch)
    z = torch.randn(batch, mixture.generator.noise_dim, device=device)
    c = torch.randn(batch, 9, device=device)

    def run():
        with torch.no_grad():
            for call in range(n_calls):
                image, _ = mixture(z, c)
                poisson_counts(torch.expm1(image).cpu().numpy(), 0, call * batch)

    run()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        timings.append(time.perf_counter() - start)
    return n_calls * batch / statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("-o", "--output", default="sample_throughput.json")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--single-events", type=int, default=200)
    args = parser.parse_args()
    mixture, payload = load_mixture(args.model)
    n_parameters = sum(p.numel() for p in mixture.parameters())
    settings = [("cpu", threads) for threads in args.threads]
    if torch.cuda.is_available():
        settings.append(("cuda", None))
    rows = []
    for device, threads in settings:
        if threads:
            torch.set_num_threads(threads)
        model = mixture.to(device)
        for batch, n_events in ((1, args.single_events), (100, 2000), (10_000, 10_000)):
            rows.append({"device": device, "threads": threads, "batch": batch,
                         "events_per_s": rate(model, device, batch, n_events, args.repeats)})
    report = {"version": __version__, "torch": torch.__version__, "model": args.model,
              "detector": payload["detector"], "parameters": n_parameters,
              "n_experts": payload["config"]["model"]["n_experts"], "results": rows}
    with open(args.output, "w") as handle:
        json.dump(report, handle, indent=2)
    print(f"{payload['detector']} model, {n_parameters} parameters")
    print(f"{'device':<6} {'threads':>7} {'batch':>6} {'events/s':>10} {'ms/event':>9}")
    for row in rows:
        print(f"{row['device']:<6} {str(row['threads'] or '-'):>7} {row['batch']:>6} "
              f"{row['events_per_s']:>10.0f} {1000 / row['events_per_s']:>9.3f}")


if __name__ == "__main__":
    main()
