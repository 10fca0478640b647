"""Production speed benchmark: the generator as grid jobs and ALICE O2 would run it.

    python benchmarks/production.py --model runs/zn_cpu/model.pt runs/zn_cpu_light/model.pt \
        runs/zp_cpu/model.pt --reference data/zn.h5 data/zp.h5 -o production_benchmark.json

For each model: parameters, FLOPs per event (matrix and convolution work of the router and the
routed expert, counted by torch.utils.flop_counter), and, with --reference, the held-out
fidelity (channel-WS in photons on up to --fidelity-events test-split events with photon
sum >= 1). Then events per second at batch 1 / 100 / 10,000 for each backend and CPU thread
count, each (backend, threads) in a fresh process so that its peak memory is its own:

    eager     PyTorch, MixtureOfExperts.generate (what `expertsim sample` runs)
    compiled  the same with each expert's forward under torch.compile (inductor)
    onnx      the exported graph in ONNX Runtime (what O2 runs)

"model" rates time the generator alone; "sample" rates add what `expertsim sample` adds
(expected photons -> Poisson counts on the host). Batch 10,000 runs in chunks of 256 events,
as the sampler does. Median of --repeats timed runs after a warm-up. With CUDA present, the
eager and compiled backends are timed on the GPU as well.

Last, the built-in simulator's events per second on this machine, and the speed-up of each
path against the Geant4 seconds per event that SOURCES.md quotes (Geant4 11.4, one
core, simplified geometry): those are quoted figures, not measured here.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from expertsim import __version__

BATCHES = {1: 300, 100: 3000, 10_000: 10_000}  # batch -> events per timed run
CHUNK = 256  # ONNX Runtime calls; PyTorch chunks as MixtureOfExperts.generate does
# SOURCES.md, "Monte Carlo cost": Geant4 seconds per event (low, high), quoted.
GEANT4_SECONDS = {
    "ZN": {"n 100 GeV": (0.40, 0.70), "n 1 TeV": (4.7, 7.3), "2.5 TeV spectator": (10, 20)},
    "ZP": {"p 100 GeV": (0.27, 0.41), "p 1 TeV": (3.0, 4.5), "2.5 TeV spectator": (10, 20)},
}


def _peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM starts afresh at exec; getrusage's
    ru_maxrss would carry over the parent's peak into a spawned child."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _generator_for(backend: str, model, device: str, threads: int | None,
                   onnx_dir: str | None):
    """A function (z_BZ, c_BK numpy float32) -> expected photons (numpy) for one backend of a
    TrainedModel."""
    model = model.to(device)
    if backend == "onnx":
        from expertsim.export import onnx_session

        session = onnx_session(Path(onnx_dir) / "model.onnx", threads)

        def run(z, c):
            parts = [session.run(None, {"noise": z[i:i + CHUNK], "conditions": c[i:i + CHUNK]})[0]
                     for i in range(0, len(z), CHUNK)]
            return np.expm1(np.concatenate(parts))
        return run
    if backend == "compiled":
        generator = model.mixture.generator
        generator.forward_expert = torch.compile(generator.forward_expert, dynamic=True)

    def run(z, c):
        return model.expected_photons(torch.from_numpy(z), torch.from_numpy(c))[0]
    return run


def _measure(backend: str, model_path: str, device: str, threads: int | None,
             onnx_dir: str | None, repeats: int) -> dict:
    """Child process: every batch size for one (backend, device, threads)."""
    from expertsim.photon_counts import poisson_counts
    from expertsim.trained_model import TrainedModel

    if threads:
        torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    model = TrainedModel.load(model_path)
    noise_dim = model.noise_dim
    generate = _generator_for(backend, model, device, threads, onnx_dir)
    rss_loaded = _peak_rss_mb()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rows = []
    for batch, n_events in BATCHES.items():
        n_calls = max(1, n_events // batch)
        z = rng.standard_normal((batch, noise_dim)).astype(np.float32)
        c = rng.standard_normal((batch, 9)).astype(np.float32)

        def one_run() -> tuple[float, float]:
            model_s = poisson_s = 0.0
            for call in range(n_calls):
                t0 = time.perf_counter()
                expected = generate(z, c)
                t1 = time.perf_counter()
                poisson_counts(expected, 0, call * batch)
                model_s += t1 - t0
                poisson_s += time.perf_counter() - t1
            return model_s, poisson_s

        one_run()  # warm-up (and compilation)
        runs = [one_run() for _ in range(repeats)]
        model_s = statistics.median(r[0] for r in runs)
        sample_s = statistics.median(r[0] + r[1] for r in runs)
        rows.append({"backend": backend, "device": device, "threads": threads, "batch": batch,
                     "model_events_per_s": n_calls * batch / model_s,
                     "sample_events_per_s": n_calls * batch / sample_s})
    memory = {"peak_rss_mb": _peak_rss_mb(), "rss_after_load_mb": rss_loaded}
    if device == "cuda":
        memory["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    for row in rows:
        row.update(memory)
    return {"rows": rows, "seconds": time.perf_counter() - started}


def _in_child(*args) -> dict:
    """_measure in a fresh spawned process (its own peak memory); its errors are raised here."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_measure, args)


