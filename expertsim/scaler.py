"""The condition scaler: raw conditions -> the standardised inputs every network reads.

The nine conditions (E [GeV], vx, vy, vz [cm], px, py, pz [GeV/c], mass [MeV/c^2], charge [e])
are standardised per column as (raw - mean) / scale, with mean and scale fitted on the train
split of an event file. The event file stores the scaler, the model file carries it, and ALICE
O2 reads it from the exported scales file: this class is the one place the arithmetic lives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Scaler:
    """Per-column mean and scale, shapes (9,), float64.

    >>> scaler = Scaler.fit(np.array([[1.0, 5.0], [3.0, 5.0]]))
    >>> scaler.scale.tolist(), scaler.transform(np.array([[3.0, 5.0]])).tolist()
    ([1.0, 1.0], [[1.0, 0.0]])
    """

    mean: np.ndarray
    scale: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", np.asarray(self.mean, dtype=np.float64))
        object.__setattr__(self, "scale", np.asarray(self.scale, dtype=np.float64))
        if self.mean.shape != self.scale.shape or self.mean.ndim != 1:
            raise ValueError(f"scaler mean {self.mean.shape} and scale {self.scale.shape} must "
                             "be vectors of one length")

    @classmethod
    def fit(cls, conditions_NK: np.ndarray) -> "Scaler":
        """Column mean and std; a constant column gets scale 1 so that it maps to 0."""
        conditions_NK = np.asarray(conditions_NK, dtype=np.float64)
        mean_K = conditions_NK.mean(axis=0)
        scale_K = conditions_NK.std(axis=0)
        scale_K[scale_K <= 1e-12 * np.maximum(np.abs(mean_K), 1.0)] = 1.0
        return cls(mean_K, scale_K)

    def transform(self, raw_NK: np.ndarray) -> np.ndarray:
        """(raw - mean) / scale computed in float64, returned as float32 (N, K)."""
        return ((np.asarray(raw_NK, dtype=np.float64) - self.mean) / self.scale
                ).astype(np.float32)
