"""Expert conditional generators and discriminators, all experts in one module each."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from expertsim.models.conditioning import (N_CONDITIONS, N_DERIVED, N_PLACEMENT,
                                           ConditionFeatures, centred_coordinates)
from expertsim.models.layers import ExpertConv2d, ExpertLinear
from expertsim.models.losses import quadrant_sums

CONDITIONINGS = ("plain", "positional", "radial")
POSITION_HIDDEN = 32
RIDGE = 1e-3  # of the placement fit, relative to standardised inputs
RADIAL_FIBRES = (0.5, 1.0, 2.0, 4.0, 8.0)  # default radial channel widths (ModelConfig)
CENTRE_LIMIT = 2.0  # shower centres beyond one half-size outside the face are all alike
INTENSITY_HIDDEN = 32
# the intensity head's log photon sum is clamped to [LOG_SUM_MIN, LOG_SUM_MAX], so that a fit
# extrapolated far outside the training conditions stays drawable: e^11.5 ~ 1e5 photons, 30x the
# brightest published ZDC responses (SOURCES.md; beyond it float32 pixels lose whole photons),
# and e^-2.3 ~ 0.1 photons (at e^-11.5 the exported graph left some such responses empty,
# where a generator must draw light: tests/test_export.py)
LOG_SUM_MIN, LOG_SUM_MAX = -2.3, 11.5


class _PositionHead(nn.Module):
    """Per expert: shower centre (B, 2) (row, column) in units of the image half-size, 0 at the
    image centre = a linear map of the placement inputs (ConditionFeatures.placement) + a small
    MLP of the conditioning features. :meth:`calibrate` sets the linear map by least squares
    to the real showers' centroids before training, and zeroes the MLP's output, so training
    starts with showers where the particles hit and learns the corrections. The centre is
    clamped to +-CENTRE_LIMIT: an extrapolated fit never sends a coordinate channel far off."""

    def __init__(self, n_experts: int, in_features: int) -> None:
        super().__init__()
        self.hidden = ExpertLinear(n_experts, in_features, POSITION_HIDDEN)
        self.out = ExpertLinear(n_experts, POSITION_HIDDEN, 2)
        self.linear = ExpertLinear(n_experts, N_PLACEMENT, 2)
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias.zero_()

    def draw(self, features_BF: torch.Tensor, placement_BP: torch.Tensor, apply) -> torch.Tensor:
        centre_B2 = (apply(self.out, F.leaky_relu(apply(self.hidden, features_BF), 0.2))
                     + apply(self.linear, placement_BP))
        return centre_B2.clamp(-CENTRE_LIMIT, CENTRE_LIMIT)

    @torch.no_grad()
    def calibrate(self, placement_NP: torch.Tensor, centre_N2: torch.Tensor) -> float:
        """Ridge least-squares fit of the linear map to ``centre_N2`` (ridge_fit), the same
        for every expert, and the MLP's output zeroed; returns the fit's RMS residual
        (half-sizes)."""
        residual = ridge_fit(self.linear, placement_NP, centre_N2)
        self.out.weight.zero_()
        self.out.bias.zero_()
        return residual


@torch.no_grad()
def ridge_fit(layer: ExpertLinear, x_NP: torch.Tensor, y_NT: torch.Tensor) -> float:
    """Set ``layer`` (every expert) to the ridge least-squares fit of ``y_NT`` on ``x_NP``
    (standardised inputs, ridge RIDGE: nearly collinear inputs, such as a vertex that barely
    varies, get small weights instead of large cancelling ones that would amplify float32
    rounding); returns the fit's RMS residual (Euclidean over the T targets)."""
    x_NP, y_NT = x_NP.double(), y_NT.double()
    mean_P, std_P = x_NP.mean(dim=0), x_NP.std(dim=0)
    # an input constant up to float32 rounding is left out (its weight would scale noise)
    constant_P = std_P <= 1e-5 * mean_P.abs().clamp(min=1.0)
    std_P = torch.where(constant_P, torch.full_like(std_P, math.inf), std_P)
    z_NP = (x_NP - mean_P) / std_P
    gram_PP = z_NP.T @ z_NP / len(z_NP) + RIDGE * torch.eye(len(mean_P), dtype=x_NP.dtype,
                                                            device=x_NP.device)
    beta_PT = torch.linalg.solve(gram_PP, z_NP.T @ (y_NT - y_NT.mean(dim=0)) / len(z_NP))
    weight_PT = beta_PT / std_P.unsqueeze(1)
    bias_T = y_NT.mean(dim=0) - mean_P @ weight_PT
    residual = (x_NP @ weight_PT + bias_T - y_NT).pow(2).sum(dim=1).mean().sqrt()
    layer.weight.copy_(weight_PT.to(layer.weight.dtype))
    layer.bias.copy_(bias_T.to(layer.bias.dtype))
    return float(residual)


