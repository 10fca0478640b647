"""The inference rewrite of an expert (FoldedExpert) computes the generator's own function."""

import pytest
import torch
import torch.nn.functional as F

from expertsim.models import ExpertGenerator, MixtureOfExperts, Router
from expertsim.models.conditioning import cell_grids
from expertsim.models.folded import (FoldedExpert, add_rank_one_conv_, phase_kernels,
                                     rank_one_kernel, shift_factors, shifted_cells,
                                     single_output_conv, upsampled_conv)


@pytest.mark.parametrize("small", [(11, 11), (14, 8), (1, 1)])
def test_four_phase_kernels_equal_a_convolution_of_the_upsampled_map(small):
    torch.manual_seed(0)
    weight, bias = torch.randn(5, 3, 3, 3), torch.randn(5)
    h = torch.randn(4, 3, *small)
    expected = F.conv2d(F.interpolate(h, scale_factor=2.0, mode="nearest"), weight, bias,
                        padding=1)
    ours = upsampled_conv(h, phase_kernels(weight), bias.repeat(4), small).permute(0, 3, 1, 2)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    # the traced form (what the ONNX export records) interleaves the phases its own way
    traced = torch.jit.trace(lambda x: upsampled_conv(x, phase_kernels(weight), bias.repeat(4),
                                                      small), (h,), check_trace=False)
    torch.testing.assert_close(traced(h).permute(0, 3, 1, 2), expected, rtol=1e-5, atol=1e-5)


def test_rank_one_channels_convolve_as_a_matrix_product_with_zero_padding():
    torch.manual_seed(1)
    rows, cols = torch.randn(2, 4, 6), torch.randn(2, 4, 9)
    weight = torch.randn(3, 4, 3, 3)
    images = rows[:, :, :, None] * cols[:, :, None, :]  # (B, R, H, W)
    expected = F.conv2d(images, weight, padding=1).permute(0, 2, 3, 1)
    start = torch.randn(2, 6, 9, 3)
    ours = add_rank_one_conv_(start.clone(), shift_factors(rows), shift_factors(cols),
                              rank_one_kernel(weight), (6, 9))
    torch.testing.assert_close(ours, start + expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length, covered, extent", [(11, 44, 44), (28, 56, 56), (1, 4, 3)])
def test_shifted_cells_are_the_shifted_grid_with_zero_padding(length, covered, extent):
    grid, _ = cell_grids(length, length, (extent, extent), (covered, covered))
    shifted_grid, mask = shifted_cells(length, covered, extent)
    expected = shift_factors(grid[None, None])[0, :, 0]  # (L, 3), zero outside
    assert torch.equal(shifted_grid * mask, expected)
    assert torch.equal(mask, shift_factors(torch.ones(1, 1, length))[0, :, 0])


@pytest.mark.parametrize("conditioning", ["plain", "positional", "radial", "radial-intensity"])
@pytest.mark.parametrize("shape", [(44, 44), (56, 30)])
def test_a_folded_expert_draws_the_experts_images(shape, conditioning):
    torch.manual_seed(2)
    conditioning, _, head = conditioning.partition("-")
    generator = ExpertGenerator(3, shape, channels=16, conditioning=conditioning,
                                intensity=head == "intensity").eval()
    with torch.no_grad():  # biases up, so that the ReLU output is not all zeros
        generator.conv_out.bias.add_(1.0)
        if generator.position is not None:  # centres spread over the face
            generator.position.linear.bias.uniform_(-0.8, 0.8)
        z, c = torch.randn(33, 10), torch.randn(33, 9)
        for expert in range(3):
            expected = generator.forward_expert(z, c, expert)
            ours = FoldedExpert(generator, expert)(z, c)
            assert ours.shape == (33, *shape)
            assert (expected > 0).float().mean() > 0.1
            torch.testing.assert_close(ours, expected, rtol=1e-5, atol=2e-5)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = FoldedExpert(generator, expert)(z, c).float()
            torch.testing.assert_close(low, expected, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("shape", [(44, 44), (56, 30)])
def test_the_shower_centre_stays_float32_under_bfloat16(shape):
    """The placement map decides which tower gets the light: bfloat16's rounding of it
    moved trained ZP showers 0.07 fibres (FoldedExpert.centre), so it never runs in bf16."""
    torch.manual_seed(4)
    generator = ExpertGenerator(2, shape, channels=8, conditioning="radial").eval()
    with torch.no_grad():
        generator.position.linear.weight.uniform_(-0.3, 0.3)
        folded = FoldedExpert(generator, 1)
        f, placement = generator.features.features_and_placement(torch.randn(64, 9))
        full = folded.centre(f, placement)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = folded.centre(f, placement)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, full, rtol=1e-6, atol=1e-6)


def test_the_mixture_refolds_after_its_weights_change_and_saves_no_copy():
    torch.manual_seed(3)
    generator = ExpertGenerator(2, (44, 44), channels=8, conditioning="radial")
    mixture = MixtureOfExperts(Router(2), generator).eval()
    with torch.no_grad():
        generator.conv_out.bias.add_(1.0)
    z, c = torch.randn(20, 10), torch.randn(20, 9)
    before, experts = mixture.generate(z, c)
    with torch.no_grad():
        generator.conv_out.bias.add_(0.5)  # as an optimiser step would
        reference = generator(z, c, experts)
    after, _ = mixture.generate(z, c)
    torch.testing.assert_close(after, reference, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(after, before)
    assert not any("kernel" in key or "folded" in key for key in mixture.state_dict())


@pytest.mark.parametrize("shape", [(44, 44), (56, 30), (1, 1)])
def test_the_single_output_convolution_equals_conv2d(shape):
    torch.manual_seed(4)
    h, weight, bias = torch.randn(3, *shape, 5), torch.randn(1, 5, 3, 3), torch.randn(1)
    expected = F.conv2d(h.permute(0, 3, 1, 2), weight, bias, padding=1).permute(0, 2, 3, 1)
    taps = weight[0].permute(1, 2, 0).reshape(9, 5)
    torch.testing.assert_close(single_output_conv(h, taps, bias), expected, rtol=1e-5,
                               atol=1e-5)
