"""Generating events with a trained model, at any scale, reproducibly.

Output rows: every condition repeated ``repeat`` times in a row (output row j belongs to
condition j // repeat). The noise of output row j comes from block j // NOISE_BLOCK of a stream
seeded by (seed, block), so a run split into shards (``--shard I/N``: a contiguous range of
conditions) produces exactly the rows of the unsharded run, and ``merge`` joins the shards.

Generated images are returned to counts space: the model's log(1 + photons) output gives the
expected photons per fibre, expm1(output), and the counts are Poisson draws from it (seeded by
(seed, output row), so sharding does not change them). Rounding instead would drop every fibre
below half a photon (37 % of the photons of a smoke model); Poisson draws keep the mean and
the photon statistics that dominate at these yields (SOURCES.md). Sample files are whole
photons, like Monte Carlo files, for every later stage. The generators model responses with
light, so their draws are conditioned on at least one photon; whether a particle leaves light
at all is the empty-response gate's decision (expertsim.gate), drawn from its probability with
uniforms of their own stream (seeded by (seed, block), like the noise).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from expertsim.errors import ConfigError, DataSchemaError
from expertsim.eventfile import (CONDITION_COLUMNS, EventFile, EventFileWriter, check_conditions,
                                 check_event_file, read_raw_conditions)
from expertsim.photon_counts import FAINT_UP_TO
from expertsim.provenance import file_sha256, make_provenance
from expertsim.trained_model import TrainedModel

NOISE_BLOCK = 4096
WORKER_BATCH = 1024  # rows per worker task: small enough to keep every worker busy to the end
COUNTING = ("Poisson by inversion; uniforms splitmix64-keyed by (seed, row, index); fibres "
            f"expecting at most {FAINT_UP_TO} photons drawn as one total per row, placed "
            "multinomially")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``: a contiguous range of the conditions."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """Parse "I/N" (0 <= I < N)."""
        try:
            index, count = (int(v) for v in text.split("/"))
        except ValueError:
            raise ConfigError(f"shard {text!r}: write it as I/N, e.g. 3/10") from None
        if not 0 <= index < count:
            raise ConfigError(f"shard {text!r}: need 0 <= I < N")
        return cls(index, count)

    def bounds(self, n_conditions: int) -> tuple[int, int]:
        return (self.index * n_conditions // self.count,
                (self.index + 1) * n_conditions // self.count)


def read_conditions(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Raw conditions (N, 9) and optional PDG ids from an event file, an npz or a CSV.

    npz: key ``conditions`` (N, 9), optional ``pdg``. CSV: a header naming the nine columns
    (E, vx, vy, vz, px, py, pz, mass, charge; any order, extra columns ignored).
    """
    from expertsim.convert import load_npz_key, npz_keys

    path = Path(path)
    if not path.exists():
        raise DataSchemaError(f"{path}: no such file")
    suffix = path.suffix.lower()
    pdg = None
    if suffix in (".h5", ".hdf5"):
        conditions, pdg = read_raw_conditions(path)
    elif suffix == ".npz":
        conditions = load_npz_key(path, "conditions")
        pdg = load_npz_key(path, "pdg") if "pdg" in npz_keys(path) else None
    elif suffix == ".csv":
        conditions = _read_csv_conditions(path)
    else:
        raise DataSchemaError(f"{path}: unknown conditions format {suffix!r} "
                              "(use an event file .h5, an .npz or a .csv)")
    if pdg is not None and (pdg.shape != (len(conditions),) or pdg.dtype.kind not in "iu"):
        raise DataSchemaError(f"{path}: 'pdg' must hold {len(conditions)} integers, has "
                              f"shape {pdg.shape} and dtype {pdg.dtype}")
    n_rows = len(conditions) if conditions.ndim else 0
    if n_rows == 0:
        raise DataSchemaError(f"{path}: holds no conditions (no rows)")
    return check_conditions(conditions, n_rows, str(path)), pdg


