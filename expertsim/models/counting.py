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

import math

import torch

EXACT_UP_TO = 20.0  # expected photons per fibre: exact inverse CDF below, normal above
K_MAX = 48  # exact part's last count: P(k > 48 | lambda = 20) < 1e-7
DENSE_STEPS = 3  # compact inversion: recurrence steps on every draw before the table


@torch.no_grad()
def poisson_from_uniform(mean_BHW: torch.Tensor, uniform_BHW: torch.Tensor,
                         normal_BHW: torch.Tensor | None = None, *, compact: bool = False
                         ) -> torch.Tensor:
    """Poisson counts (float) with the given means, one uniform in (0, 1) per draw.

    Means up to ``EXACT_UP_TO`` use the exact inverse CDF; larger ones the normal
    approximation round(mean + sqrt(mean) * z), whose error there is below a percent, with
    z the normal quantile of the uniform, or ``normal_BHW`` when given (ONNX has no inverse
    error function; an exported graph draws its normals).

    ``compact=True`` gives the same counts (up to float rounding on a CDF step) in a few
    dozen operators instead of the recurrence's ~300, which is what an exported graph run
    one particle at a time pays for (ONNX Runtime's fixed cost per operator dominates at
    batch 1): ``DENSE_STEPS`` recurrence steps on every draw settle the counts up to
    DENSE_STEPS; the draws above (a few per cent of fibres) get the CDF at 0..K_MAX - 1 at
    once, pmf = exp(k log(mean) - mean - log k!) and a cumulative sum.

    >>> u = torch.tensor([0.3, 0.9])
    >>> poisson_from_uniform(torch.tensor([0.0, 1.0]), u).tolist()
    [0.0, 2.0]
    >>> poisson_from_uniform(torch.tensor([0.0, 1.0]), u, compact=True).tolist()
    [0.0, 2.0]
    """
    mean = mean_BHW.float().clamp(min=0.0)
    uniform = uniform_BHW.float().clamp(1e-7, 1 - 1e-7)
    small = mean <= EXACT_UP_TO
    rate = torch.where(small, mean, torch.zeros_like(mean))
    probability = torch.exp(-rate)
    cumulative = probability.clone()
    counts = torch.zeros_like(mean)
    for k in range(1, (DENSE_STEPS if compact else K_MAX) + 1):
        counts += (uniform > cumulative).float()
        probability = probability * rate / k
        cumulative = cumulative + probability
    if compact:  # the draws beyond the dense steps, all k at once
        counts_F, rate_F, uniform_F = counts.flatten(), rate.flatten(), uniform.flatten()
        index_A = torch.nonzero(uniform_F > cumulative.flatten()).squeeze(1)
        counts = counts_F.index_put((index_A,), _inverse_cdf_table(
            rate_F[index_A], uniform_F[index_A])).view_as(counts)
    normal = (torch.sqrt(torch.tensor(2.0)) * torch.erfinv(2 * uniform - 1)
              if normal_BHW is None else normal_BHW.float())
    large = torch.round(mean + torch.sqrt(mean) * normal).clamp(min=0.0)
    return torch.where(small, counts, large)