def model_facts(model_path: str) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from expertsim.trained_model import TrainedModel

    model = TrainedModel.load(model_path)
    mixture, batch = model.mixture, 512
    z, c = torch.randn(batch, model.noise_dim), torch.randn(batch, 9)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        mixture(z, c)
    return {"detector": model.detector.name,
            "n_experts": model.n_experts,
            "generator_channels": model.config.model.generator_channels,
            "parameters": model.n_parameters,
            "parameters_per_expert_path": sum(p.numel() for p in mixture.router.parameters())
            + sum(p[0].numel() for p in mixture.generator.parameters()),
            "mflops_per_event": counter.get_total_flops() / batch / 1e6}


def fidelity(model_path: str, reference: str, n_events: int) -> dict:
    """Channel-WS (photons) of the model against test-split reference events."""
    from expertsim.detector import channel_sums
    from expertsim.eventfile import EventFile
    from expertsim.metrics import channel_wasserstein
    from expertsim.trained_model import TrainedModel

    model = TrainedModel.load(model_path)
    with EventFile(reference) as events:
        rows = events.rows("test", min_photon_sum=1)[:n_events]
        images, conditions = events.images(rows), events.conditions(rows)
    z = torch.from_numpy(np.random.default_rng(0).standard_normal((len(rows), model.noise_dim))
                         .astype(np.float32))
    counts, _ = model.sample_counts(z, model.scale(conditions), seed=0, first_row=0)
    per_channel = channel_wasserstein(channel_sums(counts), channel_sums(images))
    return {"reference": reference, "events": int(len(rows)),
            "channel_ws": float(per_channel.mean()),
            "channel_ws_per_channel": per_channel.round(3).tolist()}


