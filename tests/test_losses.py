"""Each loss against a value computed by hand on tiny tensors."""

import math

import numpy as np
import pytest
import torch

from expertsim.models import losses, gumbel_route


def test_adversarial_losses():
    zero = torch.zeros(2)
    assert losses.discriminator_adversarial(zero, zero).tolist() == pytest.approx(
        [2 * math.log(2)] * 2)
    assert losses.generator_adversarial(zero).tolist() == pytest.approx([math.log(2)] * 2)
    assert losses.generator_adversarial(torch.tensor([30.0])).item() == pytest.approx(0, abs=1e-9)


def test_sdi_diversity():
    # feature distance 1, noise distance 2 -> ratio 0.5; spread 2 -> 2 / (0.5 + 0.1) = 3.33
    value = losses.sdi_diversity(torch.ones(1, 4), torch.zeros(1, 4), torch.ones(1, 3),
                                 -torch.ones(1, 3), torch.tensor([2.0]))
    assert value.item() == pytest.approx(2 / 0.6, rel=1e-6)
    # identical generations: bounded by spread / floor
    same = losses.sdi_diversity(torch.ones(1, 4), torch.ones(1, 4), torch.ones(1, 3),
                                -torch.ones(1, 3), torch.tensor([1.0]))
    assert same.item() == pytest.approx(10.0)


def test_intensity_in_photons():
    fake = torch.zeros(1, 2, 2)
    real = torch.zeros(1, 2, 2)
    fake[0, 0, 0] = math.log(1 + 3)  # 3 photons
    real[0, 1, 1] = math.log(1 + 5)  # 5 photons
    assert losses.intensity(fake, real).item() == pytest.approx(2.0, rel=1e-6)


def test_auxiliary_masks_empty_events():
    predicted = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    true = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert losses.auxiliary(predicted, true, torch.tensor([1.0, 0.0])).tolist() == [0.25, 0.0]


def test_routed_mean_averages_each_expert_over_its_events():
    loss = torch.tensor([1.0, 2.0, 3.0, 4.0])
    mask = torch.tensor([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0]], dtype=torch.float32)
    count = mask.sum(0)  # expert 2 is empty and contributes 0
    assert losses.routed_mean(loss, mask, count).item() == pytest.approx(1.5 + 3.5)


def test_router_feedback_pushes_away_from_a_bad_expert():
    logits = torch.zeros(1, 3, requires_grad=True)
    gumbel = torch.tensor([[0.0, 5.0, 0.0]])  # routes to expert 1
    gates, _ = gumbel_route(logits, gumbel, temperature=1.0)
    assert gates.detach().tolist() == [[0.0, 1.0, 0.0]]
    feedback = losses.router_gan_feedback(gates, torch.tensor([2.0]))
    assert feedback.item() == pytest.approx(2.0)
    feedback.sum().backward()
    assert logits.grad[0, 1] > 0  # gradient descent lowers the logit of the routed expert
    assert logits.grad[0, 0] < 0 and logits.grad[0, 2] < 0


def test_expert_differentiation():
    same = torch.tensor([[1.0, 2.0], [1.0, 2.0]])
    orthogonal = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    assert losses.expert_differentiation(same).item() == pytest.approx(1.0)
    assert losses.expert_differentiation(orthogonal).item() == pytest.approx(0.0, abs=1e-7)
    assert losses.expert_differentiation(torch.ones(1, 4)).item() == 0.0


def test_utilisation_entropy_and_load_balancing():
    uniform = torch.full((3,), 1 / 3)
    one_hot = torch.tensor([1.0, 0.0, 0.0])
    assert losses.utilisation_entropy(uniform).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.utilisation_entropy(one_hot).item() == pytest.approx(math.log(3), rel=1e-5)
    assert losses.load_balancing(uniform, uniform).item() == pytest.approx(1.0)
    assert losses.load_balancing(one_hot, one_hot).item() == pytest.approx(9.0)


def test_counting_step_draws_poisson_counts_with_a_straight_through_gradient():
    from expertsim.models.counting import counted_log_image, poisson_from_uniform

    generator = torch.Generator().manual_seed(0)
    for mean in (0.3, 4.0, 60.0):  # exact inverse CDF, and the normal approximation
        counts = poisson_from_uniform(torch.full((100_000,), mean),
                                      torch.rand(100_000, generator=generator))
        assert torch.equal(counts, counts.round()) and counts.min() >= 0
        assert abs(counts.mean().item() - mean) < 0.02 * mean + 0.01
        assert abs(counts.var().item() - mean) < 0.05 * mean + 0.01
    log_image = torch.log1p(torch.tensor([[0.0, 0.4, 7.5]])).requires_grad_()
    uniform = torch.tensor([[0.5, 0.9, 0.5]])
    seen = counted_log_image(log_image, uniform)
    counts = torch.expm1(seen.detach())
    torch.testing.assert_close(counts, counts.round())  # whole photons, as sampled
    assert counts[0, 0] == 0  # no light where none is expected
    seen.sum().backward()
    expected = torch.expm1(log_image.detach())
    # d log(1 + lambda + (k - lambda)) / d lambda * d lambda / d x = (1 + lambda) / (1 + k)
    torch.testing.assert_close(log_image.grad, (1 + expected) / (1 + counts))


