"""ExpertSim's losses as pure functions (SOURCES.md, arXiv 2508.20991).

Expert terms return one value per event (shape B), computed with the event's routed expert;
:func:`routed_mean` averages each expert over its own events and sums over experts. Router
terms return scalars. Images are log(1 + photons); photon sums are taken in counts space.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 1e-8
DIVERSITY_FLOOR = 0.1
PIXEL_FLOOR = 0.05  # photons added to the expectation in pixel_likelihood


def discriminator_adversarial(real_logits_B: torch.Tensor, fake_logits_B: torch.Tensor
                              ) -> torch.Tensor:
    """BCE of D: -log sigmoid(real) - log(1 - sigmoid(fake)), per event."""
    return F.softplus(-real_logits_B) + F.softplus(fake_logits_B)


def generator_adversarial(fake_logits_B: torch.Tensor) -> torch.Tensor:
    """Non-saturating BCE of G: -log sigmoid(fake), per event."""
    return F.softplus(-fake_logits_B)


def sdi_diversity(features1_BF: torch.Tensor, features2_BF: torch.Tensor,
                  z1_BZ: torch.Tensor, z2_BZ: torch.Tensor, spread_B: torch.Tensor
                  ) -> torch.Tensor:
    """SDI diversity: spread / (mean |f(G(z1,c)) - f(G(z2,c))| / mean |z1 - z2|).

    Two generations of the same condition should differ, in discriminator features, in
    proportion to how much their noise differs; the penalty is weighted by the condition's
    normalised response spread (1 where unknown). ``DIVERSITY_FLOOR`` is added to the ratio
    (our choice): a generator that ignores its noise, as at initialisation, is penalised at
    most spread / floor instead of without bound.
    """
    feature_distance_B = (features1_BF - features2_BF).abs().mean(dim=1)
    noise_distance_B = (z1_BZ - z2_BZ).abs().mean(dim=1)
    ratio_B = feature_distance_B / (noise_distance_B + EPS)
    return spread_B / (ratio_B + DIVERSITY_FLOOR)


def intensity(fake_BHW: torch.Tensor, real_BHW: torch.Tensor) -> torch.Tensor:
    """|photon sum of G(z, c) - photon sum of the true response| (photons), per event."""
    fake_sum_B = torch.expm1(fake_BHW.float()).sum(dim=(1, 2))
    real_sum_B = torch.expm1(real_BHW.float()).sum(dim=(1, 2))
    return (fake_sum_B - real_sum_B).abs()


def pixel_likelihood(fake_BHW: torch.Tensor, real_BHW: torch.Tensor,
                     floor: float = PIXEL_FLOOR) -> torch.Tensor:
    """Poisson deviance of the real counts x under the generated expectation lambda, per
    fibre and averaged over the fibres, per event: lambda - x + x log(x / lambda) (0 when
    lambda = x); both images are log(1 + photons). ``floor`` photons are added to lambda so
    that a fibre the generator leaves dark does not give an unbounded gradient.

    A conditional-GAN anchor (as an L1 term in image-to-image GANs): it pulls the expectation
    towards the real response of the same particle, which teaches where and how wide a shower
    is far sooner than the adversarial game; the adversarial term keeps the fluctuations.
    """
    expected = torch.expm1(fake_BHW.float()) + floor
    counts = torch.expm1(real_BHW.float())
    deviance = expected - counts + torch.xlogy(counts, counts) - torch.xlogy(counts, expected)
    return deviance.mean(dim=(1, 2))


ENERGY_BLOCK = 4  # fibres per side of the middle scale of energy_score


def quadrant_sums(photons_BHW: torch.Tensor) -> torch.Tensor:
    """Photons of the four quadrants of each image (B, 4), row-major (top-left, top-right,
    bottom-left, bottom-right); an odd side's middle row or column goes to the second half."""
    half_r, half_c = photons_BHW.shape[1] // 2, photons_BHW.shape[2] // 2
    return torch.stack([photons_BHW[:, :half_r, :half_c].sum(dim=(1, 2)),
                        photons_BHW[:, :half_r, half_c:].sum(dim=(1, 2)),
                        photons_BHW[:, half_r:, :half_c].sum(dim=(1, 2)),
                        photons_BHW[:, half_r:, half_c:].sum(dim=(1, 2))], dim=1)


