"""Production speed at matched fidelity: the sampler and the O2 replica, as grid jobs and
ALICE O2 run them, in one run.

    python benchmarks/production.py \
        --model studies/zn/runs/expertsim-3/seed0/model.pt \
        studies/zp/runs/expertsim-3/seed0/model.pt \
        --reference data/heldout_zn.h5 data/heldout_zp.h5 -o benchmarks/results/production.json

(the held-out files are written by ``bash validation/heldout_check.sh zn|zp``). Per model
(each with the reference file of its detector):

Variants. ``unfolded`` is the unaccelerated model: ``expertsim sample``'s path (gate, then the
generators, then the Poisson counts; ``expertsim.sampling.sample_rows``) in PyTorch with the
experts' layers as trained (``MixtureOfExperts.fold_experts = False``). ``float32`` is the same
path as the sampler runs it, with the experts rewritten for inference
(``expertsim.models.folded``); ``bfloat16`` the same with the experts in bfloat16
(``--precision bfloat16``). ``onnx`` is
the export (``expertsim export``) run by the O2 replica (``expertsim.o2``): classifier, then
generator, counts drawn in the graph, O2's truncation; at batch 1 exactly what O2 runs, at
larger batches the same graphs given many particles per call (in calls of 256, as the
sampler's chunks). ``--student MODEL`` adds a lighter model of the same detector (a
student of ``expertsim distill``, or the same configuration trained with fewer generator
channels) with the kinds of --student-variants, judged against the same unaccelerated model.

Speed. Events per second at batch 1 / 100 / 10,000 on 1 and 2 threads (PyTorch intra-op
threads; ONNX Runtime intra-op threads) and, for the sampler's float32 and bfloat16 paths, on
--workers worker threads with single-threaded kernels (``expertsim sample``'s layout on a
multi-core job, ``expertsim.sampling.WorkerPool``: the batch is cut into tasks of at most
WORKER_BATCH rows, and a smaller batch into one task per worker, which the sampler would run
in one thread), on two particle streams from the reference's test
split: ``stream``, the particles in file order, empty responses included (the gate decides;
what a generator job sees) and ``light``, the particles whose Monte Carlo response has light
(photon sum >= 1). Each (variant, layout) runs in its own spawned process (its peak memory is
its own, VmHWM); median of --repeats timed passes after a warm-up. The file writing of
``expertsim sample`` is not included (benchmarks/shared_node.py times whole processes).

Fidelity. Each variant generates once (seed 0; float32 and bfloat16 share noise and count
uniforms; so do the worker layouts, which give the same events) on the first
--fidelity-events light particles of the test split and is scored by
``expertsim.validation.validate`` as ``expertsim validate`` scores it: channel-WS with its
interval, the matched floor, classifier AUC; then its relative difference from the first
variant's (``unfolded`` by default).

Last, the Geant4 seconds per particle quoted in SOURCES.md (not measured here) times each
rate: how many times faster than full simulation.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from expertsim import __version__

BATCHES = {1: 1000, 100: 5000, 10_000: 10_000}  # batch -> particles per timed pass
CHUNK = 256  # particles per ONNX Runtime call at the larger batches
VARIANTS = ("unfolded", "float32", "bfloat16", "onnx")
POOLED = ("float32", "bfloat16")  # the kinds also timed on worker threads
# SOURCES.md, "Monte Carlo cost": Geant4 seconds per particle (low, high), quoted.
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


def particle_streams(reference: str, n_events: int) -> dict[str, np.ndarray]:
    """Raw conditions (N, 9) of the two streams (module docstring)."""
    from expertsim.eventfile import EventFile

    with EventFile(reference) as events:
        return {"stream": events.conditions(events.rows("test")[:n_events]),
                "light": events.conditions(events.rows("test", min_photon_sum=1)[:n_events])}


class _OnnxPath:
    """The O2 replica's graphs on B particles per pass: classifier on all, generator on those
    it keeps, O2's truncation; at B = 1 O2Replica.particle itself."""

    def __init__(self, export_dir: str, threads: int) -> None:
        from expertsim.o2 import O2Replica

        self.replica = O2Replica(export_dir, threads=threads, seed=0)

    def __call__(self, raw_B9: np.ndarray, first_row: int) -> None:
        from expertsim.o2 import NOISE_SHAPE, decode_pixels

        replica = self.replica
        if len(raw_B9) == 1:
            replica.particle(raw_B9[0])
            return
        for start in range(0, len(raw_B9), CHUNK):
            raw = raw_B9[start:start + CHUNK].astype(np.float32)
            means, scales = replica.classifier_scales
            kept = np.round(replica.classifier.run([replica._classifier_output], {
                replica._classifier_input: (raw - means) / scales})[0][:, 0]) != 0
            if kept.any():
                means, scales = replica.model_scales
                noise = replica.rng.standard_normal((int(kept.sum()), NOISE_SHAPE[1])).astype(
                    np.float32)
                image = replica.generator.run(None, {
                    replica._generator_inputs[0]: noise,
                    replica._generator_inputs[1]: (raw[kept] - means) / scales})[0]
                decode_pixels(image.reshape(len(image), -1))