def _read_csv_conditions(path: Path) -> np.ndarray:
    """The nine condition columns of a CSV with a header line (N, 9)."""
    try:
        with open(path) as handle:
            header = [h.strip() for h in handle.readline().split(",")]
            lines = [(number, line) for number, line in enumerate(handle, start=2)
                     if line.strip()]
    except UnicodeDecodeError:
        raise DataSchemaError(f"{path}: not a text CSV file") from None
    missing = [c for c in CONDITION_COLUMNS if c not in header]
    if missing:
        raise DataSchemaError(f"{path}: CSV header lacks column(s) {missing} "
                              f"(need {', '.join(CONDITION_COLUMNS)})")
    columns = [header.index(c) for c in CONDITION_COLUMNS]
    rows = []
    for number, line in lines:
        fields = line.split(",")
        try:
            rows.append([float(fields[k]) for k in columns])
        except (ValueError, IndexError):
            raise DataSchemaError(
                f"{path}: line {number} does not hold a number in each of the columns "
                f"{', '.join(CONDITION_COLUMNS)} ({line.strip()[:60]!r})") from None
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(CONDITION_COLUMNS))


def conditions_detector(path: str | os.PathLike) -> str | None:
    """The detector an event file of conditions was made for ("ZN"/"ZP"), or None when the
    file does not say (npz, CSV, an HDF5 file without the attribute)."""
    if Path(path).suffix.lower() not in (".h5", ".hdf5"):
        return None
    from expertsim.eventfile import open_event_file

    with open_event_file(path) as handle:
        name = handle.attrs.get("detector")
    return None if name is None else (name.decode() if isinstance(name, bytes) else str(name))


GATE_STREAM = 1 << 40  # offset of the gate's uniforms' seeds from the noise seeds


def _noise_rows(seed: int, first: int, stop: int, noise_dim: int) -> torch.Tensor:
    """Standard-normal noise for output rows [first, stop), independent of how rows are split."""
    return _stream_rows(seed, first, stop, noise_dim, torch.randn, 0)


def _gate_uniform_rows(seed: int, first: int, stop: int) -> np.ndarray:
    """Uniforms in [0, 1) for the gate's decisions on output rows [first, stop) (N,)."""
    return _stream_rows(seed, first, stop, 1, torch.rand, GATE_STREAM)[:, 0].double().numpy()