def _scales(photons_BHW: torch.Tensor) -> list[torch.Tensor]:
    """sqrt(1 + photons) of the whole image (B, 1), of its four quadrants (B, 4), of its
    ENERGY_BLOCK x ENERGY_BLOCK blocks (B, blocks) and of every fibre (B, H * W): the
    intensity, the towers, the shower's shape and its fine structure (sparse halo fibres).
    sqrt tempers the heavy tail of the photon sums so that dim and bright events both count."""
    batch, rows, cols = photons_BHW.shape
    quadrants_B4 = quadrant_sums(photons_BHW)
    pad_r, pad_c = -rows % ENERGY_BLOCK, -cols % ENERGY_BLOCK
    padded = F.pad(photons_BHW, (0, pad_c, 0, pad_r))
    blocks = padded.view(batch, (rows + pad_r) // ENERGY_BLOCK, ENERGY_BLOCK,
                         (cols + pad_c) // ENERGY_BLOCK, ENERGY_BLOCK).sum(dim=(2, 4))
    return [torch.sqrt(1.0 + v) for v in (quadrants_B4.sum(dim=1, keepdim=True), quadrants_B4,
                                           blocks.flatten(1), photons_BHW.flatten(1))]


def energy_score(fake1_BHW: torch.Tensor, fake2_BHW: torch.Tensor, real_BHW: torch.Tensor,
                 weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)) -> torch.Tensor:
    """Energy score of the generated distribution at the real response, per event: for each
    scale of :func:`_scales`, (|a - y| + |b - y|) / 2 - |a - b| / 2 with a, b two
    generations of the same particle (independent noise and independent counting), y the
    real response and |.| the Euclidean norm; summed over the scales with ``weights`` (one
    per scale, in _scales' order).

    A proper scoring rule (Gneiting and Raftery 2007; SOURCES.md): its expectation over the
    real responses of a particle is smallest when the generated responses of that particle
    have the real distribution, so, unlike the pixel deviance (minimised by one image, the
    mean), it rewards the right shower-to-shower fluctuations, and it needs only the one real
    response each particle has. All images are log(1 + photons); the generations must be
    counted (whole photons) like the real ones, or the score would reward extra spread.
    """
    images = [torch.expm1(v.float()).clamp(min=0.0) for v in (fake1_BHW, fake2_BHW, real_BHW)]
    score_B = torch.zeros(real_BHW.shape[0], device=real_BHW.device)
    for weight, a_BF, b_BF, y_BF in zip(weights, *(_scales(v) for v in images),
                                        strict=True):
        score_B = score_B + 0.5 * weight * (_norm(a_BF - y_BF) + _norm(b_BF - y_BF)
                                            - _norm(a_BF - b_BF))
    return score_B


def _norm(d_BF: torch.Tensor) -> torch.Tensor:
    """Euclidean norm per row, smooth at 0 (no NaN gradient for identical vectors)."""
    return torch.sqrt(d_BF.pow(2).sum(dim=1) + EPS)