def test_compact_counting_gives_the_recurrences_counts():
    """The exported graph's compact inversion (dense steps, then a float64 CDF table for the
    larger counts) draws what the training recurrence draws from the same uniforms, over the
    exact range and the normal approximation above it; where float rounding makes them
    differ, the compact one is the exact Poisson quantile."""
    from scipy.stats import poisson

    from expertsim.models.counting import EXACT_UP_TO, poisson_from_uniform

    generator = torch.Generator().manual_seed(1)
    mean = torch.cat([torch.zeros(1000), torch.rand(2_000_000, generator=generator) * 30.0])
    uniform, normal = torch.rand(len(mean), generator=generator), torch.randn(len(mean))
    loop = poisson_from_uniform(mean, uniform, normal)
    compact = poisson_from_uniform(mean, uniform, normal, compact=True)
    assert compact[:1000].abs().max() == 0
    differ = compact != loop
    assert differ.float().mean() < 1e-5 and (compact - loop).abs().max() <= 1
    assert torch.equal(compact[mean > EXACT_UP_TO], loop[mean > EXACT_UP_TO])
    exact = poisson.ppf(uniform[differ].double().numpy(), mean[differ].double().numpy())
    np.testing.assert_array_equal(compact[differ].numpy(), exact)
    assert (loop > 10).sum() > 100_000  # the table part is exercised


def test_pixel_likelihood_is_zero_for_the_true_expectation_and_grows_away_from_it():
    real = torch.log1p(torch.tensor([[[0.0, 3.0], [10.0, 1.0]]]))
    exact = losses.pixel_likelihood(real, real, floor=0.0)
    assert exact.abs().max() < 1e-5
    for factor in (0.5, 2.0):
        fake = torch.log1p(torch.expm1(real) * factor + 0.01)
        assert losses.pixel_likelihood(fake, real).item() > 0.1


def test_image_centroid_by_hand():
    # 4x2 image: 3 photons at (row 0, col 1), 1 photon at (row 3, col 1); pixel centres in
    # half-sizes: rows -0.75, -0.25, 0.25, 0.75; columns -0.5, 0.5
    photons = torch.zeros(2, 4, 2)
    photons[0, 0, 1], photons[0, 3, 1] = 3.0, 1.0
    centre, valid = losses.image_centroid(torch.log1p(photons))
    torch.testing.assert_close(centre[0], torch.tensor([(3 * -0.75 + 0.75) / 4, 0.5]))
    assert valid.tolist() == [1.0, 0.0]
    assert centre[1].tolist() == [0.0, 0.0]  # empty: the centre, and not counted


def test_centroid_loss_is_zero_when_the_places_agree_and_pulls_the_shower_to_the_real_one():
    real = torch.zeros(1, 5, 5)
    real[0, 1, 1] = 20.0
    real = torch.log1p(real)
    assert losses.centroid(real, real).item() == pytest.approx(0.0, abs=1e-10)
    fake_photons = torch.zeros(1, 5, 5)
    fake_photons[0, 3, 3] = 20.0
    fake_photons[0, 1, 1] = 1.0
    fake = torch.log1p(fake_photons).requires_grad_(True)
    # the predicted centre counts as well: at the real centroid it adds nothing
    real_centre, _ = losses.image_centroid(real)
    value = losses.centroid(fake, real, real_centre)
    assert value.item() > 0.3  # (2 * 0.4 * 20 / 21) ** 2 * 2 ~ 1.16
    value.sum().backward()
    # more light at the real place lowers the loss, more at the wrong place raises it
    assert fake.grad[0, 1, 1] < 0 < fake.grad[0, 3, 3]
    assert losses.centroid(fake.detach(), torch.zeros(1, 5, 5)).item() == 0.0  # empty real


def test_energy_score_is_smallest_when_the_generated_spread_is_the_real_one():
    # showers of one shape whose intensity fluctuates by a log-normal of width 0.3; counted
    generator = torch.Generator().manual_seed(0)
    rows, cols = torch.arange(12.0)[:, None], torch.arange(10.0)[None, :]
    shape = torch.exp(-((rows - 6) ** 2 + (cols - 4) ** 2) / 6)
    shape = shape / shape.sum()

    def showers(width: float, n: int = 3000) -> torch.Tensor:
        amplitude = 150 * torch.exp(width * torch.randn(n, generator=generator))
        return torch.log1p(torch.poisson(amplitude[:, None, None] * shape, generator=generator))

    real = showers(0.3)
    scores = {width: losses.energy_score(showers(width), showers(width), real).mean().item()
              for width in (0.0, 0.3, 0.6)}
    assert scores[0.3] < scores[0.0] - 0.05  # the mean image alone (no fluctuation) loses
    assert scores[0.3] < scores[0.6] - 0.05
    # two generations identical to the real response: 0 up to the norm's smoothing
    assert losses.energy_score(real[:5], real[:5], real[:5]).abs().max() < 1e-3
    # the score is the weighted sum of its four scales' scores
    a, b, y = showers(0.6, 50), showers(0.6, 50), real[:50]
    alone = [losses.energy_score(a, b, y, tuple(float(i == k) for i in range(4)))
             for k in range(4)]
    assert all((scale > 0).any() for scale in alone)
    torch.testing.assert_close(losses.energy_score(a, b, y), sum(alone))
    torch.testing.assert_close(losses.energy_score(a, b, y, (3.0, 1.0, 0.0, 2.0)),
                               3 * alone[0] + alone[1] + 2 * alone[3])