def _stream_rows(seed: int, first: int, stop: int, width: int, draw, stream: int
                 ) -> torch.Tensor:
    """Rows [first, stop) of a random stream drawn in blocks of NOISE_BLOCK rows, block b
    seeded by (seed, b, stream): the rows do not depend on how a run is split."""
    parts = []
    for block in range(first // NOISE_BLOCK, (stop - 1) // NOISE_BLOCK + 1):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + block + stream)
        noise = draw(NOISE_BLOCK, width, generator=generator)
        lo = max(first, block * NOISE_BLOCK) - block * NOISE_BLOCK
        hi = min(stop, (block + 1) * NOISE_BLOCK) - block * NOISE_BLOCK
        parts.append(noise[lo:hi])
    return torch.cat(parts)


def sample_to_file(
    model_path: str | os.PathLike, conditions_path: str | os.PathLike,
    output: str | os.PathLike, *, seed: int = 0, repeat: int = 1, shard: Shard = Shard(),
    batch_size: int = 4096, device: str = "cpu", gate: bool | None = None,
    workers: int = 1, precision: str = "float32",
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Generate ``repeat`` responses per condition of the shard and write an event file.

    ``gate``: run the model's empty-response gate first (None: when the model has one);
    particles it stops are written as empty events and cost only the gate. Without it every
    particle gets a response with light (the generators model those; validate them against
    Monte Carlo events with photon sum >= 1).

    ``precision``: the experts' arithmetic (TrainedModel.set_precision; "bfloat16" is ~1.5x
    faster on a CPU with bf16 instructions). ``workers`` > 1 (CPU only): batches of at most
    WORKER_BATCH rows are generated by that many worker threads with single-threaded kernels
    (:class:`WorkerPool`); the events are the same as with one.

    The file carries ``/expert`` (routed expert; -1: stopped by the gate), ``/source_row``
    (the condition's row in the conditions file) and provenance (model SHA-256, seed, shard,
    gate, particles outside the training range).
    """
    if repeat < 1 or batch_size < 1:
        raise ConfigError("repeat and batch_size must be >= 1")
    model, gate = _model_and_gate(model_path, device, precision, gate)
    conditions, pdg = read_conditions(conditions_path)
    outside = _check_conditions(model, conditions, conditions_path, model_path)
    first_condition, stop_condition = shard.bounds(len(conditions))
    n_rows = (stop_condition - first_condition) * repeat
    if n_rows == 0:
        raise ConfigError(f"shard {shard.index}/{shard.count} of {len(conditions)} conditions "
                          "is empty; use fewer shards")
    source_row = np.repeat(np.arange(first_condition, stop_condition), repeat)
    first_row = first_condition * repeat
    provenance = make_provenance(
        made_by="expertsim sample", seed=seed, inputs=[model_path, conditions_path],
        config={"model_sha256": file_sha256(model_path), "repeat": repeat,
                "shard": [shard.index, shard.count], "n_conditions": len(conditions),
                "rows": [first_row, first_row + n_rows], "noise_block": NOISE_BLOCK,
                "gate": gate, "outside_training_range": outside, "precision": precision,
                "counting": COUNTING})
    experts = np.empty(n_rows, dtype=np.int8)
    with EventFileWriter(output, model.detector, n_rows, provenance=provenance,
                         with_pdg=pdg is not None, image_dtype=np.uint32, split_seed=seed,
                         extras={"expert": experts, "source_row": source_row}) as writer:
        parallel = workers > 1 and n_rows > WORKER_BATCH and model.device.type == "cpu"
        step = min(batch_size, WORKER_BATCH) if parallel else batch_size
        batches = [(start, min(start + step, n_rows)) for start in range(0, n_rows, step)]
        tasks = [(conditions[source_row[start:stop]], seed, first_row + start, gate)
                 for start, stop in batches]
        with contextlib.closing(_batch_results(model, tasks,
                                               workers if parallel else 0)) as results:
            for (start, stop), task, (counts, experts[start:stop]) in zip(batches, tasks,
                                                                         results):
                writer.write(start, counts, task[0],
                             None if pdg is None else pdg[source_row[start:stop]])
                if progress is not None:
                    progress(stop - start)
    return Path(output)


def _model_and_gate(model_path: str | os.PathLike, device: str, precision: str,
                    gate: bool | None) -> tuple[TrainedModel, bool]:
    """The model ready to sample, and whether its gate runs (None: when it has one)."""
    model = TrainedModel.load(model_path).to(device).set_precision(precision)
    if gate and model.gate is None:
        raise ConfigError(f"{model_path}: the model has no empty-response gate (its training "
                          "data had no empty events, or gate.enabled was false); sample "
                          "without --gate")
    return model, model.gate is not None if gate is None else gate


def _batch_results(model: TrainedModel, tasks: list[tuple], workers: int):
    """(counts, experts) of each sample_rows task, in order: in this thread, or on ``workers``
    worker threads (0: none); the pool ends when the generator is closed."""
    if not workers:
        for task in tasks:
            yield sample_rows(model, *task)
        return
    pool = WorkerPool(model, workers)
    try:
        yield from pool.imap(tasks)
    finally:
        pool.close()


def _check_conditions(model: TrainedModel, conditions: np.ndarray,
                      conditions_path: str | os.PathLike, model_path: str | os.PathLike) -> int:
    """Refuse another detector's conditions; warn about (and return the number of) particles
    outside the conditions the model was trained on."""
    outside = model.check_conditions(conditions, conditions_detector(conditions_path),
                                     str(conditions_path))
    if outside:
        warnings.warn(f"{conditions_path}: {outside} of {len(conditions)} particles lie outside "
                      f"the range of conditions {model_path} was trained on (some condition "
                      "below its minimum or above its maximum); the model extrapolates there",
                      stacklevel=3)
    return outside


def sample_rows(model: TrainedModel, raw_B9: np.ndarray, seed: int, first_row: int,
                  gate: bool) -> tuple[np.ndarray, np.ndarray]:
    """Counts (B, H, W) and experts (B,) of output rows [first_row, first_row + B): the gate's
    decisions, then the generators on the rows it passes (their own noise rows and Poisson
    streams, so the rows do not depend on the batch)."""
    n_rows = len(raw_B9)
    c_BK = model.scale(raw_B9)
    z_BZ = _noise_rows(seed, first_row, first_row + n_rows, model.noise_dim)
    if not gate:
        return model.sample_counts(z_BZ, c_BK, seed=seed, first_row=first_row)
    passed = np.nonzero(model.leaves_light(
        c_BK, _gate_uniform_rows(seed, first_row, first_row + n_rows)))[0]
    counts = np.zeros((n_rows, *model.image_shape), dtype=np.uint32)
    experts = np.full(n_rows, -1, dtype=np.int8)
    if len(passed):
        index = torch.from_numpy(passed)
        counts[passed], experts[passed] = model.sample_counts(
            z_BZ[index], c_BK[index.to(c_BK.device)], seed=seed, row_ids=first_row + passed)
    return counts, experts


def available_cores() -> int:
    """The CPU cores this process was given: its affinity mask (what taskset, cgroups' cpusets
    and SLURM's binding leave it), capped by SLURM_CPUS_PER_TASK and OMP_NUM_THREADS when they
    are set. ``expertsim sample`` runs that many worker threads by default."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    for variable in ("SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS"):
        value = os.environ.get(variable, "")
        if value.isdigit() and int(value) > 0:
            cores = min(cores, int(value))
    return max(cores, 1)


class WorkerPool:
    """Worker threads of this process, each running whole batches (sample_rows: gate,
    generators, counts) on the one loaded model with single-threaded kernels (PyTorch's
    intra-op threads are set to 1 while the pool lives). PyTorch and numpy release the GIL in
    their kernels, so the workers run in parallel; unlike the intra-op threads of one kernel,
    which wait for each other at every operator, each worker runs on alone when another is
    descheduled, so a busy neighbour on a shared core slows only the worker it displaces.
    Threads rather than processes: no start (a spawned process imported PyTorch and loaded
    the model, ~2 s), no counts sent back through a pipe. At most two batches per worker are
    in flight, so a slow writer never piles up results in memory."""

    def __init__(self, model: TrainedModel, workers: int) -> None:
        self.model, self.workers = model, workers
        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="expertsim-sample")

    def imap(self, tasks: list[tuple]):
        """The results of ``tasks`` in order."""
        pending: collections.deque = collections.deque()
        for task in tasks:
            pending.append(self._pool.submit(sample_rows, self.model, *task))
            if len(pending) >= 2 * self.workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def close(self) -> None:
        """Drop the batches not yet started, wait for the running ones (a batch of at most
        WORKER_BATCH rows) and restore the intra-op threads."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(self._threads)


def _checked_shards(shards: list[str | os.PathLike]) -> list[tuple]:
    """(path, info, sampling config) of each shard, in shard order, once every shard is known
    to come from the same run and none is missing or duplicated."""
    if not shards:
        raise ConfigError("merge needs at least one shard file")
    records = []
    for path in shards:
        info = check_event_file(path)
        config = info.provenance.get("config", {})
        if info.provenance.get("made_by") != "expertsim sample" or "shard" not in config:
            raise DataSchemaError(f"{path}: not a shard written by 'expertsim sample'")
        records.append((path, info, config))
    reference_path, reference, reference_config = records[0]
    for path, info, config in records[1:]:
        for what, ours, theirs in (
                ("detector", info.detector.name, reference.detector.name),
                ("model (SHA-256)", config["model_sha256"], reference_config["model_sha256"]),
                ("seed", info.provenance.get("seed"), reference.provenance.get("seed")),
                ("repeat", config["repeat"], reference_config["repeat"]),
                ("counting", config.get("counting"), reference_config.get("counting")),
                ("shard count", config["shard"][1], reference_config["shard"][1]),
                ("number of conditions", config["n_conditions"],
                 reference_config["n_conditions"])):
            if ours != theirs:
                raise DataSchemaError(f"{path}: {what} {ours!r} differs from {reference_path}'s "
                                      f"{theirs!r}; these shards are not from one run")
    indices = sorted(config["shard"][0] for _, _, config in records)
    expected = list(range(reference_config["shard"][1]))
    if indices != expected:
        missing = sorted(set(expected) - set(indices))
        duplicated = sorted({i for i in indices if indices.count(i) > 1})
        raise DataSchemaError(f"shards incomplete: missing {missing}, duplicated {duplicated}")
    return sorted(records, key=lambda record: record[2]["shard"][0])

def merge_shards(shards: list[str | os.PathLike], output: str | os.PathLike,
                 progress: Callable[[int], None] | None = None) -> Path:
    """Join shard files of one sampling run into one event file, in shard order.

    Refuses shards made by different models, detectors, seeds or repeat counts, missing or
    duplicated shards, and shards of different runs.
    """
    records = _checked_shards(shards)
    _, reference, reference_config = records[0]
    n_events = sum(info.n_events for _, info, _ in records)
    experts = np.empty(n_events, dtype=np.int8)
    source_row = np.empty(n_events, dtype=np.int64)
    provenance = make_provenance(
        made_by="expertsim merge", seed=reference.provenance.get("seed"),
        inputs=[path for path, _, _ in records], hash_inputs=False,
        config={**{k: v for k, v in reference_config.items() if k not in ("shard", "rows")},
                "merged_shards": len(records)})
    with EventFileWriter(output, reference.detector, n_events, provenance=provenance,
                         with_pdg=reference.has_pdg, image_dtype=reference.image_dtype,
                         split_seed=reference.provenance.get("seed") or 0,
                         extras={"expert": experts, "source_row": source_row}) as writer:
        offset = 0
        for path, info, _ in records:
            with EventFile(path) as events:
                experts[offset:offset + info.n_events] = events.extra("expert")
                source_row[offset:offset + info.n_events] = events.extra("source_row")
                for start in range(0, info.n_events, 16384):
                    block = slice(start, min(start + 16384, info.n_events))
                    writer.write(offset + start, events.images(block), events.conditions(block),
                                 events.pdg(block))
                    if progress is not None:
                        progress(block.stop - start)
            offset += info.n_events
    return Path(output)


def describe(path: str | os.PathLike) -> str:
    """One line on a sample file: events, expert use, model."""
    with EventFile(path) as events:
        info, experts = events.info, events.extra("expert")
    if experts is None:
        experts = np.empty(0, dtype=int)
    experts = experts.astype(int)
    routed = experts[experts >= 0]
    use = np.bincount(routed) / len(routed) if len(routed) else []
    model = info.provenance.get("config", {}).get("model_sha256", "?")[:16]
    gated = (f", {(experts < 0).mean():.1%} stopped by the gate (empty)"
             if (experts < 0).any() else "")
    return (f"{info.n_events} {info.detector.name} events{gated}, expert use "
            f"{json.dumps([round(float(u), 3) for u in use])}, model {model}")