def image_centroid(image_BHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Photon-weighted centroid (row, column) of log(1 + photons) images, shape (B, 2), in
    units of the image half-size with 0 at the image centre (the frame of
    ``expertsim.models.conditioning.centred_coordinates``), and 1 for a non-empty image (B,).
    An empty image gets the centre (0, 0) and 0."""
    photons_BHW = torch.expm1(image_BHW.float()).clamp(min=0)
    rows, cols = photons_BHW.shape[1:]
    total_B = photons_BHW.sum(dim=(1, 2))
    row_R = (torch.arange(rows, device=photons_BHW.device) + 0.5) * (2.0 / rows) - 1.0
    col_C = (torch.arange(cols, device=photons_BHW.device) + 0.5) * (2.0 / cols) - 1.0
    safe_B = total_B.clamp(min=EPS)
    centre_B2 = torch.stack([photons_BHW.sum(dim=2) @ row_R / safe_B,
                             photons_BHW.sum(dim=1) @ col_C / safe_B], dim=1)
    return centre_B2, (total_B > 0).float()


def centroid(fake_BHW: torch.Tensor, real_BHW: torch.Tensor,
             centre_B2: torch.Tensor | None = None) -> torch.Tensor:
    """Squared distance, in image half-sizes, between the centroid of the generated
    expectation and that of the real response of the same particle, per event; plus, when the
    generator predicts a shower centre (positional conditioning), the same distance for that
    centre. Events with an empty real image count 0.

    Why (ours, not published): in the built-in Monte Carlo the centroid of a shower follows
    the particle's impact point to a third of a fibre, but the adversarial and pixel terms
    teach this slowly; after a few hundred steps the generators drew their showers near the
    image centre whatever the conditions (centroids 8x further from the MC's than the
    repeat-to-repeat spread). A direct, paired target on the place fixes that in a few steps.
    """
    real_B2, valid_B = image_centroid(real_BHW)
    fake_B2, _ = image_centroid(fake_BHW)
    loss_B = ((fake_B2 - real_B2) ** 2).sum(dim=1)
    if centre_B2 is not None:
        loss_B = loss_B + ((centre_B2.float() - real_B2) ** 2).sum(dim=1)
    return loss_B * valid_B


def auxiliary(predicted_B2: torch.Tensor, true_B2: torch.Tensor, valid_B: torch.Tensor
              ) -> torch.Tensor:
    """MSE between the regressor's brightest-fibre position on G's image and the true one.

    Positions are normalised to [0, 1]; events whose true image is empty (valid = 0) count 0.
    """
    return ((predicted_B2 - true_B2) ** 2).mean(dim=1) * valid_B


def routed_mean(loss_B: torch.Tensor, mask_BE: torch.Tensor, count_E: torch.Tensor
                ) -> torch.Tensor:
    """Sum over experts of each expert's mean loss over its routed events.

    ``count_E`` is the number of events routed to each expert (the global count under data
    parallelism, so that per-rank sums add up to the global mean). An expert with no events
    contributes 0.
    """
    return ((loss_B.unsqueeze(1) * mask_BE).sum(dim=0) / count_E.clamp(min=1)).sum()


def router_gan_feedback(gates_BE: torch.Tensor, expert_loss_B: torch.Tensor) -> torch.Tensor:
    """The experts' generator losses fed back: gate of the routed expert * its loss (detached).

    The gate is 1 in the forward pass and carries the soft routing gradient, so the router
    learns to move an event away from an expert that generates it badly. Per event (B,).
    """
    routed_gate_B = (gates_BE * gates_BE.detach()).sum(dim=1)  # forward gates are one-hot
    return routed_gate_B * expert_loss_B.detach()


def expert_differentiation(mean_features_EF: torch.Tensor,
                           used_E: torch.Tensor | None = None) -> torch.Tensor:
    """Mean pairwise cosine similarity of the experts' mean discriminator features.

    ``mean_features_EF`` is each expert's gate-weighted mean feature vector over the events
    routed to it; ``used_E`` (bool) marks the experts that received events: pairs with an
    unused expert do not count (its "mean" has no events, only a gradient). Penalises experts
    whose outputs look alike; 0 with fewer than two used experts.
    """
    n_experts = mean_features_EF.shape[0]
    if n_experts < 2:
        return mean_features_EF.sum() * 0.0
    unit_EF = F.normalize(mean_features_EF.float(), dim=1)
    similarity_EE = unit_EF @ unit_EF.T
    pairs_EE = ~torch.eye(n_experts, dtype=torch.bool, device=unit_EF.device)
    if used_E is not None:
        pairs_EE = pairs_EE & used_E.unsqueeze(0) & used_E.unsqueeze(1)
    return (similarity_EE * pairs_EE).sum() / pairs_EE.sum().clamp(min=1)


def utilisation_entropy(mean_probs_E: torch.Tensor) -> torch.Tensor:
    """log E - H(mean routing probability): 0 when the experts are used equally."""
    return math.log(mean_probs_E.shape[0]) + (mean_probs_E * torch.log(mean_probs_E + EPS)).sum()


def load_balancing(fraction_E: torch.Tensor, mean_probs_E: torch.Tensor) -> torch.Tensor:
    """Adaptive load balancing: E * sum_e f_e * P_e, scaled by the current imbalance.

    f_e is the fraction of events routed to e, P_e the mean routing probability (Switch
    Transformer form, 1 when balanced); the factor E * max_e f_e (>= 1, detached) makes the
    push stronger the more one expert dominates.
    """
    n_experts = mean_probs_E.shape[0]
    fraction_E = fraction_E.detach()
    imbalance = n_experts * fraction_E.max()
    return imbalance * n_experts * (fraction_E * mean_probs_E).sum()
