"""The counting step inside training: what the discriminator sees is what the sampler writes.

``expertsim sample`` turns the generator's expected photons per fibre into whole photons by
Poisson draws. Training the discriminator on the continuous expectation while the real images
are integer counts lets it separate the two by integrality alone and trains the generator
for an output nobody samples. :func:`counted_log_image` applies the same counting in training,
with a straight-through gradient: the forward value is log(1 + k) for k ~ Poisson(lambda), the
backward pass that of log(1 + lambda + (k - lambda)), i.e. d/d lambda = 1 / (1 + k).

The Poisson draws are made from given uniforms (inverse CDF), so the trainer owns the random
stream: the same uniforms for the same events whatever the number of ranks.

Legend: B events, H x W image.
"""

from __future__ import annotations

import torch

EXACT_UP_TO = 20.0  # expected photons per fibre: exact inverse CDF below, normal above
K_MAX = 48  # exact part's last count: P(k > 48 | lambda = 20) < 1e-7


@torch.no_grad()
def poisson_from_uniform(mean_BHW: torch.Tensor, uniform_BHW: torch.Tensor) -> torch.Tensor:
    """Poisson counts (float) with the given means, one uniform in (0, 1) per draw.

    Means up to ``EXACT_UP_TO`` use the exact inverse CDF; larger ones the normal
    approximation round(mean + sqrt(mean) * z), whose error there is below a percent.

    >>> u = torch.tensor([0.3, 0.9])
    >>> poisson_from_uniform(torch.tensor([0.0, 1.0]), u).tolist()
    [0.0, 2.0]
    """
    mean = mean_BHW.float().clamp(min=0.0)
    uniform = uniform_BHW.float().clamp(1e-7, 1 - 1e-7)
    small = mean <= EXACT_UP_TO
    rate = torch.where(small, mean, torch.zeros_like(mean))
    probability = torch.exp(-rate)
    cumulative = probability.clone()
    counts = torch.zeros_like(mean)
    for k in range(1, K_MAX + 1):
        counts += (uniform > cumulative).float()
        probability = probability * rate / k
        cumulative = cumulative + probability
    normal = torch.sqrt(torch.tensor(2.0)) * torch.erfinv(2 * uniform - 1)
    large = torch.round(mean + torch.sqrt(mean) * normal).clamp(min=0.0)
    return torch.where(small, counts, large)


def counted_log_image(log_image_BHW: torch.Tensor, uniform_BHW: torch.Tensor) -> torch.Tensor:
    """log(1 + Poisson counts) of a generated log(1 + expected photons) image, with the
    straight-through gradient of the expectation."""
    expected = torch.expm1(log_image_BHW.float())
    counts = poisson_from_uniform(expected, uniform_BHW)
    return torch.log1p(expected + (counts - expected).detach()).to(log_image_BHW.dtype)
