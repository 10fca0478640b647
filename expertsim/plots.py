"""Figures a person would rather look at than read (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from expertsim.eventfile import EventFile
from expertsim.fileio import atomic_path


# mplhep's ALICE style (ticks inside on all four sides, minor ticks, frameless legends, axis
# labels at the axis ends) with font sizes for figures of several panels (the style's own are
# for one plot on a page)
PANEL_STYLE = {"font.size": 11, "axes.labelsize": 12, "axes.labelpad": 4, "xtick.labelsize": 10,
               "ytick.labelsize": 10, "legend.fontsize": 10, "xtick.major.size": 6,
               "ytick.major.size": 6, "xtick.minor.size": 3, "ytick.minor.size": 3,
               "lines.markersize": 4, "axes.titlesize": 11}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep

    plt.style.use({**mplhep.style.ALICE, **PANEL_STYLE,
                   "font.sans-serif": ["TeX Gyre Heros", "DejaVu Sans"]})
    return plt


def _hep_histograms(top, bottom, reference_N: np.ndarray, generated_N: np.ndarray,
                    bins: np.ndarray, labels: tuple[str, str] = ("Monte Carlo", "generated")
                    ) -> None:
    """The HEP comparison: the Monte Carlo as points with Poisson errors, the generated
    histogram (scaled to the MC's number of events) as a line, and below them the ratio
    generated / MC with the errors of both."""
    import mplhep

    ref_counts, _ = np.histogram(reference_N, bins)
    gen_counts, _ = np.histogram(generated_N, bins)
    scale = len(reference_N) / max(len(generated_N), 1)
    mplhep.histplot(ref_counts, bins, yerr=np.sqrt(ref_counts), histtype="errorbar",
                    color="black", label=labels[0], ax=top)
    mplhep.histplot(gen_counts * scale, bins, histtype="step", color="C3", label=labels[1],
                    ax=top)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = gen_counts * scale / ref_counts
        error = ratio * np.sqrt(1 / gen_counts + 1 / ref_counts)
    shown = np.isfinite(ratio) & (ref_counts > 0)
    centres = 0.5 * (bins[1:] + bins[:-1])
    bottom.errorbar(centres[shown], ratio[shown], yerr=error[shown], fmt="o", color="C3",
                    markersize=3)
    bottom.axhline(1.0, color="grey", lw=0.8)
    bottom.set_ylim(0, 2)


def save_figure(figure, path: str | os.PathLike, dpi: int = 90) -> Path:
    """Save a figure as PNG (atomically) and close it."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=dpi)
    _pyplot().close(figure)
    return Path(path)


def plot_event_file(path: str | os.PathLike, output_png: str | os.PathLike,
                    n_examples: int = 8, seed: int = 0) -> Path:
    """Save example images (brightest-looking spread of intensities), the photon-sum
    histogram and the five channel histograms of an event file as one PNG."""
    plt = _pyplot()
    with EventFile(path) as events:
        photon_sum_N = events.derived("photon_sum")
        channels_NC = events.derived("channels")
        detector = events.detector.name
        non_empty = np.flatnonzero(photon_sum_N > 0)
        rng = np.random.default_rng(seed)
        if len(non_empty):
            # Examples spread over intensity: pick from evenly spaced photon-sum quantiles.
            ordered = non_empty[np.argsort(photon_sum_N[non_empty])]
            picks = ordered[np.linspace(0, len(ordered) - 1, n_examples).astype(int)]
        else:
            picks = rng.choice(len(photon_sum_N), size=min(n_examples, len(photon_sum_N)),
                               replace=False)
        picks = np.sort(picks)
        examples = events.images(picks)

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
    return save_figure(figure, output_png, dpi=90)


def validation_figures(generated: dict, reference: dict, paired: dict, report: dict,
                       output_dir: Path) -> list[str]:
    """The validation report's figures: channels.png (histograms with ratio panels),
    mean_images.png, examples.png, response_energy.png; returns the file names.

    ``generated``, ``reference``: feature dicts (expertsim.metrics.event_features plus "path"
    and "row": the images are read from the files, block by block for the mean images);
    ``paired``: the reference event of each generated row; ``report``: metrics.json.
    """
    figures = {
        "channels.png": _channel_ratio_figure(generated, reference,
                                              report["headline"]["ws_channels"]),
        "mean_images.png": _mean_images_figure(generated, reference),
        "examples.png": _examples_figure(generated, paired),
        "response_energy.png": _response_figure(report["response_vs_energy"]),
    }
    for name, figure in figures.items():
        save_figure(figure, output_dir / name, dpi=80)
    return list(figures)


def _channel_ratio_figure(generated: dict, reference: dict, ws_channels: list[float]):
    plt = _pyplot()
    figure, axes = plt.subplots(2, 5, figsize=(20, 6), sharex="col",
                                gridspec_kw={"height_ratios": [3, 1], "hspace": 0.05})
    for k in range(5):
        values = np.concatenate([generated["channels"][:, k], reference["channels"][:, k]])
        bins = np.linspace(0, np.quantile(values, 0.995) + 1, 40)
        _hep_histograms(axes[0, k], axes[1, k], reference["channels"][:, k],
                        generated["channels"][:, k], bins)
        axes[0, k].set_yscale("log")
        axes[0, k].set_title(f"channel {k + 1}: WS {ws_channels[k]:.2f}")
        axes[1, k].set_xlabel("photons")
    axes[0, 0].set_ylabel("events")
    axes[0, 0].legend()
    axes[1, 0].set_ylabel("gen. / MC")
    figure.subplots_adjust(left=0.05, right=0.99, top=0.93, bottom=0.12, wspace=0.25)
    return figure


def _mean_images_figure(generated: dict, reference: dict):
    figure, axes = _pyplot().subplots(1, 2, figsize=(8, 4))
    for axis, (title, source) in zip(axes, (("Monte Carlo", reference),
                                            ("generated", generated))):
        shown = axis.imshow(mean_image(source["path"], source["row"]), cmap="viridis")
        axis.set_title(f"mean image, {title}")
        figure.colorbar(shown, ax=axis)
    return figure


def _examples_figure(generated: dict, paired: dict):
    order = np.argsort(paired["photon_sum"])
    picks = order[np.linspace(len(order) // 2, len(order) - 1, 5).astype(int)]
    figure, axes = _pyplot().subplots(2, 5, figsize=(15, 6))
    shown = {}
    for label, source in (("MC", paired), ("generated", generated)):
        with EventFile(source["path"]) as events:
            shown[label] = events.images(source["row"][picks])
    for column, row in enumerate(picks):
        for line, (label, source) in enumerate((("MC", paired), ("generated", generated))):
            image = np.log1p(np.asarray(shown[label][column], float))
            axes[line, column].imshow(image, cmap="viridis")
            axes[line, column].set_title(f"{label}: {source['photon_sum'][row]:.0f} ph",
                                         fontsize=9)
            axes[line, column].set_xticks([]), axes[line, column].set_yticks([])
    figure.suptitle("same conditions, Monte Carlo (top) and generated (bottom); log(1 + photons)")
    figure.subplots_adjust(top=0.86, hspace=0.3)
    return figure


def mean_image(path: str | Path, rows: np.ndarray, block: int = 4096) -> np.ndarray:
    """Mean image (H, W) of the events ``rows`` of an event file (repeats count as often as
    they appear), read block by block."""
    with EventFile(path) as events:
        weight_N = np.bincount(rows, minlength=events.n_events).astype(np.float64)
        total = np.zeros(events.detector.shape)
        for start in range(0, events.n_events, block):
            stop = min(start + block, events.n_events)
            if weight_N[start:stop].any():
                total += np.tensordot(weight_N[start:stop],
                                      events.image_range(start, stop).astype(np.float64), 1)
    return total / max(len(rows), 1)


def _response_figure(response: dict):
    figure, axes = _pyplot().subplots(1, 2, figsize=(11, 4))
    edges = np.array(response["edges_gev"])
    centres = np.sqrt(edges[1:] * edges[:-1])
    for key, label in (("reference", "Monte Carlo"), ("generated", "generated")):
        values = response[key]
        axes[0].plot(centres, np.array(values["mean"], float), "o-", label=label)
        axes[1].plot(centres, np.array(values["resolution"], float), "o-", label=label)
    for axis, name in zip(axes, ("mean photon sum", "resolution (std / mean)")):
        axis.set_xscale("log"), axis.set_xlabel("energy [GeV]"), axis.set_ylabel(name)
        axis.legend()
    return figure


def channel_overlay_figure(reference_NC: np.ndarray, generated: dict[str, np.ndarray]):
    """Channel-sum histograms (photons) of several models against the Monte Carlo: one panel
    per channel; ``generated`` maps a model name to its (N, 5) channel sums."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 5, figsize=(20, 4))
    for channel, axis in enumerate(axes):
        top = max(np.percentile(reference_NC[:, channel], 99.5), 1.0)
        bins = np.linspace(0, top, 40)
        axis.hist(reference_NC[:, channel], bins=bins, histtype="stepfilled", color="0.8",
                  label="Monte Carlo")
        for name, channels_NC in generated.items():
            axis.hist(channels_NC[:, channel], bins=bins, histtype="step", label=name)
        axis.set_yscale("log")
        axis.set_xlabel(f"channel {channel + 1} sum [photons]")
    axes[0].set_ylabel("events")
    axes[-1].legend(fontsize=8)
    figure.suptitle("Channel sums on the test split: every model against the Monte Carlo")
    figure.tight_layout()
    return figure


def expert_figure(result: dict):
    """Per-expert analysis: energy, Monte Carlo photon sum, species and intensity group of the
    events each expert receives, and utilisation over training."""
    plt = _pyplot()
    analysis = result["analysis"]
    expert = np.array(analysis["expert_of_event"])
    energy, photon_sum = np.array(analysis["energy"]), np.array(analysis["photon_sum"])
    pdg = np.array(analysis["pdg"])
    n_experts = result["n_experts"]
    figure, axes = plt.subplots(1, 5, figsize=(24, 4.2))
    energy_bins = np.geomspace(max(energy.min(), 1.0), energy.max() * 1.01, 30)
    sum_bins = np.geomspace(1, max(photon_sum.max(), 2) * 1.01, 30)
    for e in range(n_experts):
        mask = expert == e
        axes[0].hist(energy[mask], bins=energy_bins, histtype="step", label=f"expert {e}")
        axes[1].hist(photon_sum[mask], bins=sum_bins, histtype="step", label=f"expert {e}")
    for axis, label in ((axes[0], "energy [GeV]"), (axes[1], "Monte Carlo photon sum")):
        axis.set_xscale("log")
        axis.set_xlabel(label)
        axis.set_ylabel("events")
        axis.legend(fontsize=8)
    species = analysis["species"]
    width = 0.8 / max(len(species), 1)
    for k, s in enumerate(species):
        fractions = [((expert == e) & (pdg == s)).sum() / max((expert == e).sum(), 1)
                     for e in range(n_experts)]
        axes[2].bar(np.arange(n_experts) + k * width, fractions, width, label=f"PDG {s}")
    axes[2].set_xticks(np.arange(n_experts) + 0.4 - width / 2,
                       [f"expert {e}" for e in range(n_experts)])
    axes[2].set_ylabel("fraction of the expert's events")
    axes[2].legend(fontsize=7)
    counts = np.array([entry.get("group_counts", [0, 0, 0]) for entry in analysis["experts"]])
    axes[3].imshow(counts / np.maximum(counts.sum(axis=1, keepdims=True), 1), cmap="viridis",
                   vmin=0, vmax=1)
    for (i, j), value in np.ndenumerate(counts):
        axes[3].text(j, i, str(value), ha="center", va="center", color="w")
    axes[3].set_xticks(range(3), ["low", "medium", "high"])
    axes[3].set_yticks(range(n_experts), [f"expert {e}" for e in range(n_experts)])
    axes[3].set_xlabel("intensity group of the MC response")
    axes[3].set_title(f"agreement {analysis['group_agreement']:.2f}")
    for e in range(n_experts):
        steps = [u["step"] for u in result["utilisation"] if f"expert_fraction_{e}" in u]
        values = [u[f"expert_fraction_{e}"] for u in result["utilisation"]
                  if f"expert_fraction_{e}" in u]
        axes[4].plot(steps, values, label=f"expert {e}")
    axes[4].set_xlabel("training step")
    axes[4].set_ylabel("fraction of the batch routed")
    axes[4].legend(fontsize=8)
    figure.suptitle(f"{result['name']} (seed {result['seed']}): what each expert receives, "
                    "test split")
    figure.tight_layout()
    return figure


def collision_figures(section: dict, arrays: dict[str, np.ndarray], output_dir: Path
                      ) -> list[str]:
    """The Pb-Pb figures (expertsim.collisions): pbpb_linearity.png (summed photon sum and
    resolution against the free-nucleon number, generated / MC ratio panels) and
    pbpb_centrality.png (summed photon-sum histograms per centrality class, with the
    free-nucleon numbers); returns the file names."""
    figures = {"pbpb_linearity.png": _linearity_figure(section),
               "pbpb_centrality.png": _centrality_figure(section, arrays)}
    for name, figure in figures.items():
        save_figure(figure, output_dir / name, dpi=80)
    return list(figures)


def _linearity_figure(section: dict):
    plt = _pyplot()
    linearity, nucleon = section["linearity"], section["nucleon"]
    edges = np.array(linearity["nucleon_edges"], float)
    centres = 0.5 * (edges[1:] + edges[:-1]) - 0.5
    figure, axes = plt.subplots(2, 2, figsize=(12, 7), sharex=True,
                                gridspec_kw={"height_ratios": [3, 1]})
    # as in the histograms: Monte Carlo black, generated red; the MC repeat (the floor) grey
    styles = {"mc": ("Monte Carlo", "o-", "black"), "mc_repeat": ("MC repeat", ".:", "0.55"),
              "generated": ("generated", "s-", "C3")}
    for column, key in enumerate(("mean", "resolution")):
        reference = np.array(linearity["mc"][key], float)
        for name, (label, marker, colour) in styles.items():
            values = np.array(linearity[name][key], float)
            axes[0, column].plot(centres, values, marker, color=colour, label=label)
            if name != "mc":
                with np.errstate(divide="ignore", invalid="ignore"):
                    axes[1, column].plot(centres, values / reference, marker, color=colour)
        axes[1, column].axhline(1.0, color="grey", lw=0.8)
        axes[1, column].set_ylim(0.5, 1.5)
        axes[1, column].set_xlabel(f"free spectator {nucleon}s per collision side")
        axes[1, column].set_ylabel("/ MC")
    slope = {k: linearity[k]["photons_per_nucleon"] for k in ("mc", "generated")}
    axes[0, 0].set_ylabel("mean summed photon sum")
    axes[0, 0].set_title(f"{section['detector']}: photons per {nucleon} MC {slope['mc']:.1f}, "
                         f"generated {slope['generated']:.1f}")
    axes[0, 1].set_ylabel("resolution (rms / mean)")
    axes[0, 0].legend()
    figure.tight_layout()
    return figure


def _centrality_figure(section: dict, arrays: dict[str, np.ndarray]):
    """Summed photon-sum histograms per centrality class (generated / MC ratio panels), and
    the free-nucleon number per side against centrality."""
    plt = _pyplot()
    rows = section["by_centrality"]
    columns = -(-(len(rows) + 1) // 2)
    # two groups of (histogram, ratio) rows with a spacer row between them for the titles
    figure, axes = plt.subplots(5, columns, figsize=(3.8 * columns, 9.5), squeeze=False,
                                gridspec_kw={"height_ratios": [3, 1, 0.9, 3, 1], "hspace": 0.1})
    for axis in axes[2]:
        axis.set_visible(False)
    tops = [axes[0, c] for c in range(columns)] + [axes[3, c] for c in range(columns)]
    bottoms = [axes[1, c] for c in range(columns)] + [axes[4, c] for c in range(columns)]
    centrality, nucleon = arrays["centrality"], section["nucleon"]
    for top, bottom, row in zip(tops, bottoms, rows):
        low, high = row["centrality"]
        chosen = (centrality >= low) & (centrality < high)
        sums = {k: arrays[k][chosen].sum(axis=1) for k in ("mc", "generated")}
        limit = max(float(np.quantile(np.concatenate(list(sums.values())), 0.995)), 1.0)
        _hep_histograms(top, bottom, sums["mc"], sums["generated"],
                        np.linspace(0, limit * 1.05, 21))
        top.set_title(f"{low}-{high} %: {row['nucleons'][0]:.1f} free {nucleon}s")
        top.set_xticklabels([])
        bottom.set_xlabel("summed photons")
    tops[0].legend()
    tops[0].set_ylabel("collision sides")
    bottoms[0].set_ylabel("gen. / MC")
    last = tops[len(rows)]
    last.errorbar([0.5 * sum(row["centrality"]) for row in rows],
                  [row["nucleons"][0] for row in rows],
                  yerr=[row["nucleons"][1] for row in rows], fmt="o", color="black")
    last.set_xlabel("centrality [%]")
    last.set_title(f"free {nucleon}s per side (mean, rms)")
    bottoms[len(rows)].set_visible(False)
    for top, bottom in zip(tops[len(rows) + 1:], bottoms[len(rows) + 1:]):
        top.set_visible(False), bottom.set_visible(False)
    figure.suptitle(f"{section['detector']}: Pb-Pb collisions, summed over the free spectator "
                    f"{nucleon}s of each side ({section['n_collisions']} collisions)")
    figure.subplots_adjust(left=0.05, right=0.99, top=0.91, bottom=0.07, wspace=0.3)
    return figure
