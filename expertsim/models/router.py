"""The router, the auxiliary regressor, and the inference-time mixture."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from expertsim.models.experts import N_CONDITIONS, ExpertGenerator


class Router(nn.Module):
    """MLP on the scaled conditions: c_BK -> logits_BE."""

    def __init__(self, n_experts: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(N_CONDITIONS, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, n_experts),
        )

    def forward(self, c_BK: torch.Tensor) -> torch.Tensor:
        return self.net(c_BK)


def gumbel_route(logits_BE: torch.Tensor, gumbel_BE: torch.Tensor, temperature: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Straight-through Gumbel-softmax: (gates_BE, probs_BE).

    ``gates`` is exactly one-hot in the forward pass (each event goes to one expert) and
    carries the gradient of the soft sample; ``gumbel_BE`` is standard Gumbel noise, passed in
    so that the caller owns the random stream.
    """
    soft_BE = F.softmax((logits_BE + gumbel_BE) / temperature, dim=1)
    hard_BE = F.one_hot(soft_BE.argmax(dim=1), logits_BE.shape[1]).to(soft_BE.dtype)
    return hard_BE - soft_BE.detach() + soft_BE, F.softmax(logits_BE, dim=1)


class AuxRegressor(nn.Module):
    """Predicts the brightest fibre's position, x_NHW -> position_N2 in [0, 1]."""

    def __init__(self, image_shape: tuple[int, int], channels: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(2 * channels * ((image_shape[0] + 3) // 4) * ((image_shape[1] + 3) // 4), 2),
            nn.Sigmoid(),
        )

    def forward(self, x_NHW: torch.Tensor) -> torch.Tensor:
        return self.net(x_NHW.unsqueeze(1))


class MixtureOfExperts(nn.Module):
    """Inference path: hard routing (argmax) and the routed expert's image.

    forward(z_BZ, c_BK) -> (image_BHW in log(1 + photons), expert_B int64); deterministic
    given the noise.
    """

    def __init__(self, router: Router, generator: ExpertGenerator) -> None:
        super().__init__()
        self.router, self.generator = router, generator

    def forward(self, z_BZ: torch.Tensor, c_BK: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        expert_B = self.router(c_BK).argmax(dim=1)
        return self.generator(z_BZ, c_BK, expert_B), expert_B
