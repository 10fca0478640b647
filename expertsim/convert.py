"""Converters from the formats ZDC users already have to event files (SOURCES.md).

Supported:
- the flow-matching pair: ``data_nonrandom_responses.npz`` (key arr_0, N x 44 x 44 counts) and
  ``data_nonrandom_particles.npz`` (key arr_0, N x 10: the nine conditions, then the PDG id);
- a generic npz with ``images`` (N, H, W) and ``conditions`` (N, 9), optional ``pdg`` (N,);
- the ExpertSim / SDI-GAN pandas pickles (images; conditions DataFrame with columns Energy,
  Vx, Vy, Vz, Px, Py, Pz, mass, charge; optional positions DataFrame). Unpickling runs code
  stored in the file, so it needs ``trust_pickle=True``;
- an HDF5 file holding at least ``/images`` and ``/conditions`` (re-derives everything else).

Every check raises DataSchemaError naming the file and key; nothing is written unless the whole
input is valid, and the output is renamed into place only when complete.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from expertsim.detector import Detector, get_detector
from expertsim.errors import DataSchemaError, TrustError
from expertsim.eventfile import (DEFAULT_SPLIT_FRACTIONS, check_conditions, check_images,
                                 read_raw_events, write_event_file)
from expertsim.provenance import make_provenance

PICKLE_CONDITION_COLUMNS = ("Energy", "Vx", "Vy", "Vz", "Px", "Py", "Pz", "mass", "charge")


def load_npz_key(path: Path, key: str) -> np.ndarray:
    """One array of an npz archive (no pickles); DataSchemaError naming the file and key."""
    if not path.exists():
        raise DataSchemaError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if key not in archive.files:
                raise DataSchemaError(
                    f"{path}: missing key {key!r} (keys present: {sorted(archive.files)})")
            return archive[key]
    except ValueError as error:
        if "pickle" in str(error).lower():
            raise DataSchemaError(
                f"{path}: key {key!r} holds Python objects, which would need unpickling; "
                "store plain numeric arrays") from None
        raise DataSchemaError(f"{path}: cannot read key {key!r}: {error}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        raise DataSchemaError(f"{path}: not a readable npz archive ({error or 'empty file'})"
                              ) from None


def npz_keys(path: Path) -> list[str]:
    """The keys of an npz archive; DataSchemaError when it is not one."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return list(archive.files)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise DataSchemaError(f"{path}: not a readable npz archive ({error or 'empty file'})"
                              ) from None


def _finish(output: Path, images: np.ndarray, conditions: np.ndarray, pdg: np.ndarray | None,
            detector: Detector, requested: str | None, provenance: dict[str, Any], seed: int,
            split_fractions: tuple[float, float, float]) -> Path:
    if requested is not None and get_detector(requested) != detector:
        raise DataSchemaError(
            f"images have shape {detector.shape} ({detector.name}) but --detector {requested} "
            f"was given")
    write_event_file(output, images, conditions, detector=detector, provenance=provenance,
                     pdg_N=pdg, split_seed=seed, split_fractions=split_fractions)
    return output


def from_npz_pair(responses: str | os.PathLike, particles: str | os.PathLike,
                  output: str | os.PathLike, *, detector: str | None = None, seed: int = 0,
                  split_fractions: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS) -> Path:
    """Convert the flow-matching npz pair (key arr_0 in both) to an event file."""
    responses, particles = Path(responses), Path(particles)
    images, det = check_images(load_npz_key(responses, "arr_0"), f"{responses}[arr_0]")
    table = load_npz_key(particles, "arr_0")
    if table.ndim != 2 or table.shape != (len(images), 10):
        raise DataSchemaError(
            f"{particles}[arr_0]: must have shape ({len(images)}, 10) (nine conditions then the "
            f"PDG id), got {table.shape}")
    conditions = check_conditions(table[:, :9], len(images), f"{particles}[arr_0]")
    pdg = table[:, 9]
    if not np.isfinite(pdg).all() or not np.array_equal(pdg, np.round(pdg)):
        raise DataSchemaError(f"{particles}[arr_0]: column 10 (PDG id) must hold integers")
    provenance = make_provenance(made_by="expertsim prepare npz-pair", seed=seed,
                                 config={"split_fractions": split_fractions},
                                 inputs=[responses, particles])
    return _finish(Path(output), images, conditions, pdg.astype(np.int32), det, detector,
                   provenance, seed, split_fractions)


