"""Physics metrics: pure functions, arrays in, numbers out.

Units: channel sums and photon sums are photons. The field's headline (PHYSICS.md) is the
Wasserstein-1 distance between generated and simulated distributions of each of the five
channel sums, averaged over the channels.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import wasserstein_distance

from expertsim.detector import channel_sums

MIN_TRUSTED_EVENTS = 100


def channel_wasserstein(generated_NC: np.ndarray, reference_MC: np.ndarray) -> np.ndarray:
    """Wasserstein-1 distance (photons) of each channel's distribution, shape (C,).

    Args:
        generated_NC: channel sums of N generated events, (N, C).
        reference_MC: channel sums of M reference (Monte Carlo) events, (M, C).

    >>> a = np.zeros((4, 5)); b = np.ones((4, 5))
    >>> channel_wasserstein(a, b).tolist()
    [1.0, 1.0, 1.0, 1.0, 1.0]
    """
    generated_NC, reference_MC = np.asarray(generated_NC), np.asarray(reference_MC)
    if generated_NC.ndim != 2 or generated_NC.shape[1] != reference_MC.shape[1]:
        raise ValueError(f"channel arrays must be (N, C) with equal C, got {generated_NC.shape} "
                         f"and {reference_MC.shape}")
    if min(len(generated_NC), len(reference_MC)) < MIN_TRUSTED_EVENTS:
        warnings.warn(f"Wasserstein distance from fewer than {MIN_TRUSTED_EVENTS} events is "
                      "noisy", stacklevel=2)
    return np.array([wasserstein_distance(generated_NC[:, k], reference_MC[:, k])
                     for k in range(generated_NC.shape[1])])


def channel_ws_from_images(generated_NHW: np.ndarray, reference_channels_MC: np.ndarray
                           ) -> np.ndarray:
    """Per-channel Wasserstein-1 (photons) of generated images (counts space) vs reference."""
    return channel_wasserstein(channel_sums(generated_NHW), reference_channels_MC)
