"""Conditioning that lets convolutional networks put a shower where the particle hits.

A convolution is translation-equivariant: it maps a coordinate to a place poorly when the
coordinate only enters through a dense layer. Two remedies, used together by the
``positional`` conditioning of the experts and discriminators:

- :class:`ConditionFeatures` adds quantities derived from the raw conditions to the nine scaled
  ones: the direction (px/|pz|, py/|pz|), the straight-line impact point at the calorimeter's
  distance, the bending power q/p and log E. The raw values are recovered inside the network
  from the scaler (stored as buffers), so the network's inputs stay the nine scaled conditions
  (ALICE O2's ONNX contract). The raw nine stay among the features: files that give the
  vertex at the production point or at the face both leave the network what it needs.
- :func:`centred_coordinates` gives a convolution two extra input channels: each pixel's
  position relative to a centre (row, column) that a small head predicts from the features,
  so drawing a shower around a place is a local, translation-equivariant operation.

Legend: B events, K = 9 conditions, D derived features, H x W image.
"""

from __future__ import annotations

import torch
from torch import nn

N_CONDITIONS = 9
N_DERIVED = 6
DISTANCE_CM = 11250.0  # interaction point to the ZDC faces, ~112.5 m (ALICE ZDC)
LENGTH_SCALE_CM = 10.0  # impact coordinates in units of the calorimeters' size (7-22 cm)
N_PLACEMENT = N_CONDITIONS + 5  # inputs of the linear shower-placement map (placement())
PLACEMENT_CLAMP = 100.0