def from_npz(path: str | os.PathLike, output: str | os.PathLike, *, detector: str | None = None,
             seed: int = 0,
             split_fractions: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS) -> Path:
    """Convert a generic npz (images, conditions, optional pdg) to an event file."""
    path = Path(path)
    images, det = check_images(load_npz_key(path, "images"), f"{path}[images]")
    conditions = check_conditions(load_npz_key(path, "conditions"), len(images),
                                  f"{path}[conditions]")
    pdg = None
    if "pdg" in npz_keys(path):
        pdg = load_npz_key(path, "pdg")
        if pdg.shape != (len(images),):
            raise DataSchemaError(f"{path}[pdg]: must have shape ({len(images)},), got {pdg.shape}")
        pdg = pdg.astype(np.int32)
    provenance = make_provenance(made_by="expertsim prepare npz", seed=seed,
                                 config={"split_fractions": split_fractions}, inputs=[path])
    return _finish(Path(output), images, conditions, pdg, det, detector, provenance, seed,
                   split_fractions)


def _unpickle(path: Path) -> Any:
    if not path.exists():
        raise DataSchemaError(f"{path}: no such file")
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle)  # noqa: S301 - only reached with trust_pickle=True
    except ModuleNotFoundError as error:
        raise DataSchemaError(
            f"{path}: unpickling needs the module {error.name!r}; install it "
            "(pip install 'expertsim[pickle]' brings pandas)") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, OSError) as error:
        raise DataSchemaError(f"{path}: cannot be unpickled ({error})") from None


def _column(table: Any, name: str, path: Path) -> np.ndarray:
    try:
        values = table[name]
    except (KeyError, IndexError, TypeError, ValueError):
        raise DataSchemaError(
            f"{path}: missing column {name!r} (need {', '.join(PICKLE_CONDITION_COLUMNS)})"
        ) from None
    return np.asarray(values.to_numpy() if hasattr(values, "to_numpy") else values, dtype=float)


def from_pickle_trio(images: str | os.PathLike, conditions: str | os.PathLike,
                     output: str | os.PathLike, *, positions: str | os.PathLike | None = None,
                     trust_pickle: bool = False, detector: str | None = None, seed: int = 0,
                     split_fractions: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS,
                     ) -> Path:
    """Convert the ExpertSim / SDI-GAN pickles; refuses unless ``trust_pickle`` is True.

    The positions table (max_x, max_y) is only checked for length: the brightest fibre is
    recomputed from the images so that every event file uses one convention.
    """
    inputs = [Path(p) for p in (images, conditions, positions) if p is not None]
    if not trust_pickle:
        raise TrustError(
            f"{inputs[0]}: pickle files can run arbitrary code when loaded; pass --trust-pickle "
            "only for files from a source you trust (or convert them to npz there)")
    image_array = _unpickle(Path(images))
    image_array = np.asarray(image_array.to_numpy() if hasattr(image_array, "to_numpy")
                             else image_array)
    image_array, det = check_images(image_array, str(images))
    table = _unpickle(Path(conditions))
    columns = [_column(table, name, Path(conditions)) for name in PICKLE_CONDITION_COLUMNS]
    lengths = {len(c) for c in columns}
    if lengths != {len(image_array)}:
        raise DataSchemaError(
            f"{conditions}: has {sorted(lengths)} rows but {images} has {len(image_array)} images")
    condition_array = check_conditions(np.stack(columns, axis=1), len(image_array),
                                       str(conditions))
    if positions is not None:
        position_table = _unpickle(Path(positions))
        for name in ("max_x", "max_y"):
            if len(_column(position_table, name, Path(positions))) != len(image_array):
                raise DataSchemaError(f"{positions}: column {name!r} length differs from images")
    provenance = make_provenance(made_by="expertsim prepare pickle", seed=seed,
                                 config={"split_fractions": split_fractions}, inputs=inputs)
    return _finish(Path(output), image_array, condition_array, None, det, detector, provenance,
                   seed, split_fractions)


def from_event_h5(path: str | os.PathLike, output: str | os.PathLike, *, seed: int = 0,
                  split_fractions: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS) -> Path:
    """Re-derive a complete event file from an HDF5 file with /images and /conditions."""
    path = Path(path)
    image_array, condition_array, pdg, detector = read_raw_events(path)
    image_array, _ = check_images(image_array, f"{path}[/images]")
    condition_array = check_conditions(condition_array, len(image_array),
                                       f"{path}[/conditions]")
    provenance = make_provenance(made_by="expertsim prepare h5", seed=seed,
                                 config={"split_fractions": split_fractions}, inputs=[path])
    return _finish(Path(output), image_array, condition_array, pdg, detector, None, provenance,
                   seed, split_fractions)
