import pytest
import torch

from expertsim.models import (ExpertDiscriminator, ExpertGenerator, MixtureOfExperts, Router,
                              gumbel_route)


@pytest.mark.parametrize("shape", [(44, 44), (56, 30)])
def test_dispatch_modes_give_the_same_images_and_gradients(shape):
    torch.manual_seed(0)
    generator = ExpertGenerator(3, shape, channels=8)
    discriminator = ExpertDiscriminator(3, shape, channels=4, features=16)
    z, c = torch.randn(7, 10), torch.randn(7, 9)
    expert = torch.tensor([0, 2, 2, 1, 0, 2, 2])
    results = {}
    for mode in ("gather", "dense", "loop"):
        generator.dispatch = discriminator.dispatch = mode
        generator.zero_grad()
        images = generator(z, c, expert)
        logits, features = discriminator(images, c, expert)
        (logits.sum() + features.mean()).backward()
        results[mode] = (images.detach(), logits.detach(), generator.conv1.weight.grad.clone())
    assert results["gather"][0].shape == (7, *shape)
    for mode in ("dense", "loop"):
        for ours, theirs in zip(results["gather"], results[mode]):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_an_expert_without_events_has_zero_gradient():
    torch.manual_seed(1)
    generator = ExpertGenerator(3, (44, 44), channels=8)
    images = generator(torch.randn(4, 10), torch.randn(4, 9), torch.tensor([0, 0, 1, 1]))
    images.sum().backward()
    assert generator.conv1.weight.grad[2].abs().sum() == 0
    assert generator.conv1.weight.grad[0].abs().sum() > 0


def test_gumbel_routing_sends_each_event_to_exactly_one_expert():
    torch.manual_seed(2)
    logits = torch.randn(50, 4)
    gumbel = -torch.log(-torch.log(torch.rand(50, 4)))
    gates, probs = gumbel_route(logits, gumbel, 0.5)
    assert torch.equal(gates.detach().sum(1), torch.ones(50))
    assert set(gates.detach().unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(probs.sum(1), torch.ones(50))


def test_inference_is_deterministic_given_the_noise():
    torch.manual_seed(3)
    mixture = MixtureOfExperts(Router(3), ExpertGenerator(3, (56, 30), channels=8)).eval()
    z, c = torch.randn(5, 10), torch.randn(5, 9)
    first, experts = mixture(z, c)
    second, _ = mixture(z, c)
    assert torch.equal(first, second) and first.shape == (5, 56, 30)
    assert torch.equal(experts, Router.forward(mixture.router, c).argmax(1))
    assert (first >= 0).all()


def test_inference_grouping_matches_the_training_dispatch_and_chunking_changes_nothing():
    """MixtureOfExperts runs each expert's group through plain layers; the images must be the
    ones the trained dispatch paths give, whatever the chunk size, with empty experts too."""
    torch.manual_seed(4)
    generator = ExpertGenerator(3, (44, 44), channels=8)
    mixture = MixtureOfExperts(Router(3), generator).eval()
    with torch.no_grad():
        mixture.router.net[-1].weight.mul_(20)  # spread the events over the experts
    z, c = torch.randn(300, 10), torch.randn(300, 9)
    image, experts = mixture.generate(z, c, chunk_size=300)
    assert len(experts.unique()) == 3
    with torch.no_grad():
        reference = generator(z, c, experts)
    torch.testing.assert_close(image, reference, rtol=1e-5, atol=1e-5)
    chunked, chunked_experts = mixture.generate(z, c, chunk_size=7)
    torch.testing.assert_close(chunked, image, rtol=1e-5, atol=1e-5)
    assert torch.equal(chunked_experts, experts)
    one, _ = mixture.generate(z[:1], c[:1])  # two of three experts get no event
    torch.testing.assert_close(one, image[:1], rtol=1e-5, atol=1e-5)