def _path(variant: str, model_path: str, export_dir: str | None, threads: int, workers: int):
    """A function (raw conditions (B, 9), first output row) -> None that runs one batch."""
    if variant == "onnx":
        return _OnnxPath(export_dir, threads)
    from expertsim.models.router import MixtureOfExperts
    from expertsim.sampling import WORKER_BATCH, WorkerPool, sample_rows
    from expertsim.trained_model import TrainedModel

    MixtureOfExperts.fold_experts = variant != "unfolded"
    precision = "bfloat16" if variant == "bfloat16" else "float32"
    model = TrainedModel.load(model_path).set_precision(precision)
    gate = model.gate is not None
    if workers == 1:
        return lambda raw_B9, first_row: sample_rows(model, raw_B9, 0, first_row, gate)
    pool = WorkerPool(model, workers)

    def pooled(raw_B9: np.ndarray, first_row: int) -> None:
        step = min(WORKER_BATCH, -(-len(raw_B9) // workers))
        for _ in pool.imap([(raw_B9[start:start + step], 0, first_row + start, gate)
                            for start in range(0, len(raw_B9), step)]):
            pass

    return pooled


def _measure(variant: str, model_path: str, export_dir: str | None, threads: int,
             workers: int, streams: dict[str, np.ndarray], repeats: int) -> dict:
    """Child process: every (stream, batch) for one (variant, threads, workers)."""
    torch.set_num_threads(threads)
    started = time.perf_counter()
    run = _path(variant, model_path, export_dir, threads, workers)
    for batch in (1, CHUNK):  # warm-up
        for start in range(0, 4 * batch, batch):
            run(streams["light"][start:start + batch], start)
    rows = []
    for stream, conditions in streams.items():
        for batch, n_events in BATCHES.items():
            raw = conditions[:n_events]

            def one_pass() -> float:
                t0 = time.perf_counter()
                for start in range(0, len(raw), batch):
                    run(raw[start:start + batch], start)
                return time.perf_counter() - t0

            seconds = statistics.median(one_pass() for _ in range(repeats))
            rows.append({"variant": variant, "threads": threads, "workers": workers,
                         "stream": stream, "batch": batch, "particles": len(raw),
                         "events_per_s": len(raw) / seconds,
                         "ms_per_particle": 1e3 * seconds / len(raw)})
    for row in rows:
        row["peak_rss_mb"] = _peak_rss_mb()
    return {"rows": rows, "seconds": time.perf_counter() - started}


def _in_child(*args) -> dict:
    """_measure in a fresh spawned process (its own peak memory); its errors are raised here."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_measure, args)


def model_facts(model_path: str) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from expertsim.trained_model import TrainedModel

    from expertsim.models.router import MixtureOfExperts

    model = TrainedModel.load(model_path)
    batch = 512
    z, c = torch.randn(batch, model.noise_dim), torch.randn(batch, 9)
    mflops = {}
    for folded in (True, False):  # as the sampler runs the experts, and as trained
        MixtureOfExperts.fold_experts = folded
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.mixture(z, c)
        mflops[folded] = counter.get_total_flops() / batch / 1e6
    MixtureOfExperts.fold_experts = True
    return {"detector": model.detector.name, "n_experts": model.n_experts,
            "generator_channels": model.config.model.generator_channels,
            "parameters": model.n_parameters, "mflops_per_event": mflops[True],
            "mflops_per_event_unfolded": mflops[False]}


def fidelity(variant: str, model_path: str, export_dir: str | None, reference: Path,
             folder: Path) -> dict:
    """One generation of ``variant`` (a kind of VARIANTS) on the selected light particles,
    scored by validate; files in ``folder``."""
    from expertsim.o2 import replica_to_file
    from expertsim.sampling import sample_to_file
    from expertsim.validation import validate

    folder.mkdir(parents=True, exist_ok=True)
    generated = folder / "generated.h5"
    if variant == "onnx":
        replica_to_file(export_dir, reference, generated, seed=0, gate=False)
    else:
        from expertsim.models.router import MixtureOfExperts

        MixtureOfExperts.fold_experts = variant != "unfolded"
        try:
            sample_to_file(model_path, reference, generated, seed=0, gate=False, workers=0,
                           precision="bfloat16" if variant == "bfloat16" else "float32")
        finally:
            MixtureOfExperts.fold_experts = True
    report = validate([generated], reference, folder / "report", seed=0, plots=False)
    headline = report["headline"]
    return {"channel_ws": headline["ws_mean"], "channel_ws_ci95": headline["ws_mean_ci95"],
            "floor": headline.get("floor_ws_mean"), "ratio": headline.get("ratio"),
            "auc": report["classifier_auc"],
            "convention": headline["convention"], "events": report["n_reference"]}


def benchmark_model(model_path: str, reference: str, args,
                    variants: list[tuple[str, str, str]]) -> dict:
    """Facts, fidelity and speed of one model's variants: (name, kind, model path), kind one
    of VARIANTS."""
    from expertsim.export import export_onnx
    from expertsim.validation import select_reference

    facts = {path: model_facts(path) for path in dict.fromkeys(p for _, _, p in variants)}
    entry = {"model": model_path, "reference": reference, **facts[model_path],
             "students": {name: {"model": path, **facts[path]}
                          for name, _, path in variants if path != model_path},
             "fidelity": {}, "results": []}
    print(f"{model_path}: {entry['detector']}, {entry['parameters']:,} parameters, "
          f"{entry['mflops_per_event']:.2f} MFLOP/event", flush=True)
    streams = particle_streams(reference, max(BATCHES.values()))
    entry["stream_empty_fraction"] = _empty_fraction(reference, len(streams["stream"]))
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        selected = select_reference(reference, work / "reference.h5", split="test",
                                    min_photon_sum=1, max_events=args.fidelity_events)
        exports = {}
        for name, kind, path in variants:
            if kind == "onnx" and path not in exports:
                exports[path] = str(work / f"export{len(exports)}")
                export_onnx(path, exports[path], check_events=500)
            started = time.perf_counter()
            entry["fidelity"][name] = fidelity(kind, path, exports.get(path), selected,
                                               work / name)
            print(f"  {name:<15} channel-WS {entry['fidelity'][name]['channel_ws']:.3f}, AUC "
                  f"{entry['fidelity'][name]['auc']:.3f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
            layouts = [(threads, 1) for threads in args.threads]
            layouts += [(1, workers) for workers in args.workers if kind in POOLED]
            for threads, workers in layouts:
                result = _in_child(kind, path, exports.get(path), threads, workers, streams,
                                   args.repeats)
                for row in result["rows"]:
                    row["variant"] = name
                entry["results"] += result["rows"]
                print(f"  {name:<15} {_layout(threads, workers)}: {result['seconds']:.0f} s",
                      flush=True)
    reference_ws = entry["fidelity"][variants[0][0]]["channel_ws"]
    for numbers in entry["fidelity"].values():
        numbers["vs_unaccelerated"] = numbers["channel_ws"] / reference_ws - 1.0
    return entry


def _empty_fraction(reference: str, n_events: int) -> float:
    from expertsim.eventfile import EventFile

    with EventFile(reference) as events:
        rows = events.rows("test")[:n_events]
        return float((events.derived("photon_sum")[rows] < 1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", help="model files (model.pt)")
    parser.add_argument("--reference", nargs="+",
                        help="Monte Carlo event files, one per detector (test split)")
    parser.add_argument("--student", nargs="*", default=[],
                        help="lighter models, each timed and scored beside the model of its "
                             "detector")
    parser.add_argument("--fidelity-events", type=int, default=20_000)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workers", type=int, nargs="*", default=[2],
                        help="worker-thread counts timed for the sampler's paths")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                        help="of each --model; the first is the unaccelerated reference")
    parser.add_argument("--student-variants", nargs="+", default=["float32", "onnx"],
                        choices=VARIANTS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("-o", "--output", default="production_benchmark.json")
    parser.add_argument("--table", metavar="JSON",
                        help="only print the tables of an earlier run's JSON file")
    args = parser.parse_args()
    if args.table:
        print_table(json.loads(Path(args.table).read_text()))
        return
    if not args.model or not args.reference:
        parser.error("--model and --reference are required (or --table JSON)")
    from expertsim.eventfile import check_event_file
    from expertsim.trained_model import TrainedModel

    started = time.perf_counter()
    references = {check_event_file(path).detector.name: path for path in args.reference}
    students = {}
    for path in args.student:
        students.setdefault(TrainedModel.load(path).detector.name, []).append(path)
    report = {"version": __version__, "torch": torch.__version__, "command": sys.argv,
              "machine": {"cpu": platform.processor() or platform.machine(),
                          "cores": multiprocessing.cpu_count(),
                          "cuda": torch.cuda.get_device_name() if torch.cuda.is_available()
                          else None},
              "batches": BATCHES, "repeats": args.repeats, "models": []}
    for model_path in args.model:
        detector = TrainedModel.load(model_path).detector.name
        if detector not in references:
            parser.error(f"{model_path}: no --reference file of detector {detector}")
        variants = [(kind, kind, model_path) for kind in args.variants]
        for i, path in enumerate(students.get(detector, [])):
            variants += [(f"student{i}-{kind}", kind, path)
                         for kind in args.student_variants]
        report["models"].append(benchmark_model(model_path, references[detector], args,
                                                variants))
    report["geant4_seconds_quoted"] = {m["detector"]: GEANT4_SECONDS[m["detector"]]
                                       for m in report["models"]}
    report["seconds"] = time.perf_counter() - started
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_table(report)
    print(f"wrote {args.output} ({report['seconds']:.0f} s)")


def print_table(report: dict) -> None:
    for entry in report["models"]:
        unfolded = entry.get("mflops_per_event_unfolded")
        print(f"\n{entry['model']}: {entry['detector']}, {entry['parameters']:,} parameters, "
              f"{entry['mflops_per_event']:.2f} MFLOP/event"
              + (f" ({unfolded:.2f} unfolded)" if unfolded else "") + "; stream "
              f"{entry['stream_empty_fraction']:.0%} empty")
        students = {facts["model"]: (name.rsplit("-", 1)[0], facts)
                    for name, facts in entry["students"].items()}
        for name, facts in students.values():
            print(f"  {name}: {facts['model']}, {facts['parameters']:,} parameters, "
                  f"{facts['mflops_per_event']:.2f} MFLOP/event")
        print(f"{'variant':<16}{'channel-WS':>11}{'95 % interval':>17}{'vs ref':>8}{'AUC':>7}")
        for name, f in entry["fidelity"].items():
            low, high = f["channel_ws_ci95"]
            print(f"{name:<16}{f['channel_ws']:>11.3f}{f'[{low:.2f}, {high:.2f}]':>17}"
                  f"{f['vs_unaccelerated']:>+8.1%}{f['auc']:>7.3f}")
        _speed_table(entry, report["geant4_seconds_quoted"][entry["detector"]])


def _layout(threads: int, workers: int) -> str:
    return f"{threads} thread" + "s" * (threads > 1) if workers == 1 else f"{workers} workers"


MATCHED = 0.05  # "matched fidelity": channel-WS within 5 % of the unaccelerated model's


def _speed_table(entry: dict, geant4: dict) -> None:
    """Events per second, a row per (variant, threads), a column per (stream, batch)."""
    columns = [(stream, batch) for stream in ("stream", "light") for batch in BATCHES]
    print(f"{'ev/s':<16}{'layout':>12}" + "".join(f"{f'{s} {b}':>13}" for s, b in columns)
          + f"{'peak MB':>9}")
    cells = {(r["variant"], r["threads"], r.get("workers", 1), r["stream"], r["batch"]): r
             for r in entry["results"]}
    for variant, threads, workers in dict.fromkeys(
            (r["variant"], r["threads"], r.get("workers", 1)) for r in entry["results"]):
        rows = [cells[(variant, threads, workers, s, b)] for s, b in columns]
        print(f"{variant:<16}{_layout(threads, workers):>12}"
              + "".join(f"{r['events_per_s']:>13,.0f}" for r in rows)
              + f"{rows[0]['peak_rss_mb']:>9.0f}")
    for label, rows in (
            (f"best rate, light particles, channel-WS within {MATCHED:.0%}",
             [r for r in entry["results"] if r["stream"] == "light"
              and abs(entry["fidelity"][r["variant"]]["vs_unaccelerated"]) <= MATCHED]),
            *((f"O2's mode ({variant}, 1 thread, batch 1, light)",
               [r for r in entry["results"] if r["variant"] == variant and r["threads"] == 1
                and r.get("workers", 1) == 1 and r["batch"] == 1 and r["stream"] == "light"])
              for variant in dict.fromkeys(r["variant"] for r in entry["results"]
                                           if r["variant"].endswith("onnx")))):
        if rows:
            best = max(rows, key=lambda r: r["events_per_s"])
            speedups = ", ".join(f"{name} {low * best['events_per_s']:,.0f}-"
                                 f"{high * best['events_per_s']:,.0f}x"
                                 for name, (low, high) in geant4.items())
            print(f"{label}: {best['events_per_s']:,.0f} ev/s, {best['ms_per_particle']:.3f} "
                  f"ms ({best['variant']}, {_layout(best['threads'], best.get('workers', 1))}"
                  f", batch {best['batch']}); "
                  f"Geant4 (quoted) / this: {speedups}")


if __name__ == "__main__":
    main()