def simulator_rate(detector: str, n_events: int, repeats: int) -> float:
    from expertsim.simulate import simulate_events

    simulate_events(1000, detector, seed=0, on_batch=lambda *a: None)
    timings = []
    for seed in range(repeats):
        start = time.perf_counter()
        simulate_events(n_events, detector, seed=seed, on_batch=lambda *a: None)
        timings.append(time.perf_counter() - start)
    return n_events / statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", required=True, help="model files (model.pt)")
    parser.add_argument("--reference", nargs="+", default=[],
                        help="event files for the fidelity column (test split); each model "
                             "uses the one of its detector")
    parser.add_argument("--fidelity-events", type=int, default=5000)
    parser.add_argument("-o", "--output", default="production_benchmark.json")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--backends", nargs="+", default=["eager", "compiled", "onnx"],
                        choices=["eager", "compiled", "onnx"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--simulator-events", type=int, default=20_000)
    args = parser.parse_args()
    started = time.perf_counter()
    report = {"version": __version__, "torch": torch.__version__,
              "machine": {"cpu": platform.processor() or platform.machine(),
                          "cores": multiprocessing.cpu_count(),
                          "cuda": torch.cuda.get_device_name() if torch.cuda.is_available()
                          else None},
              "chunk": CHUNK, "repeats": args.repeats, "models": []}
    from expertsim.eventfile import check_event_file

    references = {check_event_file(path).detector.name: path for path in args.reference}
    for model_path in args.model:
        entry = {"model": model_path, **model_facts(model_path), "results": []}
        print(f"{model_path}: {entry['detector']}, {entry['parameters']:,} parameters, "
              f"{entry['mflops_per_event']:.2f} MFLOP/event", flush=True)
        reference = references.get(entry["detector"])
        if reference:
            entry["fidelity"] = fidelity(model_path, reference, args.fidelity_events)
            print(f"  held-out channel-WS {entry['fidelity']['channel_ws']:.2f} photons "
                  f"({entry['fidelity']['events']} events)", flush=True)
        with tempfile.TemporaryDirectory() as onnx_dir:
            if "onnx" in args.backends:
                from expertsim.export import export_onnx

                export_onnx(model_path, onnx_dir, check_events=200)
            settings = [(b, "cpu", t) for b in args.backends for t in args.threads]
            if torch.cuda.is_available():
                settings += [(b, "cuda", None) for b in args.backends if b != "onnx"]
            for backend, device, threads in settings:
                result = _in_child(backend, model_path, device, threads, onnx_dir, args.repeats)
                entry["results"] += result["rows"]
                print(f"  {backend:<8} {device:<4} threads={threads or '-'}: "
                      f"{result['seconds']:.0f} s", flush=True)
        report["models"].append(entry)
    detectors = sorted({m["detector"] for m in report["models"]})
    report["simulator_events_per_s"] = {
        d: simulator_rate(d, args.simulator_events, args.repeats) for d in detectors}
    report["geant4_seconds_per_event_quoted"] = {d: GEANT4_SECONDS[d] for d in detectors}
    report["seconds"] = time.perf_counter() - started
    with open(args.output, "w") as handle:
        json.dump(report, handle, indent=2)
    print_table(report)
    print(f"wrote {args.output} ({report['seconds']:.0f} s)")


def print_table(report: dict) -> None:
    for entry in report["models"]:
        fid = entry.get("fidelity", {}).get("channel_ws")
        print(f"\n{entry['model']}: {entry['detector']}, {entry['generator_channels']} generator "
              f"channels, {entry['parameters']:,} parameters, "
              f"{entry['mflops_per_event']:.2f} MFLOP/event"
              + (f", held-out channel-WS {fid:.2f}" if fid is not None else ""))
        print(f"{'backend':<9}{'device':<7}{'thr':>4}{'batch':>7}{'model ev/s':>12}"
              f"{'sample ev/s':>13}{'peak RSS MB':>13}")
        for row in entry["results"]:
            print(f"{row['backend']:<9}{row['device']:<7}{str(row['threads'] or '-'):>4}"
                  f"{row['batch']:>7}{row['model_events_per_s']:>12.0f}"
                  f"{row['sample_events_per_s']:>13.0f}{row['peak_rss_mb']:>13.0f}")
        best = max(entry["results"], key=lambda r: r["sample_events_per_s"])
        geant4 = report["geant4_seconds_per_event_quoted"][entry["detector"]]
        speedups = ", ".join(f"{name} {low * best['sample_events_per_s']:,.0f}-"
                             f"{high * best['sample_events_per_s']:,.0f}x"
                             for name, (low, high) in geant4.items())
        print(f"best sample rate {best['sample_events_per_s']:.0f} ev/s "
              f"({best['backend']}, {best['device']}, batch {best['batch']}); against the "
              f"Geant4 s/event quoted in SOURCES.md: {speedups}")
    for detector, rate in report["simulator_events_per_s"].items():
        print(f"built-in parametric simulator ({detector}): {rate:,.0f} ev/s on this machine")


if __name__ == "__main__":
    main()