class _IntensityHead(nn.Module):
    """Per expert: log of the expected photon sum (B, 1) = a linear map of the conditioning
    features (:meth:`calibrate`: least squares to the real log photon sums before training) +
    a small MLP of (noise, features) whose output starts at zero: the shower-to-shower
    fluctuation of the sum and the corrections are learned. Clamped to [LOG_SUM_MIN,
    LOG_SUM_MAX]."""

    def __init__(self, n_experts: int, noise_dim: int, n_features: int) -> None:
        super().__init__()
        self.hidden = ExpertLinear(n_experts, noise_dim + n_features, INTENSITY_HIDDEN)
        self.out = ExpertLinear(n_experts, INTENSITY_HIDDEN, 1)
        self.linear = ExpertLinear(n_experts, n_features, 1)

    def draw(self, z_BZ: torch.Tensor, features_BF: torch.Tensor, apply) -> torch.Tensor:
        hidden = F.leaky_relu(apply(self.hidden, torch.cat([z_BZ, features_BF], dim=1)), 0.2)
        log_sum_B1 = apply(self.out, hidden) + apply(self.linear, features_BF)
        return log_sum_B1.clamp(LOG_SUM_MIN, LOG_SUM_MAX)

    @torch.no_grad()
    def calibrate(self, features_NF: torch.Tensor, photon_sum_N: torch.Tensor) -> float:
        """Fit the linear map to log(photon sum) (ridge_fit), zero the MLP's output; returns
        the fit's RMS residual (in log photons)."""
        residual = ridge_fit(self.linear, features_NF, torch.log(photon_sum_N)[:, None])
        self.out.weight.zero_()
        self.out.bias.zero_()
        return residual


