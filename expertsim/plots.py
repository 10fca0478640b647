"""Figures a person would rather look at than read (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from expertsim.eventfile import atomic_path, open_event_file


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_event_file(path: str | os.PathLike, output_png: str | os.PathLike,
                    n_examples: int = 8, seed: int = 0) -> Path:
    """Save example images (brightest-looking spread of intensities), the photon-sum
    histogram and the five channel histograms of an event file as one PNG."""
    plt = _pyplot()
    with open_event_file(path) as handle:
        photon_sum_N = handle["derived/photon_sum"][:]
        channels_NC = handle["derived/channels"][:]
        detector = str(handle.attrs["detector"])
        non_empty = np.flatnonzero(photon_sum_N > 0)
        rng = np.random.default_rng(seed)
        if len(non_empty):
            # Examples spread over intensity: pick from evenly spaced photon-sum quantiles.
            ordered = non_empty[np.argsort(photon_sum_N[non_empty])]
            picks = ordered[np.linspace(0, len(ordered) - 1, n_examples).astype(int)]
        else:
            picks = rng.choice(len(photon_sum_N), size=min(n_examples, len(photon_sum_N)),
                               replace=False)
        examples = [handle["images"][int(i)] for i in np.sort(picks)]
        picks = np.sort(picks)

    figure = plt.figure(figsize=(16, 8))
    grid = figure.add_gridspec(2, max(n_examples, 6))
    for k, (index, image) in enumerate(zip(picks, examples)):
        axis = figure.add_subplot(grid[0, k])
        shown = axis.imshow(np.log1p(image), cmap="viridis")
        axis.set_title(f"#{index}: {photon_sum_N[index]:.0f} ph", fontsize=8)
        axis.set_xticks([]), axis.set_yticks([])
        figure.colorbar(shown, ax=axis, fraction=0.05).ax.tick_params(labelsize=6)
    axis = figure.add_subplot(grid[1, 0])
    values = photon_sum_N[photon_sum_N > 0]
    if len(values):
        axis.hist(values, bins=np.logspace(0, np.log10(values.max() + 1), 50))
    axis.set_xscale("log"), axis.set_yscale("log")
    axis.set_xlabel("photon sum (non-empty)"), axis.set_ylabel("events")
    for channel in range(5):
        axis = figure.add_subplot(grid[1, channel + 1])
        values = channels_NC[:, channel]
        values = values[values > 0]
        if len(values):
            axis.hist(values, bins=np.logspace(0, np.log10(values.max() + 1), 40))
        axis.set_xscale("log"), axis.set_yscale("log")
        axis.set_xlabel(f"channel {channel + 1} photons")
    figure.suptitle(f"{Path(path).name}: {detector}, {len(photon_sum_N)} events, "
                    f"{(photon_sum_N <= 0).mean():.1%} empty (images: log(1 + photons))")
    figure.tight_layout()
    with atomic_path(output_png) as temporary:
        figure.savefig(temporary, format="png", dpi=90)
    plt.close(figure)
    return Path(output_png)
