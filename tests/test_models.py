import pytest
import torch

from expertsim.models import (ExpertDiscriminator, ExpertGenerator, MixtureOfExperts, Router,
                              gumbel_route)


@pytest.mark.parametrize("conditioning", ["plain", "positional", "radial"])
@pytest.mark.parametrize("shape", [(44, 44), (56, 30)])
def test_dispatch_modes_give_the_same_images_and_gradients(shape, conditioning):
    torch.manual_seed(0)
    generator = ExpertGenerator(3, shape, channels=8, conditioning=conditioning)
    discriminator = ExpertDiscriminator(3, shape, channels=4, features=16,
                                        conditioning=conditioning)
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


@pytest.mark.parametrize("conditioning", ["plain", "positional", "radial"])
def test_inference_grouping_matches_the_training_dispatch_and_chunking_changes_nothing(
        conditioning):
    """MixtureOfExperts runs each expert's group through plain layers; the images must be the
    ones the trained dispatch paths give, whatever the chunk size, with empty experts too."""
    torch.manual_seed(4)
    generator = ExpertGenerator(3, (44, 44), channels=8, conditioning=conditioning)
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


def test_positional_conditioning_draws_where_its_centre_says():
    """The centred coordinate channels move with the predicted centre: a generator whose last
    convolution reads only them draws its brightest fibre at the centre the head predicts."""
    from expertsim.models.conditioning import ConditionFeatures, centred_coordinates

    torch.manual_seed(5)
    maps = centred_coordinates(torch.zeros(2, 1, 44, 44), torch.tensor([[0.0, 0.0], [0.5, -0.5]]),
                               (44, 44), (44, 44))
    distance = maps[:, 1] ** 2 + maps[:, 2] ** 2
    nearest = [divmod(int(d.argmin()), 44) for d in distance]
    assert nearest[0] in {(21, 21), (21, 22), (22, 21), (22, 22)}
    assert nearest[1] in {(32, 10), (32, 11), (33, 10), (33, 11)}
    # derived features: the impact point of a straight line from the vertex at 112.5 m
    features = ConditionFeatures()
    mean = torch.tensor([1000.0, 0, 0, 0, 0, 0, 0, 939.6, 0])
    features.set_scaler(mean, torch.ones(9))
    raw = torch.tensor([[2500.0, 0.1, 0.0, 0.0, 2500 * 2e-4, 0.0, 2500.0, 939.6, 0.0]])
    derived = features(raw - mean)
    assert derived.shape == (1, 15)
    torch.testing.assert_close(derived[0, 9],
                               torch.asinh(torch.tensor((0.1 + 2e-4 * 11250.0) / 10.0)))


def test_radial_channels_are_one_at_the_centre_and_fall_by_their_width_in_fibres():
    from expertsim.models.conditioning import centred_coordinates

    # centre at the boundary of fibres (21, 21) and (22, 22): half-size units 0
    maps = centred_coordinates(torch.zeros(1, 1, 44, 44), torch.zeros(1, 2), (44, 44),
                               (44, 44), radial=(1.0, 4.0))
    assert maps.shape == (1, 5, 44, 44)
    # fibre (22, 22) is half a fibre from the centre on each axis: r^2 = 0.5 fibres^2
    torch.testing.assert_close(maps[0, 3, 22, 22], torch.exp(torch.tensor(-0.25)))
    # four fibres further along a row: r^2 = 4.5^2 + 0.5^2
    torch.testing.assert_close(maps[0, 4, 26, 22], torch.exp(torch.tensor(-20.5 / 32)))
    assert maps[0, 3].max() > 0.7 > maps[0, 3, 30, 30] * 1e6  # the 1-fibre channel is local


def test_the_router_bias_rebalances_and_old_files_load_without_it():
    router = Router(3)
    router.balance_bias_E.fill_(0.0)
    router.rebalance(torch.tensor([0.8, 0.15, 0.05]), rate=0.1)
    torch.testing.assert_close(router.balance_bias_E, torch.tensor([-0.14, 0.055, 0.085]))
    state = {k: v for k, v in Router(3).state_dict().items() if k != "balance_bias_E"}
    router.load_state_dict(state)  # a model file written before the bias existed
    assert torch.equal(router.balance_bias_E, torch.zeros(3))


def test_the_intensity_head_draws_the_photon_sum_and_its_calibration_fits_log_sums():
    torch.manual_seed(4)
    generator = ExpertGenerator(2, (56, 30), channels=8, conditioning="radial", intensity=True)
    c = torch.randn(400, 9)
    features = generator.features(c)
    # photon sums log-linear in two of the features, with a 10 % scatter
    log_sum = 5.0 + 0.8 * features[:, 0] - 0.3 * features[:, 10] + 0.1 * torch.randn(400)
    residual = generator.calibrate_intensity(c, torch.exp(log_sum))
    assert 0.08 < residual < 0.12  # the scatter is all that is left
    z, expert = torch.randn(400, 10), torch.randint(0, 2, (400,))
    with torch.no_grad():
        images = generator(z, c, expert)
        drawn = generator.intensity.draw(z, features, lambda layer, x: layer(x, expert))
    # the image holds exactly the head's sum, which starts at the fitted map (MLP output 0)
    torch.testing.assert_close(torch.expm1(images).sum(dim=(1, 2)), torch.exp(drawn[:, 0]),
                               rtol=1e-4, atol=1e-3)
    assert (drawn[:, 0] - log_sum).pow(2).mean().sqrt() < 0.12
    assert generator.intensity.out.weight.abs().max() == 0
    plain = ExpertGenerator(2, (56, 30), channels=8)
    assert plain.intensity is None and plain.calibrate_intensity(c, torch.exp(log_sum)) is None


def test_discriminator_sums_are_the_log_photons_of_the_image_and_its_quadrants():
    from expertsim.models.experts import SUM_SCALE, coarse_sums

    photons = torch.zeros(2, 56, 30)
    photons[0, 0, 0], photons[0, 40, 20], photons[1, 10, 29] = 3.0, 7.0, 100.0
    sums = coarse_sums(torch.log1p(photons)) / SUM_SCALE
    expected = torch.log1p(torch.tensor([[10.0, 3.0, 0.0, 0.0, 7.0], [100.0, 0.0, 100.0, 0.0,
                                                                      0.0]]))
    torch.testing.assert_close(sums, expected)
    torch.manual_seed(0)
    with_sums = ExpertDiscriminator(1, (56, 30), 4, 8, conditioning="radial", sums=True)
    logits, _ = with_sums(torch.log1p(photons), torch.randn(2, 9), torch.zeros(2, dtype=int))
    assert with_sums.hidden.weight.shape[1] == without_sums_inputs() + 5
    assert torch.isfinite(logits).all()


def without_sums_inputs():
    """The dense layer's inputs without the sums: convolution features and conditions."""
    return (ExpertDiscriminator(1, (56, 30), 4, 8, conditioning="radial")
            .hidden.weight.shape[1])