def _inverse_cdf_table(rate: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """The number of k in 0..K_MAX - 1 with uniform > CDF(k), all k at once; in float64
    (few draws get here), so that the CDF resolves a uniform within 1e-7 of 1 (a float32
    sum saturates below it and would give K_MAX)."""
    options = {"dtype": torch.float64, "device": rate.device}
    k = torch.arange(K_MAX, **options)
    log_factorial = torch.tensor([math.lgamma(i + 1.0) for i in range(K_MAX)], **options)
    rate = rate.to(torch.float64)
    # rate 0: log(1e-30) * k sends every k >= 1 to exp(-69 k) = 0 and keeps P(0) = 1
    log_pmf = (k * torch.log(rate.clamp(min=1e-30)).unsqueeze(-1) - rate.unsqueeze(-1)
               - log_factorial)
    cumulative = torch.cumsum(torch.exp(log_pmf), dim=-1)
    return (uniform.to(torch.float64).unsqueeze(-1) > cumulative).sum(dim=-1).to(
        uniform.dtype)


def counted_log_image(log_image_BHW: torch.Tensor, uniform_BHW: torch.Tensor) -> torch.Tensor:
    """log(1 + Poisson counts) of a generated log(1 + expected photons) image, with the
    straight-through gradient of the expectation."""
    expected = torch.expm1(log_image_BHW.float())
    counts = poisson_from_uniform(expected, uniform_BHW)
    return torch.log1p(expected + (counts - expected).detach()).to(log_image_BHW.dtype)


N_SPLIT = 16  # photons placed one by one in a redrawn empty response (see nonempty_counts)


def nonempty_counts(expected_BP: torch.Tensor, uniform_BP: torch.Tensor,
                    normal_BP: torch.Tensor, uniform_total_B: torch.Tensor,
                    uniform_split_BS: torch.Tensor) -> torch.Tensor:
    """Poisson counts per fibre conditioned on at least one photon in the event (float).

    The generators model the responses of particles that leave light (the gate decides which
    do), so an all-zero draw is replaced by a draw from the conditional distribution: the
    event's total from a zero-truncated Poisson of the expected sum, then that many photons
    placed in fibres with probability proportional to their expectation (a Poisson image
    given its total is multinomial). Totals above ``N_SPLIT`` are cut to it: they need an
    expected sum where an empty draw has a probability below 1e-4. Only the rows that drew
    no photon are redrawn; an event with no expected photon at all stays empty.

    Inputs: expected photons (B, P) for P fibres; uniforms in (0, 1) and standard normals
    (see poisson_from_uniform) one per fibre; uniforms: one per event, ``N_SPLIT`` per event.
    """
    counts_BP = poisson_from_uniform(expected_BP, uniform_BP, normal_BP, compact=True)
    return redraw_empty(expected_BP, counts_BP, uniform_total_B, uniform_split_BS)


def redraw_empty(expected_BP: torch.Tensor, counts_BP: torch.Tensor,
                 uniform_total_B: torch.Tensor, uniform_split_BS: torch.Tensor
                 ) -> torch.Tensor:
    """nonempty_counts' second half: the rows of ``counts_BP`` that drew no photon, redrawn
    from the conditional distribution (a new tensor; the other rows unchanged). An exported
    graph runs it only when some row is empty (expertsim.export)."""
    empty_R = torch.nonzero(counts_BP.sum(dim=1) == 0).squeeze(1)
    expected_RP = expected_BP.float().clamp(min=0.0)[empty_R]
    total_R = expected_RP.sum(dim=1)
    p_zero_R = torch.exp(-total_R)
    truncated_R = p_zero_R + uniform_total_B[empty_R].float() * (1.0 - p_zero_R)
    photons_R = poisson_from_uniform(total_R, truncated_R, torch.zeros_like(total_R),
                                     compact=True).clamp(1.0, float(N_SPLIT))
    photons_R = torch.where(total_R > 0, photons_R, torch.zeros_like(photons_R))
    cumulative_RP = torch.cumsum(expected_RP, dim=1) / total_R.clamp(min=1e-30)[:, None]
    fibre_RS = (cumulative_RP[:, None, :] < uniform_split_BS[empty_R][:, :, None]).sum(dim=2)
    placed_RS = (torch.arange(N_SPLIT, device=expected_BP.device)[None, :]
                 < photons_R[:, None]).float()
    fibres_P = torch.arange(expected_BP.shape[1], device=expected_BP.device)
    redrawn_RP = ((fibre_RS[:, :, None] == fibres_P[None, None, :]).float()
                  * placed_RS[:, :, None]).sum(dim=1)
    return counts_BP.index_put((empty_R,), redrawn_RP)
