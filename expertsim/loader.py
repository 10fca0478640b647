"""Streaming batches of events from an event file, without loading the file into memory.

The loader reads whole HDF5 chunks (contiguous runs of events), so it never decompresses a
chunk twice per epoch. Each epoch it shuffles the order of the chunks, fills a buffer of as
many chunks as its memory limit allows, shuffles the events inside the buffer and cuts
batches. The shuffle depends only on (seed, epoch), so the same seed gives the same batches.

Transforms (the field's standard ones, SOURCES.md): images -> log(1 + counts), float32;
conditions -> (x - mean) / scale with the statistics the file stores (fitted on its train
split). Photon-sum filters select events as the published work does (e.g. photon sum >= 1).

Legend: B events in a batch, H x W image, 9 conditions, 5 channels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from expertsim.errors import ConfigError
from expertsim.eventfile import EventFile


@dataclass
class Batch:
    """One batch as numpy arrays (the trainer moves them to its device)."""

    images: np.ndarray  # (B, H, W) float32, log(1 + photons) unless the loader's log_images=False
    conditions: np.ndarray  # (B, 9) float32, standardised unless scale_conditions=False
    photon_sum: np.ndarray  # (B,) float64, photons
    channels: np.ndarray  # (B, 5) float32, photons
    brightest: np.ndarray  # (B, 2) int16, (row, column); -1 for empty events
    spread: np.ndarray  # (B,) float32, photons; NaN where the condition has one response
    group: np.ndarray  # (B,) int8 intensity group
    index: np.ndarray  # (B,) int64 event index in the file

    def __len__(self) -> int:
        return len(self.index)


_PER_EVENT_NAMES = ("photon_sum", "channels", "brightest", "spread", "group")


class EventLoader:
    """Iterable over :class:`Batch` es of one split of an event file.

    Args:
        path: the event file.
        split: "train", "val", "test" or "all".
        batch_size: events per batch (the global batch under DDP).
        seed: shuffling seed; epoch ``e`` uses the stream (seed, e).
        shuffle: shuffle chunk order and events within the buffer.
        min_photon_sum, max_photon_sum: keep events with min <= photon sum <= max (photons).
        memory_limit_bytes: bound on the image memory the loader holds (buffer, slab read and
            one batch); per-event scalars (~110 bytes an event) are held besides.
        drop_last: drop a final incomplete batch.
        log_images, scale_conditions: apply the standard transforms.
        rank, world_size: under DDP each rank receives its contiguous slice of every global
            batch, so the mean gradient over ranks equals the single-process one.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        split: str = "train",
        batch_size: int = 512,
        seed: int = 0,
        shuffle: bool = True,
        min_photon_sum: float | None = None,
        max_photon_sum: float | None = None,
        memory_limit_bytes: int = 512 * 2 ** 20,
        drop_last: bool = False,
        log_images: bool = True,
        scale_conditions: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is not in [0, world_size={world_size})")
        if batch_size % world_size:
            raise ConfigError(
                f"batch_size {batch_size} must be divisible by world_size {world_size}")
        self.path = Path(path)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.log_images = log_images
        self.scale_conditions = scale_conditions
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

        with EventFile(path) as events:
            self.info = events.info
            self.indices = events.rows(split, min_photon_sum, max_photon_sum)
            self.scaler = events.scaler()
            # Per-event scalars are small (~110 bytes an event): held in memory; images stream.
            self._per_event = {name: events.derived(name) for name in _PER_EVENT_NAMES}
            self._conditions_N9 = events.conditions()
        if len(self.indices) == 0:
            raise ConfigError(
                f"{path}: no events in split {split!r} with photon sum in "
                f"[{min_photon_sum}, {max_photon_sum}]")

        self._plan_pieces(memory_limit_bytes)

    def _plan_pieces(self, memory_limit_bytes: int) -> None:
        """Size the shuffle buffer under the memory limit and cut the selected events into
        pieces (whole HDF5 chunks when they fit) that are read as single slabs."""
        # Memory: a slab read (raw), the selected events, the shuffled buffer and one batch
        # (raw + float32). Slabs are whole chunks when they fit, else pieces of a chunk.
        batch_size, chunk = self.batch_size, self.info.chunk_events
        rows, cols = self.info.detector.shape
        raw_bytes = rows * cols * self.info.image_dtype.itemsize
        batch_bytes = batch_size * (raw_bytes + rows * cols * 4 + 128)
        budget = memory_limit_bytes - batch_bytes
        self.buffer_events = int(budget // (3 * raw_bytes + 64))
        if self.buffer_events < batch_size:
            raise ConfigError(
                f"memory_limit_bytes={memory_limit_bytes} cannot hold a buffer of one batch of "
                f"{batch_size} events (needs ~{batch_bytes + batch_size * (3 * raw_bytes + 64)} "
                "bytes); raise the limit or lower the batch size")
        # A buffer holds at most buffer_events: a carried partial batch plus whole pieces.
        piece = min(chunk, self.buffer_events - batch_size + 1)
        piece_of_event = self.indices // chunk * (-(-chunk // piece)) + self.indices % chunk // piece
        self._piece_ids, starts = np.unique(piece_of_event, return_index=True)
        self._piece_members = np.split(self.indices, starts[1:])

    def __len__(self) -> int:
        full, rest = divmod(len(self.indices), self.batch_size)
        return full + (0 if self.drop_last or rest == 0 else 1)

    @property
    def n_events(self) -> int:
        return len(self.indices)

    def column(self, name: str) -> np.ndarray:
        """A per-event quantity (photon_sum, channels, brightest, spread, group) of the
        loader's events, in file order."""
        if name not in self._per_event:
            raise ConfigError(f"no per-event column {name!r}; have {sorted(self._per_event)}")
        return self._per_event[name][self.indices]

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of epoch ``epoch`` (iteration also advances it by one)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        order = (rng.permutation(len(self._piece_ids)) if self.shuffle
                 else np.arange(len(self._piece_ids)))
        chunk_bytes = self.info.chunk_events * np.prod(self.info.detector.shape) * 8
        # An HDF5 chunk cache of about one decompressed chunk: the loader reads each piece once.
        with EventFile(self.path, chunk_cache_bytes=int(chunk_bytes)) as events:
            index_B = np.empty(0, dtype=np.int64)
            images_BHW = np.empty((0, *self.info.detector.shape), dtype=self.info.image_dtype)
            position = 0
            while position < len(order):
                parts_index, parts_images = [index_B], [images_BHW]
                filled = len(index_B)
                while position < len(order):
                    members = self._piece_members[order[position]]
                    if filled + len(members) > self.buffer_events and len(parts_index) > 1:
                        break
                    slab = events.image_range(members[0], members[-1] + 1)
                    parts_index.append(members)
                    parts_images.append(slab[members - members[0]])
                    filled += len(members)
                    position += 1
                    del slab
                index_B = np.concatenate(parts_index)
                images_BHW = np.concatenate(parts_images)
                del parts_index, parts_images
                if self.shuffle:
                    permutation = rng.permutation(len(index_B))
                    index_B, images_BHW = index_B[permutation], images_BHW[permutation]
                is_last = position >= len(order)
                n_full = len(index_B) // self.batch_size * self.batch_size
                stop = len(index_B) if is_last and not self.drop_last else n_full
                for begin in range(0, stop, self.batch_size):
                    end = min(begin + self.batch_size, stop)
                    yield self._make_batch(index_B[begin:end], images_BHW[begin:end])
                index_B, images_BHW = index_B[n_full:].copy(), images_BHW[n_full:].copy()

    def _make_batch(self, index_B: np.ndarray, raw_BHW: np.ndarray) -> Batch:
        if self.world_size > 1:
            share = len(index_B) // self.world_size
            part = slice(self.rank * share, (self.rank + 1) * share)
            index_B, raw_BHW = index_B[part], raw_BHW[part]
        fields = {name: values[index_B] for name, values in self._per_event.items()}
        conditions_B9 = self._conditions_N9[index_B]
        if self.scale_conditions:
            conditions_B9 = self.scaler.transform(conditions_B9)
        images_BHW = raw_BHW.astype(np.float32)
        if self.log_images:
            np.log1p(images_BHW, out=images_BHW)
        return Batch(images=images_BHW, conditions=conditions_B9.astype(np.float32),
                     index=index_B, **fields)
