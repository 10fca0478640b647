"""Export a trained model for ALICE O2's ZDC fast simulation (ONNX Runtime), and check it.

The O2 contract (SOURCES.md): input 0 ``noise`` (batch, 10) standard normal, input 1
``conditions`` (batch, 9) scaled as (x - mean) / scale, output 0 ``image`` (batch, H, W) in
log(1 + photons); float32; dynamic batch. An export directory holds:

    model.onnx      the router (hard routing) and the experts, one graph
    scales.txt      O2's scaler format: "#means", nine numbers one per line, a blank line,
                    "#scales", nine numbers (order E, vx, vy, vz, px, py, pz, mass, charge)
    model.json      detector, shapes, input/output names, opset, versions, hashes, check result

The check (``check_export``) runs the ONNX file in ONNX Runtime on random conditions, scaled
from raw values the way O2 does it, against PyTorch on the same noise, and computes the five
channels with O2's flat-index rule against the package's own channel sums.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from expertsim import __version__
from expertsim.detector import N_CHANNELS, channel_sums
from expertsim.errors import ExpertSimError
from expertsim.eventfile import CONDITION_COLUMNS, CONDITION_UNITS
from expertsim.provenance import file_sha256, make_provenance
from expertsim.scaler import Scaler
from expertsim.trained_model import TrainedModel

DEFAULT_OPSET = 17  # ONNX Runtime 1.13 and later run it
INPUT_NAMES = ("noise", "conditions")
OUTPUT_NAMES = ("image",)
# float32 through a few convolutions: the two runtimes differ by ~1e-6 in log(1 + photons)
LOG_TOLERANCE = 1e-4
CHANNEL_RELATIVE_TOLERANCE = 1e-4


class ExportCheckError(ExpertSimError):
    """The exported model does not reproduce PyTorch within the stated tolerance."""


@dataclass(frozen=True)
class ExportCheck:
    n_events: int
    max_abs_log_difference: float  # ONNX Runtime vs PyTorch, log(1 + photons)
    log_tolerance: float
    max_channel_relative_difference: float  # O2-way channels (ORT) vs package's (PyTorch)
    channel_tolerance: float
    mean_photon_sum: float  # of the expected counts, to judge the scale of the above
    events_per_expert: list[int]  # which of the graph's expert branches the check ran

    @property
    def passed(self) -> bool:
        return (self.max_abs_log_difference <= self.log_tolerance
                and self.max_channel_relative_difference <= self.channel_tolerance)


class _O2Graph(torch.nn.Module):
    """The mixture with O2's signature: (noise, scaled conditions) -> image only."""

    def __init__(self, mixture) -> None:
        super().__init__()
        self.mixture = mixture

    def forward(self, noise: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        return self.mixture(noise, conditions)[0]


def write_scales_file(path: str | os.PathLike, scaler: Scaler) -> None:
    """O2's scaler text format; full float64 precision, one number per line."""
    lines = ["#means", *(repr(float(v)) for v in scaler.mean), "", "#scales",
             *(repr(float(v)) for v in scaler.scale)]
    Path(path).write_text("\n".join(lines) + "\n")


def o2_channel_sums(images_NHW: np.ndarray) -> np.ndarray:
    """The five channels computed as O2's C++ loop does: over the row-major flat index
    p = j + W * i of each pixel, i % 2 == j % 2 goes to the quadrant channel, else channel 5.

    Written independently of ``expertsim.detector`` so that one can check the other.
    """
    n_events, rows, cols = images_NHW.shape
    flat_NP = images_NHW.reshape(n_events, rows * cols).astype(np.float64)
    sums_NC = np.zeros((n_events, N_CHANNELS))
    for p in range(rows * cols):
        i, j = divmod(p, cols)
        if i % 2 == j % 2:
            channel = (0 if j < cols // 2 else 1) if i < rows // 2 else (2 if j < cols // 2 else 3)
        else:
            channel = 4
        sums_NC[:, channel] += flat_NP[:, p]
    return sums_NC


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """An ONNX Runtime CPU session for ``path`` (``threads``: intra-op threads, None = ORT's
    default)."""
    try:
        import onnxruntime
    except ImportError:
        raise ExpertSimError("ONNX Runtime is not installed: pip install 'expertsim[onnx]'") \
            from None
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_export(onnx_path: str | os.PathLike, model: TrainedModel, *,
                 n_events: int = 1000, seed: int = 0) -> ExportCheck:
    """Compare ONNX Runtime with PyTorch on ``n_events`` random conditions and noise.

    Raw conditions are drawn around the training distribution (mean + scale * N(0, 1)) and
    scaled in float32 as O2 does; PyTorch gets the package's own scaling of the same values.
    """
    mean, scale = model.scaler.mean, model.scaler.scale
    rng = np.random.default_rng(seed)
    raw_N9 = mean + scale * rng.standard_normal((n_events, len(mean)))
    noise_NZ = rng.standard_normal((n_events, model.noise_dim)).astype(np.float32)
    # O2 scales in float32 (its own arithmetic, on purpose not the package's Scaler)
    o2_scaled = ((raw_N9.astype(np.float32) - mean.astype(np.float32))
                 / scale.astype(np.float32))
    onnx_NHW = onnx_session(onnx_path).run(
        None, {INPUT_NAMES[0]: noise_NZ, INPUT_NAMES[1]: o2_scaled})[0]
    torch_NHW, expert_N = model.generate(torch.from_numpy(noise_NZ), model.scale(raw_N9))
    torch_NHW = torch_NHW.numpy()
    if onnx_NHW.shape != torch_NHW.shape:
        raise ExportCheckError(f"{onnx_path}: ONNX output shape {onnx_NHW.shape}, PyTorch "
                               f"{torch_NHW.shape}")
    o2_channels = o2_channel_sums(np.expm1(onnx_NHW.astype(np.float64)))
    package_channels = channel_sums(np.expm1(torch_NHW.astype(np.float64)))
    channel_scale = np.maximum(np.abs(package_channels), 1.0)
    return ExportCheck(
        n_events=n_events,
        max_abs_log_difference=float(np.abs(onnx_NHW - torch_NHW).max()),
        log_tolerance=LOG_TOLERANCE,
        max_channel_relative_difference=float(
            (np.abs(o2_channels - package_channels) / channel_scale).max()),
        channel_tolerance=CHANNEL_RELATIVE_TOLERANCE,
        mean_photon_sum=float(package_channels.sum(axis=1).mean()),
        events_per_expert=np.bincount(expert_N.numpy(), minlength=model.n_experts).tolist())


def _declare_image_shape(onnx_path: Path, image_shape: tuple[int, int]) -> None:
    """Write the static image size into the graph's output type (the tracer names it only
    symbolically after the expert scatter), then let onnx's checker validate the graph."""
    try:
        import onnx
    except ImportError:
        raise ExpertSimError("the onnx package is not installed: pip install 'expertsim[onnx]'") \
            from None
    graph = onnx.load(str(onnx_path))
    dims = graph.graph.output[0].type.tensor_type.shape.dim
    for dim, size in zip(dims[1:], image_shape):
        dim.Clear()
        dim.dim_value = size
    onnx.checker.check_model(graph)
    onnx.save(graph, str(onnx_path))


def export_onnx(model_path: str | os.PathLike, output_dir: str | os.PathLike, *,
                opset: int = DEFAULT_OPSET, check: bool = True, check_events: int = 1000,
                seed: int = 0) -> tuple[Path, ExportCheck | None]:
    """Write model.onnx, scales.txt and model.json into ``output_dir``; returns (directory,
    check result or None).

    The files are written to a temporary directory, checked, and only then moved into place:
    a failed export or check leaves ``output_dir`` as it was.
    """
    model = TrainedModel.load(model_path)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export.", dir=output_dir))
    try:
        onnx_path = staging / "model.onnx"
        _write_onnx(model, onnx_path, opset)
        write_scales_file(staging / "scales.txt", model.scaler)
        result = check_export(onnx_path, model, n_events=check_events, seed=seed) \
            if check else None
        if result is not None and not result.passed:
            raise ExportCheckError(
                f"{model_path}: the ONNX model differs from PyTorch (max |log difference| "
                f"{result.max_abs_log_difference:.3g}, tolerance {result.log_tolerance}; "
                f"channel relative difference {result.max_channel_relative_difference:.3g}, "
                f"tolerance {result.channel_tolerance}); nothing was written. A router tie "
                "flipped by rounding gives this once in a while: try --check-seed")
        metadata = _metadata(model, onnx_path, opset, result, seed)
        (staging / "model.json").write_text(json.dumps(metadata, indent=2, default=str) + "\n")
        for name in ("model.onnx", "scales.txt", "model.json"):
            os.replace(staging / name, output_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir, result


def _write_onnx(model: TrainedModel, onnx_path: Path, opset: int) -> None:
    """Trace the mixture into an ONNX graph with O2's signature and a dynamic batch."""
    example = (torch.zeros(2, model.noise_dim), torch.zeros(2, len(CONDITION_COLUMNS)))
    with warnings.catch_warnings():
        # torch announces the TorchScript-based exporter's retirement on every call; it is
        # the exporter that handles the data-dependent expert grouping (nonzero), see
        # expertsim.models.router.MixtureOfExperts
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _O2Graph(model.mixture).eval(), example, str(onnx_path), dynamo=False,
            input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: {0: "batch"} for name in (*INPUT_NAMES, *OUTPUT_NAMES)},
            opset_version=opset)
    _declare_image_shape(onnx_path, model.image_shape)


def _metadata(model: TrainedModel, onnx_path: Path, opset: int, result: ExportCheck | None,
              seed: int) -> dict:
    """model.json: what the graph takes and gives, and what made it."""
    return {
        "format": "expertsim-onnx-export",
        "detector": model.detector.name,
        "image_shape": list(model.image_shape),
        "inputs": [
            {"index": 0, "name": INPUT_NAMES[0], "shape": ["batch", model.noise_dim],
             "dtype": "float32", "meaning": "standard-normal noise"},
            {"index": 1, "name": INPUT_NAMES[1], "shape": ["batch", len(CONDITION_COLUMNS)],
             "dtype": "float32", "meaning": "conditions scaled as (x - mean) / scale",
             "columns": list(CONDITION_COLUMNS), "units": list(CONDITION_UNITS)}],
        "outputs": [
            {"index": 0, "name": OUTPUT_NAMES[0], "shape": ["batch", *model.image_shape],
             "dtype": "float32", "meaning": "expected photons per fibre, log(1 + x)"}],
        "opset": opset,
        "scales_file": "scales.txt",
        "n_experts": model.n_experts,
        "onnx_sha256": file_sha256(onnx_path),
        "model_sha256": file_sha256(model.path),
        "torch": torch.__version__,
        "check": None if result is None else {**asdict(result), "passed": result.passed},
        "provenance": make_provenance(made_by="expertsim export", seed=seed,
                                      inputs=[model.path],
                                      config={"format": "onnx", "opset": opset}),
        "model_provenance": model.provenance,
        "package_version": __version__,
    }