def condition_features(features, c_BK: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(network inputs, shower-placement inputs) of a network whose feature module is
    ``features`` (None for plain conditioning: the scaled conditions, no placement)."""
    if features is None:
        return c_BK, None
    return features.features_and_placement(c_BK)


def calibrate_position(network: nn.Module, c_NK: torch.Tensor, centre_N2: torch.Tensor
                       ) -> float | None:
    """Fit a generator's or discriminator's shower-placement map to the real centroids
    ``centre_N2`` of events with scaled conditions ``c_NK`` (see _PositionHead.calibrate);
    None for plain conditioning."""
    if network.position is None:
        return None
    return network.position.calibrate(network.features.placement(c_NK), centre_N2)


def _conditioning(kind: str, radial: tuple[float, ...]
                  ) -> tuple[ConditionFeatures | None, int, tuple[float, ...]]:
    """(feature module or None, features per event, radial channel widths: ``radial`` for
    radial conditioning, none otherwise); positional and radial conditioning add
    2 + len(widths) channels to every convolution's input."""
    if kind not in CONDITIONINGS:
        raise ValueError(f"conditioning {kind!r} is not one of {CONDITIONINGS}")
    if kind == "plain":
        return None, N_CONDITIONS, ()
    return (ConditionFeatures(), N_CONDITIONS + N_DERIVED,
            tuple(radial) if kind == "radial" else ())


class ExpertGenerator(nn.Module):
    """G_e(z, c): a conditional DCGAN-style generator per expert.

    (z_BZ, c_BK) -> dense -> (2C, H/4, W/4) -> [upsample x2, 3x3 conv] x2 -> 3x3 conv -> ReLU,
    cropped to (H, W). forward(z_BZ, c_BK, expert_B) -> images_BHW in log(1 + photons) >= 0
    (exact zeros allowed), each event drawn by its expert. With ``conditioning="positional"``
    the conditions are extended by ConditionFeatures and every convolution also sees each
    pixel's position relative to a centre predicted from them (expertsim.models.conditioning);
    ``"radial"`` adds exp(-r^2 / 2w^2) channels for the widths ``radial`` (fibres).

    With ``intensity=True`` the photon sum and the shower's shape are drawn apart: the last
    convolution gives the logits of where the light goes (a softmax over the fibres) and an
    intensity head (_IntensityHead) the log of the expected sum, so the image is
    log(1 + sum * softmax) = softplus(log sum + log softmax). Why: in both detectors the
    channel-WS is dominated by the brightest particles (spectator nucleons, ~2,000 photons),
    whose photon sums the convolutional output scattered ~1.5x as much as the MC from one
    generation to the next; with the sum one output, its scatter is one number per particle.
    """

    def __init__(self, n_experts: int, image_shape: tuple[int, int], noise_dim: int = 10,
                 channels: int = 32, dispatch: str = "gather", conditioning: str = "plain",
                 radial: tuple[float, ...] = RADIAL_FIBRES, intensity: bool = False) -> None:
        super().__init__()
        self.n_experts, self.image_shape, self.noise_dim = n_experts, tuple(image_shape), noise_dim
        self.dispatch = dispatch
        rows, cols = image_shape
        self.seed_shape = (-(-rows // 4), -(-cols // 4))
        self.channels = channels
        self.features, n_features, self.radial = _conditioning(conditioning, radial)
        extra = 0 if self.features is None else 2 + len(self.radial)
        self.position = _PositionHead(n_experts, n_features) if extra else None
        self.dense = ExpertLinear(n_experts, noise_dim + n_features,
                                  2 * channels * self.seed_shape[0] * self.seed_shape[1])
        self.conv1 = ExpertConv2d(n_experts, 2 * channels + extra, channels)
        self.conv2 = ExpertConv2d(n_experts, channels + extra, channels // 2)
        self.conv_out = ExpertConv2d(n_experts, channels // 2 + extra, 1)
        self.intensity = (_IntensityHead(n_experts, noise_dim, n_features) if intensity
                          else None)

    def forward(self, z_BZ: torch.Tensor, c_BK: torch.Tensor, expert_B: torch.Tensor
                ) -> torch.Tensor:
        mode = self.dispatch
        return self._draw(z_BZ, c_BK, lambda layer, x: layer(x, expert_B, mode))

    def forward_expert(self, z_BZ: torch.Tensor, c_BK: torch.Tensor, expert: int
                       ) -> torch.Tensor:
        """Every event of the batch drawn by one expert (plain layers, no dispatch)."""
        return self._draw(z_BZ, c_BK, lambda layer, x: layer.single(x, expert))

    def centre(self, c_BK: torch.Tensor, expert_B: torch.Tensor) -> torch.Tensor | None:
        """The shower centre (B, 2) each event's expert predicts (positional conditioning;
        None otherwise), in image half-sizes from the image centre."""
        if self.position is None:
            return None
        mode = self.dispatch
        return self.position.draw(*self.features.features_and_placement(c_BK),
                                  lambda layer, x: layer(x, expert_B, mode))

    def _draw(self, z_BZ: torch.Tensor, c_BK: torch.Tensor, apply) -> torch.Tensor:
        f_BF, placement_BP = condition_features(self.features, c_BK)
        h = F.leaky_relu(apply(self.dense, torch.cat([z_BZ, f_BF], dim=1)), 0.2)
        h = h.view(-1, 2 * self.channels, *self.seed_shape)
        centre_B2 = (None if self.position is None
                     else self.position.draw(f_BF, placement_BP, apply))
        h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        h = F.leaky_relu(apply(self.conv1, self._place(h, centre_B2)), 0.2)
        h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        h = F.leaky_relu(apply(self.conv2, self._place(h, centre_B2)), 0.2)
        rows, cols = self.image_shape
        return self.output(apply(self.conv_out, self._place(h, centre_B2))[:, 0, :rows, :cols],
                           z_BZ, f_BF, apply)

    def output(self, y_BHW: torch.Tensor, z_BZ: torch.Tensor, f_BF: torch.Tensor, apply
               ) -> torch.Tensor:
        """The last convolution's output (cropped) -> the image, log(1 + expected photons):
        ReLU, or with the intensity head softplus(log sum + log softmax over the fibres)."""
        if self.intensity is None:
            return F.relu(y_BHW)
        with torch.autocast(y_BHW.device.type, enabled=False):
            log_share_BP = F.log_softmax(y_BHW.float().flatten(1), dim=1)
            log_sum_B1 = self.intensity.draw(z_BZ.float(), f_BF.float(), apply)
            return F.softplus(log_share_BP + log_sum_B1).view_as(y_BHW)

    @torch.no_grad()
    def calibrate_intensity(self, c_NK: torch.Tensor, photon_sum_N: torch.Tensor
                            ) -> float | None:
        """Fit the intensity head's linear map to the log photon sums of events with scaled
        conditions ``c_NK`` (_IntensityHead.calibrate); None without the head."""
        if self.intensity is None:
            return None
        return self.intensity.calibrate(condition_features(self.features, c_NK)[0],
                                        photon_sum_N)

    def _place(self, h: torch.Tensor, centre_B2: torch.Tensor | None) -> torch.Tensor:
        """Positional conditioning: append coordinates relative to the predicted centre."""
        if centre_B2 is None:
            return h
        canvas = (4 * self.seed_shape[0], 4 * self.seed_shape[1])
        return centred_coordinates(h, centre_B2, self.image_shape, canvas, self.radial)


N_COARSE_SUMS = 5
SUM_SCALE = 0.25  # log(1 + photons) of 0-3,000 photons -> 0-2


def coarse_sums(x_BHW: torch.Tensor) -> torch.Tensor:
    """log(1 + photons) images (B, H, W) -> (B, 5): SUM_SCALE * log(1 + photons) of the whole
    image and of its four quadrants (row-major), in float32."""
    quadrants_B4 = quadrant_sums(torch.expm1(x_BHW.float()).clamp(min=0.0))
    return SUM_SCALE * torch.log1p(torch.cat([quadrants_B4.sum(dim=1, keepdim=True),
                                              quadrants_B4], dim=1))


class ExpertDiscriminator(nn.Module):
    """D_e(x, c) per expert: three stride-2 convolutions, then the conditions join.

    forward(x_BHW, c_BK, expert_B) -> (logits_B, features_BF): each image judged by the
    discriminator of the expert its event is routed to; features_BF (the penultimate layer)
    feed the SDI diversity term and the router's differentiation loss.

    With ``sums=True`` the dense layer also sees log(1 + photons) of the whole image and of its
    four quadrants (:func:`coarse_sums`): beside the conditions, a direct view of how much light
    a response holds and where, so that a wrong spread of the photon sum for a condition is as
    visible to the discriminator as a wrong shape (CaloGAN's discriminator was given the total
    energy for the same reason; SOURCES.md).
    """

    def __init__(self, n_experts: int, image_shape: tuple[int, int], channels: int = 16,
                 features: int = 64, dispatch: str = "gather", conditioning: str = "plain",
                 radial: tuple[float, ...] = RADIAL_FIBRES, sums: bool = False) -> None:
        super().__init__()
        self.dispatch, self.image_shape, self.sums = dispatch, tuple(image_shape), sums
        self.features, n_features, self.radial = _conditioning(conditioning, radial)
        extra = 0 if self.features is None else 2 + len(self.radial)
        self.position = _PositionHead(n_experts, n_features) if extra else None
        self.conv1 = ExpertConv2d(n_experts, 1 + extra, channels, stride=2)
        self.conv2 = ExpertConv2d(n_experts, channels, 2 * channels, stride=2)
        self.conv3 = ExpertConv2d(n_experts, 2 * channels, 2 * channels, stride=2)
        rows, cols = image_shape
        for _ in range(3):
            rows, cols = (rows + 1) // 2, (cols + 1) // 2
        n_sums = N_COARSE_SUMS if sums else 0
        self.hidden = ExpertLinear(n_experts, 2 * channels * rows * cols + n_features + n_sums,
                                   features)
        self.head = ExpertLinear(n_experts, features, 1)

    def forward(self, x_BHW: torch.Tensor, c_BK: torch.Tensor, expert_B: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        mode = self.dispatch
        f_BF, placement_BP = condition_features(self.features, c_BK)
        h = x_BHW.unsqueeze(1)
        if self.position is not None:
            centre_B2 = self.position.draw(f_BF, placement_BP,
                                           lambda layer, x: layer(x, expert_B, mode))
            h = centred_coordinates(h, centre_B2, self.image_shape, self.image_shape,
                                    self.radial)
        h = F.leaky_relu(self.conv1(h, expert_B, mode), 0.2)
        h = F.leaky_relu(self.conv2(h, expert_B, mode), 0.2)
        h = F.leaky_relu(self.conv3(h, expert_B, mode), 0.2)
        inputs = [h.flatten(1), f_BF]
        if self.sums:
            inputs.append(coarse_sums(x_BHW).to(h.dtype))
        h_BI = torch.cat(inputs, dim=1)
        features_BF = F.leaky_relu(self.hidden(h_BI, expert_B, mode), 0.2)
        return self.head(features_BF, expert_B, mode).squeeze(1), features_BF
