"""The HDF5 event file: the one place that knows its keys, dtypes, attributes and checks.

Layout (schema version 1), N events of a detector with image shape (H, W):

    /images               (N, H, W)  photon counts per fibre; uint16/uint32 (simulated or
                                     converted Monte Carlo) or float32 (generated); chunked
                                     along N and gzip-compressed
    /conditions           (N, 9)     float32; attrs ``columns`` and ``units``
    /pdg                  (N,)       int32 PDG id (optional)
    /derived/photon_sum   (N,)       float64, photons
    /derived/channels     (N, 5)     float32, the ALICE channel sums (expertsim.detector)
    /derived/brightest    (N, 2)     int16 (row, column) of the brightest fibre, -1 if empty
    /derived/condition_id (N,)       int64, equal for events with identical conditions
    /derived/spread       (N,)       float32, std of the photon sum over the events sharing the
                                     event's conditions (the SDI diversity weight); NaN where a
                                     condition has a single response
    /derived/group        (N,)       int8 intensity group 0/1/2 (low/medium/high photon sum);
                                     attr ``thresholds`` = the photon-sum edges
    /split                (N,)       uint8 0 = train, 1 = validation, 2 = test; attrs ``seed``,
                                     ``fractions``; repeats of one condition share a split
    /scaler/mean, /scaler/scale (9,) float64 condition standardisation fitted on the train split
    /expert, /source_row  (N,)       sample files only: the routed expert, the condition's row
                                     in the conditions file the sampler read

    file attrs: schema_version, detector ("ZN"/"ZP"), image_shape, n_events, provenance (JSON)

Files are written to a temporary name beside the target and renamed when complete, so a
crash never leaves a half-written event file under the final name. Reading goes through
:class:`EventFile` (rows by split and photon-sum window, conditions, images, derived columns,
the stored scaler); the input checks of images and conditions live here too.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from expertsim.detector import (Detector, brightest_fibre, channel_sums, detector_for_shape,
                                get_detector, photon_sums)
from expertsim.errors import ConfigError, DataSchemaError
from expertsim.fileio import atomic_path
from expertsim.provenance import to_json
from expertsim.scaler import Scaler

SCHEMA_VERSION = 1
CONDITION_COLUMNS = ("E", "vx", "vy", "vz", "px", "py", "pz", "mass", "charge")
CONDITION_UNITS = ("GeV", "cm", "cm", "cm", "GeV/c", "GeV/c", "GeV/c", "MeV/c^2", "e")
SPLIT_NAMES = {"train": 0, "val": 1, "test": 2}
DEFAULT_SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
CHUNK_EVENTS = 512
DERIVED_KEYS = ("photon_sum", "channels", "brightest", "condition_id", "spread", "group")


def _chunk_events(n_events: int) -> int:
    return max(1, min(CHUNK_EVENTS, n_events))


class EventFileWriter:
    """Streams events into a new event file; use as a context manager.

    >>> # with EventFileWriter("zn.h5", "ZN", n_events=1000, provenance=prov) as writer:
    >>> #     writer.write(0, images_NHW, conditions_N9)
    """

    def __init__(
        self,
        path: str | os.PathLike,
        detector: str | Detector,
        n_events: int,
        *,
        provenance: dict[str, Any],
        with_pdg: bool = False,
        image_dtype: str | np.dtype = np.uint16,
        split_seed: int = 0,
        split_fractions: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS,
        extras: dict[str, np.ndarray] | None = None,
    ) -> None:
        """``extras``: further per-event arrays (N,), written when the file is complete (the
        caller may fill them while writing events)."""
        if n_events < 1:
            raise DataSchemaError(f"{path}: an event file needs at least one event, got {n_events}")
        check_split_fractions(split_fractions)
        self.path = Path(path)
        self.detector = detector if isinstance(detector, Detector) else get_detector(detector)
        self.n_events = int(n_events)
        self.provenance = provenance
        self.with_pdg = with_pdg
        self.image_dtype = np.dtype(image_dtype)
        self.split_seed = int(split_seed)
        self.split_fractions = tuple(float(f) for f in split_fractions)
        self.extras = extras or {}
        for name, values in self.extras.items():
            if name in ("images", "conditions", "pdg", "split", "derived", "scaler") or \
                    len(values) != n_events:
                raise DataSchemaError(f"{path}: extra dataset {name!r} must be a new name with "
                                      f"{n_events} values")
        self._written = 0
        self._atomic: contextlib.AbstractContextManager | None = None
        self._file: h5py.File | None = None

    def __enter__(self) -> "EventFileWriter":
        self._atomic = atomic_path(self.path)
        temporary = self._atomic.__enter__()
        self._file = h5py.File(temporary, "w")
        n, (rows, cols) = self.n_events, self.detector.shape
        chunk = _chunk_events(n)
        self._file.create_dataset(
            "images", shape=(n, rows, cols), dtype=self.image_dtype,
            chunks=(chunk, rows, cols), compression="gzip", compression_opts=1, shuffle=True,
        )
        conditions = self._file.create_dataset(
            "conditions", shape=(n, len(CONDITION_COLUMNS)), dtype=np.float32,
            chunks=(min(n, 65536), len(CONDITION_COLUMNS)),
        )
        conditions.attrs["columns"] = list(CONDITION_COLUMNS)
        conditions.attrs["units"] = list(CONDITION_UNITS)
        if self.with_pdg:
            self._file.create_dataset("pdg", shape=(n,), dtype=np.int32)
        return self

    def write(self, start: int, images_NHW: np.ndarray, conditions_N9: np.ndarray,
              pdg_N: np.ndarray | None = None) -> None:
        """Write a block of events at rows ``start .. start + len(images)``."""
        assert self._file is not None, "use EventFileWriter as a context manager"
        stop = start + len(images_NHW)
        if self.image_dtype.kind in "ui":
            maximum = np.iinfo(self.image_dtype).max
            if len(images_NHW) and images_NHW.max() > maximum:
                raise DataSchemaError(
                    f"{self.path}: a fibre holds {images_NHW.max()} photons, more than "
                    f"{self.image_dtype} can store; write with image_dtype=uint32")
        self._file["images"][start:stop] = images_NHW
        self._file["conditions"][start:stop] = conditions_N9
        if self.with_pdg:
            if pdg_N is None:
                raise DataSchemaError(f"{self.path}: this file was opened with PDG ids; pass pdg")
            self._file["pdg"][start:stop] = pdg_N
        self._written += stop - start

    def __exit__(self, exc_type, exc, traceback) -> None:
        assert self._file is not None and self._atomic is not None
        failure = exc
        try:
            if exc_type is None:
                if self._written != self.n_events:
                    raise DataSchemaError(
                        f"{self.path}: {self._written} of {self.n_events} events were written")
                for name, values in self.extras.items():
                    self._file.create_dataset(name, data=values, compression="gzip",
                                              compression_opts=1)
                finalize(self._file, self.detector, self.provenance,
                         split_seed=self.split_seed, split_fractions=self.split_fractions)
        except BaseException as error:
            failure = error
            raise
        finally:
            self._file.close()
            if failure is None:
                self._atomic.__exit__(None, None, None)
            else:
                # Throw into the generator so that it deletes the temporary file.
                with contextlib.suppress(type(failure)):
                    self._atomic.__exit__(type(failure), failure, failure.__traceback__)


def check_split_fractions(fractions: tuple[float, float, float]) -> None:
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise DataSchemaError(
            f"split fractions {fractions} must be three non-negative numbers "
            "(train, validation, test) that add up to 1")


def write_event_file(
    path: str | os.PathLike,
    images_NHW: np.ndarray,
    conditions_N9: np.ndarray,
    *,
    detector: str | Detector,
    provenance: dict[str, Any],
    pdg_N: np.ndarray | None = None,
    split_seed: int = 0,
    split_fractions: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS,
) -> None:
    """Write in-memory arrays as a complete event file (derived quantities, split, scaler)."""
    images_NHW = np.asarray(images_NHW)
    if images_NHW.dtype.kind == "f":
        dtype = np.float32
    else:
        dtype = np.uint16 if images_NHW.size == 0 or images_NHW.max() <= 65535 else np.uint32
    with EventFileWriter(path, detector, len(images_NHW), provenance=provenance,
                         with_pdg=pdg_N is not None, image_dtype=dtype,
                         split_seed=split_seed, split_fractions=split_fractions) as writer:
        for start in range(0, len(images_NHW), 65536):
            stop = start + 65536
            writer.write(start, images_NHW[start:stop], conditions_N9[start:stop],
                         None if pdg_N is None else pdg_N[start:stop])


def _iter_blocks(n_events: int, block: int = 16384) -> Iterator[slice]:
    for start in range(0, n_events, block):
        yield slice(start, min(start + block, n_events))


def finalize(handle: h5py.File, detector: Detector, provenance: dict[str, Any], *,
             split_seed: int, split_fractions: tuple[float, float, float]) -> None:
    """Compute and store derived quantities, split, scaler and file attributes in place."""
    images = handle["images"]
    n_events = images.shape[0]
    conditions_N9 = handle["conditions"][:].astype(np.float64)
    photon_sum_N = np.empty(n_events)
    channels_NC = np.empty((n_events, 5), dtype=np.float32)
    brightest_N2 = np.empty((n_events, 2), dtype=np.int16)
    for block in _iter_blocks(n_events):
        images_BHW = images[block]
        photon_sum_N[block] = photon_sums(images_BHW)
        channels_NC[block] = channel_sums(images_BHW)
        brightest_N2[block] = brightest_fibre(images_BHW)

    _, condition_id_N = np.unique(conditions_N9, axis=0, return_inverse=True)
    condition_id_N = condition_id_N.ravel().astype(np.int64)
    spread_N = condition_spread(photon_sum_N, condition_id_N)
    split_N = assign_split(condition_id_N, split_seed, split_fractions)
    train = split_N == SPLIT_NAMES["train"]
    if not train.any():
        train = np.ones(n_events, dtype=bool)
    thresholds = intensity_thresholds(photon_sum_N[train])
    group_N = np.digitize(photon_sum_N, thresholds).astype(np.int8)
    scaler = Scaler.fit(conditions_N9[train])

    derived = handle.require_group("derived")
    for key, values in (("photon_sum", photon_sum_N), ("channels", channels_NC),
                        ("brightest", brightest_N2), ("condition_id", condition_id_N),
                        ("spread", spread_N.astype(np.float32)), ("group", group_N)):
        if key in derived:
            del derived[key]
        derived.create_dataset(key, data=values, compression="gzip", compression_opts=1)
    derived["group"].attrs["thresholds"] = thresholds
    derived["group"].attrs["rule"] = (
        "group = number of thresholds <= photon_sum; thresholds are the 1/3 and 2/3 quantiles "
        "of the non-empty photon sums of the train split")
    if "split" in handle:
        del handle["split"]
    split = handle.create_dataset("split", data=split_N)
    split.attrs["seed"] = split_seed
    split.attrs["fractions"] = np.asarray(split_fractions)
    split.attrs["names"] = json.dumps(SPLIT_NAMES)
    group = handle.require_group("scaler")
    for key, values in (("mean", scaler.mean), ("scale", scaler.scale)):
        if key in group:
            del group[key]
        group.create_dataset(key, data=values)
    group.attrs["fitted_on"] = "train split"
    handle.attrs["schema_version"] = SCHEMA_VERSION
    handle.attrs["detector"] = detector.name
    handle.attrs["image_shape"] = np.asarray(detector.shape)
    handle.attrs["n_events"] = n_events
    handle.attrs["provenance"] = to_json(provenance)


def condition_spread(photon_sum_N: np.ndarray, condition_id_N: np.ndarray) -> np.ndarray:
    """Std (photons) of the photon sum over events sharing a condition; NaN for single events."""
    counts = np.bincount(condition_id_N)
    total = np.bincount(condition_id_N, weights=photon_sum_N)
    total_sq = np.bincount(condition_id_N, weights=photon_sum_N ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / counts
        variance = np.maximum(total_sq / counts - mean ** 2, 0.0) * counts / (counts - 1)
    spread = np.sqrt(variance)
    spread[counts < 2] = np.nan
    return spread[condition_id_N]


def assign_split(condition_id_N: np.ndarray, seed: int,
                 fractions: tuple[float, float, float]) -> np.ndarray:
    """Split label per event; all events of one condition land in the same split."""
    check_split_fractions(fractions)
    n_conditions = int(condition_id_N.max()) + 1 if len(condition_id_N) else 0
    order = np.random.default_rng(seed).permutation(n_conditions)
    edges = np.round(np.cumsum(fractions)[:2] * n_conditions).astype(int)
    label_of_condition = np.empty(n_conditions, dtype=np.uint8)
    label_of_condition[order[:edges[0]]] = 0
    label_of_condition[order[edges[0]:edges[1]]] = 1
    label_of_condition[order[edges[1]:]] = 2
    return label_of_condition[condition_id_N]


def intensity_thresholds(photon_sum_N: np.ndarray) -> np.ndarray:
    """Photon-sum edges (2,) between low, medium and high: tertiles of the non-empty events."""
    non_empty = photon_sum_N[photon_sum_N > 0]
    if len(non_empty) == 0:
        return np.array([1.0, 2.0])
    low, high = np.quantile(non_empty, [1 / 3, 2 / 3])
    return np.array([max(low, 1.0), max(high, low + 1.0)])


# ---------------------------------------------------------------- reading and checking


@dataclass(frozen=True)
class EventFileInfo:
    """What a checked event file holds (read from its attributes, no event data)."""

    path: Path
    detector: Detector
    n_events: int
    has_pdg: bool
    image_dtype: np.dtype
    chunk_events: int
    provenance: dict[str, Any]


def open_event_file(path: str | os.PathLike) -> h5py.File:
    """Open an HDF5 file read-only, turning library errors into a DataSchemaError."""
    path = Path(path)
    if not path.exists():
        raise DataSchemaError(f"{path}: no such file")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise DataSchemaError(
            f"{path}: cannot be read as HDF5 ({error.__class__.__name__}); the file is truncated "
            "or not HDF5: re-create it (expertsim simulate / expertsim prepare)") from None


def check_raw(handle: h5py.File, path: Path) -> tuple[Detector, int]:
    """Check the keys every event file needs (images, conditions); return detector and N."""
    for key in ("images", "conditions"):
        if key not in handle:
            raise DataSchemaError(f"{path}: missing dataset '/{key}'")
    images, conditions = handle["images"], handle["conditions"]
    if images.ndim != 3:
        raise DataSchemaError(f"{path}: '/images' must have shape (N, H, W), has {images.shape}")
    detector_name = handle.attrs.get("detector")
    if detector_name is None:
        detector = detector_for_shape(images.shape[1:])
    else:
        detector = get_detector(_as_str(detector_name))
        if tuple(images.shape[1:]) != detector.shape:
            raise DataSchemaError(
                f"{path}: '/images' has image shape {images.shape[1:]}, but attribute "
                f"detector={detector.name} needs {detector.shape}")
    n_events = images.shape[0]
    if conditions.shape != (n_events, len(CONDITION_COLUMNS)):
        raise DataSchemaError(
            f"{path}: '/conditions' must have shape ({n_events}, 9), has {conditions.shape}")
    if "pdg" in handle and handle["pdg"].shape != (n_events,):
        raise DataSchemaError(f"{path}: '/pdg' must have shape ({n_events},)")
    return detector, n_events


def check_event_file(path: str | os.PathLike) -> EventFileInfo:
    """Check a complete event file's keys, shapes and attributes; return what it holds.

    Raises DataSchemaError naming the file and the missing or malformed key.
    """
    path = Path(path)
    with open_event_file(path) as handle:
        try:
            return _check_complete(handle, path)
        except (OSError, KeyError, RuntimeError) as error:
            raise DataSchemaError(
                f"{path}: damaged HDF5 content ({error}); re-create the file") from None


def _check_complete(handle: h5py.File, path: Path) -> EventFileInfo:
    detector, n_events = check_raw(handle, path)
    version = handle.attrs.get("schema_version")
    if version is None:
        raise DataSchemaError(
            f"{path}: no 'schema_version' attribute: not a prepared event file; convert it with "
            "'expertsim prepare h5'")
    if int(version) != SCHEMA_VERSION:
        raise DataSchemaError(
            f"{path}: schema_version {int(version)} is not supported (this package reads "
            f"{SCHEMA_VERSION})")
    expected = {
        "derived/photon_sum": (n_events,), "derived/channels": (n_events, 5),
        "derived/brightest": (n_events, 2), "derived/condition_id": (n_events,),
        "derived/spread": (n_events,), "derived/group": (n_events,), "split": (n_events,),
        "scaler/mean": (9,), "scaler/scale": (9,),
    }
    for key, shape in expected.items():
        if key not in handle:
            raise DataSchemaError(
                f"{path}: missing dataset '/{key}'; re-derive with 'expertsim prepare h5'")
        if handle[key].shape != shape:
            raise DataSchemaError(
                f"{path}: dataset '/{key}' has shape {handle[key].shape}, expected {shape}")
    _check_values(handle, path)
    images = handle["images"]
    return EventFileInfo(
        path=path, detector=detector, n_events=n_events, has_pdg="pdg" in handle,
        image_dtype=images.dtype, chunk_events=(images.chunks or (n_events,))[0],
        provenance=json.loads(_as_str(handle.attrs.get("provenance", "{}"))),
    )


def _check_values(handle: h5py.File, path: Path) -> None:
    """Per-event numbers must be usable: finite conditions, finite non-negative photon sums
    (the images themselves are checked as they are read, see :meth:`EventFile.images`)."""
    conditions_N9 = handle["conditions"][:]
    finite = np.isfinite(conditions_N9)
    if not finite.all():
        row, column = (int(v[0]) for v in np.nonzero(~finite))
        raise DataSchemaError(
            f"{path}: '/conditions' holds NaN or inf (first at event {row}, column "
            f"{CONDITION_COLUMNS[column]}); drop or fix those events and re-derive the file "
            "('expertsim prepare h5')")
    photon_sum_N = handle["derived/photon_sum"][:]
    bad = ~(np.isfinite(photon_sum_N) & (photon_sum_N >= 0))
    if bad.any():
        raise DataSchemaError(
            f"{path}: '/derived/photon_sum' holds NaN, inf or a negative sum (first at event "
            f"{int(np.flatnonzero(bad)[0])}); the images are not photon counts: fix them and "
            "re-derive the file ('expertsim prepare h5')")


def check_image_values(images_NHW: np.ndarray, path: Path, first_row: int | np.ndarray = 0
                       ) -> np.ndarray:
    """Refuse (DataSchemaError) images that are not photon counts: NaN, inf or negative
    values (float images only: unsigned integers cannot hold them). ``first_row``: the file
    row of images_NHW[0], or the file rows of all of them, for the message."""
    if images_NHW.dtype.kind not in "fi" or images_NHW.size == 0:
        return images_NHW
    flat = images_NHW.reshape(len(images_NHW), -1)
    bad = ~(np.isfinite(flat) & (flat >= 0)).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        row = first_row[first] if isinstance(first_row, np.ndarray) else first_row + first
        raise DataSchemaError(
            f"{path}: '/images' holds NaN, inf or negative photon counts (first at event "
            f"{int(row)}); fix the images and re-derive the file ('expertsim prepare h5')")
    return images_NHW


@contextlib.contextmanager
def _reading(path: Path, key: str) -> Iterator[None]:
    """Turn HDF5 read failures (a damaged chunk, a failed decompression) into a
    DataSchemaError naming the file and the dataset."""
    try:
        yield
    except (OSError, RuntimeError, KeyError) as error:
        raise DataSchemaError(
            f"{path}: damaged HDF5 content in '/{key}' ({str(error).splitlines()[0][:120]}); "
            "re-create or re-copy the file") from None


def _as_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)



# ---------------------------------------------------------------- input checks


def check_images(images: np.ndarray, source: str) -> tuple[np.ndarray, Detector]:
    """Validate an (N, H, W) image array of photon counts; return it and its detector."""
    if images.ndim != 3:
        raise DataSchemaError(f"{source}: images must have shape (N, H, W), got {images.shape}")
    if images.dtype.kind not in "uif":
        raise DataSchemaError(f"{source}: images must be numeric, got dtype {images.dtype}")
    try:
        detector = detector_for_shape(images.shape[1:])
    except DataSchemaError as error:
        raise DataSchemaError(f"{source}: {error}") from None
    if images.dtype.kind == "f":
        if not np.isfinite(images).all():
            bad = int(np.flatnonzero(~np.isfinite(images).reshape(len(images), -1).all(1))[0])
            raise DataSchemaError(f"{source}: images hold NaN or inf (first at event {bad})")
        if np.array_equal(images, np.round(images)):
            images = images.astype(np.int64)
    if images.size and images.min() < 0:
        bad = int(np.flatnonzero(images.reshape(len(images), -1).min(1) < 0)[0])
        raise DataSchemaError(f"{source}: images hold negative photon counts (first at event {bad})")
    return images, detector


def check_conditions(conditions: np.ndarray, n_events: int, source: str) -> np.ndarray:
    """Validate (N, 9) finite conditions; return them as float64."""
    if conditions.ndim != 2 or conditions.shape != (n_events, len(CONDITION_COLUMNS)):
        raise DataSchemaError(
            f"{source}: conditions must have shape ({n_events}, 9), got {conditions.shape}")
    if conditions.dtype.kind not in "uif":
        raise DataSchemaError(f"{source}: conditions must be numeric, got {conditions.dtype}")
    finite = np.isfinite(conditions)
    if not finite.all():
        row, column = (int(v[0]) for v in np.nonzero(~finite))
        raise DataSchemaError(
            f"{source}: conditions hold NaN or inf (first at event {row}, column {column}); "
            "drop or fix those events first")
    return conditions.astype(np.float64)


# ---------------------------------------------------------------- reading


def select_rows(split_N: np.ndarray, photon_sum_N: np.ndarray, *, split: str = "all",
                min_photon_sum: float | None = None,
                max_photon_sum: float | None = None) -> np.ndarray:
    """Indices (sorted) of the events of ``split`` ("train", "val", "test" or "all") whose
    photon sum lies in [min_photon_sum, max_photon_sum] (photons; None = unbounded)."""
    if split not in (*SPLIT_NAMES, "all"):
        raise ConfigError(f"split {split!r} is not one of {[*SPLIT_NAMES, 'all']}")
    keep = np.ones(len(split_N), dtype=bool)
    if split != "all":
        keep &= split_N == SPLIT_NAMES[split]
    if min_photon_sum is not None:
        keep &= photon_sum_N >= min_photon_sum
    if max_photon_sum is not None:
        keep &= photon_sum_N <= max_photon_sum
    return np.flatnonzero(keep)



class EventFile:
    """Read access to one complete (checked) event file; use as a context manager.

    Every reader takes ``rows``: None for all events, a slice, or an index array (any order,
    repeats allowed). Per-event columns are read whole and indexed in memory; images are read
    row by row from HDF5 only for the rows asked for.

    >>> # with EventFile("zn.h5") as events:
    >>> #     rows = events.rows(split="test", min_photon_sum=1)
    >>> #     conditions_N9, channels_N5 = events.conditions(rows), events.derived("channels", rows)

    Args:
        path: the event file.
        chunk_cache_bytes: HDF5 chunk cache for streaming reads of ``image_dataset``.
    """

    def __init__(self, path: str | os.PathLike, *, chunk_cache_bytes: int | None = None) -> None:
        self.info = check_event_file(path)
        self.path = self.info.path
        options = {} if chunk_cache_bytes is None else {"rdcc_nbytes": int(chunk_cache_bytes)}
        self._handle = h5py.File(self.path, "r", **options)

    def __enter__(self) -> "EventFile":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._handle.close()

    @property
    def detector(self) -> Detector:
        return self.info.detector

    @property
    def n_events(self) -> int:
        return self.info.n_events

    def rows(self, split: str = "all", min_photon_sum: float | None = None,
             max_photon_sum: float | None = None) -> np.ndarray:
        """Sorted indices of the events of a split within a photon-sum window (photons)."""
        return select_rows(self.split_labels(), self.derived("photon_sum"), split=split,
                           min_photon_sum=min_photon_sum, max_photon_sum=max_photon_sum)

    def _column(self, key: str, rows: np.ndarray | slice | None) -> np.ndarray:
        with _reading(self.path, key):
            dataset = self._handle[key]
            if isinstance(rows, slice):
                return dataset[rows]
            values = dataset[:]
        return values if rows is None else values[rows]

    def conditions(self, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """Raw conditions (N, 9), float64, in the units of ``CONDITION_UNITS``."""
        return self._column("conditions", rows).astype(np.float64)

    def split_labels(self, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """Split label per event (0 train, 1 validation, 2 test), uint8."""
        return self._column("split", rows)

    def derived(self, name: str, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """A derived per-event quantity: one of ``DERIVED_KEYS`` (see the module docstring)."""
        if name not in DERIVED_KEYS:
            raise ConfigError(f"no derived quantity {name!r}; have {list(DERIVED_KEYS)}")
        return self._column(f"derived/{name}", rows)

    def pdg(self, rows: np.ndarray | slice | None = None) -> np.ndarray | None:
        """PDG ids (N,), or None when the file has none."""
        return self._column("pdg", rows) if self.info.has_pdg else None

    def extra(self, name: str, rows: np.ndarray | slice | None = None) -> np.ndarray | None:
        """A sample file's extra per-event array ("expert", "source_row"), or None."""
        if name in ("images", "conditions", "pdg", "split", "derived", "scaler"):
            raise ConfigError(f"{name!r} is not an extra dataset")
        return self._column(name, rows) if name in self._handle else None

    def images(self, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """Photon counts (N, H, W) in the stored dtype (checked: see check_image_values)."""
        dataset = self._handle["images"]
        if rows is None or isinstance(rows, slice):
            rows = slice(None) if rows is None else rows
            return self.image_range(*rows.indices(self.n_events)[:2]) if rows.step in (None, 1) \
                else self.images(np.arange(self.n_events)[rows])
        rows = np.asarray(rows, dtype=np.int64)
        unique, inverse = np.unique(rows, return_inverse=True)
        with _reading(self.path, "images"):
            images = dataset[unique] if len(unique) else dataset[:0]
        check_image_values(images, self.path, unique)
        if len(unique) == len(rows) and np.array_equal(unique, rows):
            return images
        return images[inverse.ravel()]

    def image_range(self, start: int, stop: int) -> np.ndarray:
        """Photon counts of the events [start, stop) (N, H, W), read as one slab (checked)."""
        with _reading(self.path, "images"):
            images = self._handle["images"][start:stop]
        return check_image_values(images, self.path, start)

    def scaler(self) -> Scaler:
        """The condition scaler stored with the file (fitted on its train split)."""
        return Scaler(self._handle["scaler/mean"][:], self._handle["scaler/scale"][:])

    def group_thresholds(self) -> np.ndarray:
        """Photon-sum edges (2,) between the low, medium and high intensity groups."""
        return self._handle["derived/group"].attrs["thresholds"]


def read_columns(path: str | os.PathLike, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Whole per-event arrays other than images (e.g. "derived/photon_sum", "split")."""
    with open_event_file(path) as handle:
        missing = [key for key in keys if key not in handle]
        if missing:
            raise DataSchemaError(f"{path}: missing dataset(s) {missing}")
        return {key: handle[key][:] for key in keys}


def read_raw_events(path: str | os.PathLike
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, Detector]:
    """Images, conditions, PDG ids (or None) and detector of an HDF5 file holding at least
    /images and /conditions (a raw file, before derived quantities and split exist)."""
    path = Path(path)
    with open_event_file(path) as handle:
        try:
            detector, _ = check_raw(handle, path)
            return (handle["images"][:], handle["conditions"][:],
                    handle["pdg"][:] if "pdg" in handle else None, detector)
        except (OSError, KeyError, RuntimeError) as error:
            raise DataSchemaError(f"{path}: damaged HDF5 content ({error})") from None


def read_raw_conditions(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Conditions (N, 9) as stored and PDG ids (or None) of any HDF5 file with /conditions."""
    with open_event_file(path) as handle:
        if "conditions" not in handle:
            raise DataSchemaError(f"{path}: missing dataset '/conditions'")
        return handle["conditions"][:], (handle["pdg"][:] if "pdg" in handle else None)


def summarize(path: str | os.PathLike) -> dict[str, Any]:
    """Summary of an event file: detector, N, condition ranges, photon-sum quantiles, empties."""
    with EventFile(path) as events:
        info = events.info
        conditions_N9 = events.conditions()
        photon_sum_N = events.derived("photon_sum")
        split_N = events.split_labels()
        thresholds = events.group_thresholds()
        zero_fibres = sum(int((events.images(block) == 0).sum())
                          for block in _iter_blocks(info.n_events))
    non_empty = photon_sum_N[photon_sum_N > 0]
    quantiles = (0.0, 0.25, 0.5, 0.75, 0.99, 1.0)
    return {
        "file": str(info.path),
        "detector": info.detector.name,
        "image_shape": list(info.detector.shape),
        "n_events": info.n_events,
        "split_counts": {name: int((split_N == label).sum()) for name, label in SPLIT_NAMES.items()},
        "fraction_empty": float((photon_sum_N <= 0).mean()),
        "fraction_zero_fibres": zero_fibres / (info.n_events * info.detector.n_fibres),
        "photon_sum_quantiles_non_empty": (
            {f"q{int(q * 100)}": float(np.quantile(non_empty, q)) for q in quantiles}
            if len(non_empty) else {}),
        "intensity_thresholds": [float(t) for t in thresholds],
        "conditions": {
            f"{name} [{unit}]": {"min": float(conditions_N9[:, k].min()),
                                 "mean": float(conditions_N9[:, k].mean()),
                                 "max": float(conditions_N9[:, k].max())}
            for k, (name, unit) in enumerate(zip(CONDITION_COLUMNS, CONDITION_UNITS))},
        "provenance": info.provenance,
    }