class ConditionFeatures(nn.Module):
    """c_BK (scaled) -> (B, K + D): the scaled conditions, then asinh of x and y of the
    straight-line impact at ``DISTANCE_CM`` (in ``LENGTH_SCALE_CM``: linear across the
    calorimeters, compressed far outside them), asinh of the angles in mrad, asinh of q/p in
    1/TeV and log(E / GeV). Every feature stays of order 1-10 whatever the input, so float32
    rounding is not amplified (a particle with pz ~ 0 would otherwise project to ~1e6)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean_K", torch.zeros(N_CONDITIONS))
        self.register_buffer("scale_K", torch.ones(N_CONDITIONS))

    def set_scaler(self, mean_K, scale_K) -> None:
        """Store the condition scaler the inputs are standardised with (raw = c * scale +
        mean); part of the state dict, so a model file carries it."""
        self.mean_K.copy_(torch.as_tensor(mean_K, dtype=torch.float32))
        self.scale_K.copy_(torch.as_tensor(scale_K, dtype=torch.float32))

    def forward(self, c_BK: torch.Tensor) -> torch.Tensor:
        return self.features_and_placement(c_BK)[0]

    def placement(self, c_BK: torch.Tensor) -> torch.Tensor:
        """c_BK (scaled) -> (B, N_PLACEMENT): the scaled conditions, then the straight-line
        impact x and y (in ``LENGTH_SCALE_CM``), q/p (1/TeV) and the angles (mrad), linear
        and clamped to +-``PLACEMENT_CLAMP``. Where a particle lands on the face is linear in
        these (a magnet's kick is linear in q/p), so a linear map of them places a shower;
        the raw vertex stays in for files that give it at the face."""
        return self.features_and_placement(c_BK)[1]

    def features_and_placement(self, c_BK: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(forward(c_BK), placement(c_BK)) from one pass over the kinematics, each quantity
        computed for all its components at once (x and y together, one asinh for the five
        features): an exported graph run one particle at a time pays ONNX Runtime's fixed cost
        per operator, and the per-component version was ~90 operators an expert."""
        impact_B2, angles_B2, bending_B1, energy_B1 = self._kinematics(c_BK)
        impact_B2 = impact_B2 / LENGTH_SCALE_CM
        angles_B2, bending_B1 = 1e3 * angles_B2, 1e3 * bending_B1  # mrad, 1/TeV
        derived_BD = torch.cat([_asinh(torch.cat([impact_B2, angles_B2, bending_B1], dim=1)),
                                torch.log(energy_B1.clamp(min=1e-3))], dim=1)
        linear_BL = torch.cat([impact_B2, bending_B1, angles_B2], dim=1)
        return (torch.cat([c_BK, derived_BD], dim=1),
                torch.cat([c_BK, linear_BL.clamp(-PLACEMENT_CLAMP, PLACEMENT_CLAMP)], dim=1))

    def _kinematics(self, c_BK: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Raw (impact (x, y) [cm], (px, py) / |pz|, q/p [1/GeV], E [GeV]), as (B, 2),
        (B, 2), (B, 1), (B, 1); the columns are CONDITION_COLUMNS' (E, vx, vy, vz, px, py,
        pz, m, charge)."""
        raw_BK = c_BK * self.scale_K + self.mean_K
        pz_B1 = raw_BK[:, 6:7]
        side_B1 = torch.where(pz_B1 < 0, -torch.ones_like(pz_B1), torch.ones_like(pz_B1))
        angles_B2 = raw_BK[:, 4:6] / pz_B1.abs().clamp(min=1e-6)
        path_B1 = DISTANCE_CM - side_B1 * raw_BK[:, 3:4]
        momentum_B3 = raw_BK[:, 4:7]
        momentum_B1 = torch.sqrt((momentum_B3 * momentum_B3).sum(dim=1, keepdim=True)).clamp(
            min=1e-6)
        return (raw_BK[:, 1:3] + angles_B2 * path_B1, angles_B2, raw_BK[:, 8:9] / momentum_B1,
                raw_BK[:, 0:1])


def _asinh(x: torch.Tensor) -> torch.Tensor:
    """asinh written with elementary operations (the TorchScript ONNX exporter has none)."""
    x = x.clamp(-1e15, 1e15)
    return torch.sign(x) * torch.log(x.abs() + torch.sqrt(x * x + 1.0))


def centred_coordinates(feature_map: torch.Tensor, centre_B2: torch.Tensor,
                        image_shape: tuple[int, int], covered_shape: tuple[int, int],
                        radial: tuple[float, ...] = ()) -> torch.Tensor:
    """feature_map (B, C, h, w) -> (B, C + 2 + R, h, w): appends each cell's row and column
    relative to ``centre_B2`` (row, column), in units of the image's half-size with 0 at the
    image centre, then for each width s in ``radial`` (fibres) exp(-r^2 / (2 s^2)) with r the
    cell's distance from the centre in fibres. The map covers ``covered_shape`` pixels from
    the image's top-left corner (a generator's padded canvas, cropped to ``image_shape`` at
    the end, or the image).

    Why radial channels: one fibre is 2 / 44 of a half-size, so a shower one or two fibres
    wide (an electromagnetic one in ZN) is a function that changes over a few hundredths of
    the coordinate channels' range; convolutions learn that slowly. The radial channels are
    of order 1 and as sharp as a fibre, so drawing a narrow or a broad core is a choice of
    weights, not of their size."""
    batch, _, height, width = feature_map.shape
    rows, cols = image_shape
    options = {"dtype": feature_map.dtype, "device": feature_map.device}
    row_grid, col_grid = cell_grids(height, width, image_shape, covered_shape, **options)
    # built channels-last (B, h, w, C) and returned as a (B, C, h, w) view of it: the layout
    # the generator's convolutions run fastest in on a CPU (ExpertConv2d.single)
    u = row_grid.view(1, height, 1, 1) - centre_B2[:, 0].view(batch, 1, 1, 1)
    v = col_grid.view(1, 1, width, 1) - centre_B2[:, 1].view(batch, 1, 1, 1)
    channels = [feature_map.permute(0, 2, 3, 1), u.expand(batch, height, width, 1),
                v.expand(batch, height, width, 1)]
    if radial:
        # exp(-(du^2 + dv^2) / 2s^2) = exp(-du^2 / 2s^2) exp(-dv^2 / 2s^2): h + w exponentials
        # per width instead of h * w (they were a fifth of a ZN generator's time)
        inverse = 1.0 / (2.0 * torch.tensor(radial, **options) ** 2)  # (R,) per fibre^2
        du2, dv2 = (u * (rows / 2.0)) ** 2, (v * (cols / 2.0)) ** 2  # fibres^2
        channels.append(torch.exp(-du2 * inverse) * torch.exp(-dv2 * inverse))
    return torch.cat(channels, dim=3).permute(0, 3, 1, 2)


def cell_grids(height: int, width: int, image_shape: tuple[int, int],
               covered_shape: tuple[int, int], **options) -> tuple[torch.Tensor, torch.Tensor]:
    """The row (height,) and column (width,) coordinates of the cells of a map covering
    ``covered_shape`` pixels, in units of the image's half-size, 0 at the image centre."""
    return tuple(cell_coordinate(torch.arange(length, **options), length, covered, extent)
                 for length, covered, extent in zip((height, width), covered_shape, image_shape))


def cell_coordinate(index: torch.Tensor, length: int, covered: int, extent: int
                    ) -> torch.Tensor:
    """The coordinate of cell ``index`` (any shape; out-of-range indices extend the grid) of
    a map of ``length`` cells covering ``covered`` pixels of an image ``extent`` pixels long,
    in units of the image's half-size, 0 at the image centre (cell_grids' along one axis)."""
    return (index + 0.5) * (covered / length) * (2.0 / extent) - 1.0
