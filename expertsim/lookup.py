"""The baseline that learns nothing: a nearest-neighbour lookup table of training events.

Every particle gets the recorded response of the training event whose scaled conditions are
nearest (Euclidean, scaled with the training file's own scaler), among training events of the
same species (PDG id when both files have them, else the same charge and mass). A generative
model is only worth shipping where it beats this table on held-out particles.

The output is a sample file like ``expertsim sample`` writes (``/source_row`` pairs it with the
conditions file; ``/expert`` is 0; ``/lookup_row`` is the training event used), so that
``expertsim validate`` scores it exactly as it scores a model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.spatial import cKDTree

from expertsim.errors import ConfigError
from expertsim.eventfile import EventFile, EventFileWriter, read_raw_conditions
from expertsim.provenance import make_provenance


def _species(conditions_N9: np.ndarray, pdg_N: np.ndarray | None) -> np.ndarray:
    """One integer key per particle: the PDG id, or (charge, mass in MeV) when ids are absent."""
    if pdg_N is not None:
        return np.asarray(pdg_N, dtype=np.int64)
    charge = np.rint(conditions_N9[:, 8]).astype(np.int64)
    mass = np.rint(conditions_N9[:, 7]).astype(np.int64)
    return charge * 10_000_000 + mass


def nearest_training_rows(train_path: str | os.PathLike, raw_N9: np.ndarray,
                          pdg_N: np.ndarray | None = None, *, split: str = "train",
                          min_photon_sum: float | None = None,
                          max_photon_sum: float | None = None) -> np.ndarray:
    """Row (in the training file) of the nearest training event of the same species for each
    particle; raises ConfigError when a species has no training event."""
    with EventFile(train_path) as events:
        rows = events.rows(split, min_photon_sum, max_photon_sum)
        if len(rows) == 0:
            raise ConfigError(f"{train_path}: no {split} events in the photon-sum window")
        scaler = events.scaler()
        train_raw = events.conditions(rows)
        train_pdg = events.pdg(rows)
    use_pdg = pdg_N is not None and train_pdg is not None
    train_species = _species(train_raw, train_pdg if use_pdg else None)
    query_species = _species(raw_N9, pdg_N if use_pdg else None)
    train_scaled, query_scaled = scaler.transform(train_raw), scaler.transform(raw_N9)
    nearest = np.empty(len(raw_N9), dtype=np.int64)
    for species in np.unique(query_species):
        members = np.flatnonzero(train_species == species)
        if len(members) == 0:
            raise ConfigError(f"{train_path}: no {split} event of species {species} to look up "
                              "(PDG id, or charge * 1e7 + mass)")
        asked = np.flatnonzero(query_species == species)
        _, index = cKDTree(train_scaled[members]).query(query_scaled[asked])
        nearest[asked] = rows[members[index]]
    return nearest


def lookup_to_file(train_path: str | os.PathLike, conditions_path: str | os.PathLike,
                   output: str | os.PathLike, *, split: str = "train",
                   min_photon_sum: float | None = None, max_photon_sum: float | None = None,
                   progress: Callable[[int], None] | None = None) -> Path:
    """Write the lookup table's response to every particle of an event file of conditions."""
    raw_N9, pdg_N = read_raw_conditions(conditions_path)
    raw_N9 = raw_N9.astype(np.float64)
    nearest = nearest_training_rows(train_path, raw_N9, pdg_N, split=split,
                                    min_photon_sum=min_photon_sum,
                                    max_photon_sum=max_photon_sum)
    n = len(raw_N9)
    provenance = make_provenance(
        made_by="expertsim lookup", inputs=[train_path, conditions_path],
        config={"split": split, "min_photon_sum": min_photon_sum,
                "max_photon_sum": max_photon_sum, "metric": "euclidean, scaled conditions",
                "species": "pdg" if pdg_N is not None else "charge and mass"})
    with EventFile(train_path) as events:
        detector, dtype = events.detector, events.info.image_dtype
        with EventFileWriter(output, detector, n, provenance=provenance,
                             with_pdg=pdg_N is not None, image_dtype=dtype,
                             extras={"expert": np.zeros(n, np.int8),
                                     "source_row": np.arange(n), "lookup_row": nearest}
                             ) as writer:
            for start in range(0, n, 16384):
                block = slice(start, min(start + 16384, n))
                writer.write(start, events.images(nearest[block]), raw_N9[block],
                             None if pdg_N is None else pdg_N[block])
                if progress is not None:
                    progress(block.stop - start)
    return Path(output)
