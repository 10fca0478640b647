import numpy as np
import pytest

from expertsim.detector import (brightest_fibre, channel_masks, channel_sums, get_detector,
                                photon_sums)
from expertsim.errors import DataSchemaError


def o2_channels(image_flat):
    """The five channels written from the O2 rule in SOURCES.md, for a flat 44x44 image."""
    out = [0.0] * 5
    for i in range(44):
        for j in range(44):
            value = image_flat[j + 44 * i]
            if i % 2 == j % 2:
                channel = (0 if j < 22 else 1) if i < 22 else (2 if j < 22 else 3)
            else:
                channel = 4
            out[channel] += value
    return out


def test_channel_sums_follow_the_o2_rule(rng):
    images = rng.poisson(2.0, size=(3, 44, 44))
    ours = channel_sums(images)
    for k in range(3):
        assert ours[k] == pytest.approx(o2_channels(images[k].ravel()))


@pytest.mark.parametrize("shape", [(44, 44), (56, 30)])
def test_channel_masks_partition_the_fibres(shape):
    masks = channel_masks(shape)
    assert masks.shape == (5,) + shape
    np.testing.assert_array_equal(masks.sum(0), 1.0)
    # The common channel takes half of the fibres (the other checkerboard parity).
    assert masks[4].sum() == shape[0] * shape[1] / 2


def o2_hits_channels(image):
    """O2's FastSimToHits channel of each photon, written from its description: x runs along
    the first image axis, y along the second; (x + y) even -> common PMT (5), odd -> towers:
    ZN 2 x 2 (x < Nx/2, y < Ny/2 -> 1; x >= Nx/2, y < Ny/2 -> 2; ... ), ZP int(4 x / Nx) + 1."""
    nx, ny = image.shape
    sums = [0.0] * 5
    for x in range(nx):
        for y in range(ny):
            if (x + y) % 2 == 0:
                channel = 5
            elif (nx, ny) == (56, 30):
                channel = int(4 * x / nx) + 1
            else:
                channel = 1 + (x >= nx // 2) + 2 * (y >= ny // 2)
            sums[channel - 1] += image[x, y]
    return sums


@pytest.mark.parametrize("shape", [(44, 44), (56, 30)])
def test_named_channel_conventions(rng, shape):
    images = rng.poisson(1.5, size=(2, *shape)).astype(float)
    default = channel_sums(images)
    np.testing.assert_array_equal(default, channel_sums(images, "o2-debug"))
    hits = channel_sums(images, "o2-hits")
    for k in range(2):
        assert hits[k] == pytest.approx(o2_hits_channels(images[k]))
    paper = channel_sums(images, "expertsim-paper")
    # the two parities swap between the published conventions
    np.testing.assert_allclose(paper[:, 4], default[:, :4].sum(1))
    if shape == (44, 44):  # the same channels, O2 numbering its towers by x first
        np.testing.assert_array_equal(paper[:, [0, 2, 1, 3, 4]], hits)
    else:
        assert not np.allclose(paper[:, :4], hits[:, :4])
    with pytest.raises(DataSchemaError, match="unknown channel convention 'x'"):
        channel_sums(images, "x")


def test_channel_sums_add_up_to_photon_sum(rng):
    images = rng.poisson(0.5, size=(10, 56, 30))
    np.testing.assert_allclose(channel_sums(images).sum(1), photon_sums(images))


def test_brightest_fibre_and_empty_events():
    images = np.zeros((2, 44, 44))
    images[0, 7, 30] = 5
    np.testing.assert_array_equal(brightest_fibre(images), [[7, 30], [-1, -1]])


def test_unknown_detector_is_named():
    with pytest.raises(DataSchemaError, match="'ZQ'"):
        get_detector("ZQ")
