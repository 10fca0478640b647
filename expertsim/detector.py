"""Detector geometry and the per-event quantities every stage derives from an image.

Image convention (both detectors): an image has shape (H, W) = (rows, columns); axis 0 (row i)
runs along x, axis 1 (column j) along y, one pixel per quartz fibre, the value is photons
counted. ZN is 44 x 44 fibres over 7.04 x 7.04 cm (1.6 mm pitch); ZP is 56 x 30 fibres over
22.4 x 12 cm (4 mm pitch). Geometry figures: SOURCES.md (ALICE ZDC).

Readout channels: five photomultipliers. Fibres of one checkerboard parity feed the common PMT
(channel 5), the others one of four tower PMTs (channels 1-4). Which parity goes where, and how
ZP's towers are laid out, differs between the codes of this field, so the conventions have
names (``CHANNEL_CONVENTIONS``); every channel number the package reports says which it used:

    o2-debug         (the default) i % 2 == j % 2 -> towers in 2 x 2 quadrants (i < H/2 and
                     j < W/2 -> 1, i < H/2 and j >= W/2 -> 2, i >= H/2 and j < W/2 -> 3, else
                     4), the other parity -> channel 5. ALICE O2's channel sum of its ZDC fast
                     simulation (Detectors/ZDC/fastsimulation, calculateChannels, ZN only) and
                     the flow-matching ZDC code (faster_zdc), whose WS figures are the
                     published state of the art: the default keeps ours comparable to them.
    expertsim-paper  the other parity: (i + j) odd -> 2 x 2 quadrants, even -> channel 5 (the
                     ExpertSim authors' code).
    o2-hits          what O2's reconstruction sees (FastSimToHits): (i + j) odd -> towers,
                     even -> the common PMT. O2 numbers its towers by x (our rows i) first:
                     ZN Ch1 i < H/2, j < W/2; Ch2 i >= H/2, j < W/2; Ch3 i < H/2, j >= W/2;
                     Ch4 i >= H/2, j >= W/2 (the paper's quadrants with 2 and 3 swapped); ZP's
                     four towers side by side along its 56-fibre axis (tower int(4 i / 56) + 1).

For ZN, expertsim-paper and o2-hits have the same five channels, towers 2 and 3 swapped (the
mean channel-WS is the same).

Legend for array names: N events, H rows, W columns, C = 5 channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from expertsim.errors import DataSchemaError

N_CHANNELS = 5


@dataclass(frozen=True)
class Detector:
    """Static geometry of one calorimeter.

    Attributes:
        name: "ZN" or "ZP".
        shape: image shape (rows along x, columns along y).
        size_x_cm, size_y_cm: front-face extent in cm.
        centre_x_cm, centre_y_cm: face centre in the transverse plane at the ZDC, in cm from the
            outgoing beam axis (ZN sits on the zero-degree line, ZP beside the beam pipe).
    """

    name: str
    shape: tuple[int, int]
    size_x_cm: float
    size_y_cm: float
    centre_x_cm: float
    centre_y_cm: float

    @property
    def pitch_x_cm(self) -> float:
        return self.size_x_cm / self.shape[0]

    @property
    def pitch_y_cm(self) -> float:
        return self.size_y_cm / self.shape[1]

    @property
    def n_fibres(self) -> int:
        return self.shape[0] * self.shape[1]


# ZP's transverse offset (19 cm beside the beam axis, on the side where spectator protons are
# bent) is this package's choice of frame, not a survey figure.
DETECTORS = {
    "ZN": Detector("ZN", (44, 44), 7.04, 7.04, 0.0, 0.0),
    "ZP": Detector("ZP", (56, 30), 22.4, 12.0, 19.0, 0.0),
}


def get_detector(name: str) -> Detector:
    """Return the detector called ``name`` (case-insensitive: zn, ZN, zp, ZP)."""
    key = str(name).upper()
    if key not in DETECTORS:
        raise DataSchemaError(f"unknown detector {name!r}: use one of {sorted(DETECTORS)}")
    return DETECTORS[key]


def detector_for_shape(shape: tuple[int, ...]) -> Detector:
    """The detector whose image shape is ``shape`` (H, W)."""
    for det in DETECTORS.values():
        if tuple(shape) == det.shape:
            return det
    raise DataSchemaError(
        f"image shape {tuple(shape)} matches no detector (ZN is (44, 44), ZP is (56, 30))"
    )


CHANNEL_CONVENTIONS = ("o2-debug", "expertsim-paper", "o2-hits")
DEFAULT_CHANNEL_CONVENTION = "o2-debug"


@lru_cache(maxsize=None)
def channel_index(shape: tuple[int, int],
                  convention: str = DEFAULT_CHANNEL_CONVENTION) -> np.ndarray:
    """Channel number (0..4 for ALICE channels 1..5) of each fibre, shape (H, W), int64."""
    if convention not in CHANNEL_CONVENTIONS:
        raise DataSchemaError(f"unknown channel convention {convention!r}: use one of "
                              f"{list(CHANNEL_CONVENTIONS)}")
    rows, cols = shape
    i = np.arange(rows)[:, None]
    j = np.arange(cols)[None, :]
    tower = (i >= rows // 2) * 2 + (j >= cols // 2)
    if convention == "o2-hits":
        tower = (np.broadcast_to(4 * i // rows, (rows, cols))
                 if tuple(shape) == DETECTORS["ZP"].shape
                 else (i >= rows // 2) + (j >= cols // 2) * 2)
    on_towers = (i % 2 == j % 2) if convention == "o2-debug" else ((i + j) % 2 == 1)
    index = np.where(on_towers, tower, 4)
    index.setflags(write=False)
    return index


def channel_masks(shape: tuple[int, int],
                  convention: str = DEFAULT_CHANNEL_CONVENTION) -> np.ndarray:
    """One-hot channel masks, shape (5, H, W), float32; every fibre is in exactly one mask."""
    index = channel_index(tuple(shape), convention)
    return (index[None] == np.arange(N_CHANNELS)[:, None, None]).astype(np.float32)


def channel_sums(images_NHW: np.ndarray,
                 convention: str = DEFAULT_CHANNEL_CONVENTION) -> np.ndarray:
    """The five ALICE channel sums (photons) under a named convention, shape (N, 5), float64."""
    images_NHW = np.asarray(images_NHW)
    flat_NP = images_NHW.reshape(images_NHW.shape[0], -1).astype(np.float64, copy=False)
    index_P = channel_index(tuple(images_NHW.shape[1:]), convention).ravel()
    sums_NC = np.zeros((flat_NP.shape[0], N_CHANNELS))
    for channel in range(N_CHANNELS):
        sums_NC[:, channel] = flat_NP[:, index_P == channel].sum(axis=1)
    return sums_NC


def photon_sums(images_NHW: np.ndarray) -> np.ndarray:
    """Total photons per event, shape (N,), float64."""
    images_NHW = np.asarray(images_NHW)
    return images_NHW.reshape(images_NHW.shape[0], -1).sum(axis=1, dtype=np.float64)


def brightest_fibre(images_NHW: np.ndarray) -> np.ndarray:
    """(row, column) of the brightest fibre per event, shape (N, 2), int16; (-1, -1) if empty.

    Ties go to the first fibre in row-major order.
    """
    images_NHW = np.asarray(images_NHW)
    n_events, _, cols = images_NHW.shape
    flat_NP = images_NHW.reshape(n_events, -1)
    arg_N = flat_NP.argmax(axis=1)
    position_N2 = np.stack([arg_N // cols, arg_N % cols], axis=1).astype(np.int16)
    position_N2[flat_NP.max(axis=1) <= 0] = -1
    return position_N2
