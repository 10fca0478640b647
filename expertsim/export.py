"""Export a trained model for ALICE O2's ZDC fast simulation, in the form O2 consumes, and
check it.

O2 (SOURCES.md, "How ALICE O2 runs a fast-simulation model") runs, per primary particle: a
classifier on the nine scaled conditions whose first output it rounds to a class (0 = no
light: nothing more is done), then the generator on (noise (1, 10), scaled conditions (1, 9));
it turns every output pixel into ``nphe = (int)expm1(pixel)`` photons, reading the output as
a flat array indexed ``Nx * y + x`` with (Nx, Ny) = (44, 44) for ZN and (56, 30) for ZP, and
makes hits with its own channel mapping. An export directory holds what that needs:

    model.onnx             the generator: router, experts and the counting step in one graph
                           (each expert behind an If node: one particle runs one expert's
                           operators; the counting step's inversion in a few dozen operators).
                           Inputs ``noise`` (batch, 10) standard normal and ``conditions``
                           (batch, 9) scaled as (x - mean) / scale. Output 0 ``image``
                           (batch, W, H): photon counts k drawn inside the graph (Poisson, given
                           at least one photon, as ``expertsim sample`` draws them), encoded as
                           log(1 + k + HIT_MARGIN) for k >= 1 and 0 for k = 0, so that O2's
                           truncation gives k exactly (log1p(k) alone can come back as k - 1 in
                           float32); laid out (y, x) with x along the detector's rows (the
                           package's axis 0): the flat index is Nx * y + x as O2 reads it.
                           Output 1 ``expected``: log(1 + expected photons), same layout.
    scales.txt             O2's scaler format: "#means", nine numbers one per line, a blank
                           line, "#scales", nine numbers (order E, vx, vy, vz, px, py, pz,
                           mass [MeV], charge)
    classifier.onnx        the empty-response gate: input ``conditions`` (batch, 9) scaled;
                           output 0 ``leaves_light`` (batch, 1): 1.0 or 0.0 drawn with the
                           gate's probability (O2's rounding keeps it), output 1 ``probability``
    classifier_scales.txt  the classifier's scales (the same numbers; O2 reads two files)
    model.json             detector, shapes, names, the O2 settings to use, every convention
                           above, versions, hashes, the check's result

The check (``check_export``) runs both graphs in ONNX Runtime on random conditions against
PyTorch on the same noise and the same scaled conditions: the expectations agree; the written
scales files, applied as O2 applies them (float32), give those scaled conditions; every
pixel decodes to a whole number by O2's truncation, O2's hit channels summed from the flat
output equal the package's ``o2-hits`` channel sums of the same counts, and the drawn photon
sums and gate decisions agree with their expectations within 5 standard errors.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from expertsim import __version__
from expertsim.detector import channel_sums
from expertsim.errors import ConfigError, ExpertSimError
from expertsim.eventfile import CONDITION_COLUMNS, CONDITION_UNITS
from expertsim.models.counting import N_SPLIT, poisson_from_uniform, redraw_empty
from expertsim.models.folded import FoldedExpert
from expertsim.o2 import decode_pixels, hit_channel_sums, read_o2_scales
from expertsim.provenance import file_sha256, make_provenance
from expertsim.scaler import Scaler
from expertsim.trained_model import TrainedModel

DEFAULT_OPSET = 17  # ONNX Runtime 1.13 and later run it
INPUT_NAMES = ("noise", "conditions")
OUTPUT_NAMES = ("image", "expected")
CLASSIFIER_INPUT_NAMES = ("conditions",)
CLASSIFIER_OUTPUT_NAMES = ("leaves_light", "probability")
# photons added to a non-zero count before the log (module docstring): float32 keeps O2's
# decoding exact up to ~9e4 photons in one fibre (tests; the largest published event holds
# 3,360 in all), and O2's debug channel sum (expm1 without truncation) gains 0.05 a hit fibre
HIT_MARGIN = 0.05
# float32 through a few convolutions: the two runtimes differ by ~1e-6 in log(1 + photons)
LOG_TOLERANCE = 1e-4
PROBABILITY_TOLERANCE = 1e-4
# O2 scales in float32: rounding of scaled conditions of order one is ~1e-7. The runtimes are
# compared on the same scaled inputs, since a trained generator can turn a 5e-7 change of an
# input into 2e-4 of log(1 + photons) in a dim fibre (a ZP model, 0.18 photons: 0.1 %)
SCALING_TOLERANCE = 1e-5
MAX_Z = 5.0  # drawn photon sums and gate decisions against their expectations
CHECK_CHUNK = 256  # events per ONNX Runtime call in the check
EXPORT_FILES = ("model.onnx", "scales.txt", "classifier.onnx", "classifier_scales.txt",
                "model.json")
O2_SETTINGS = {"ZN": ("ZDCFastSimModelPathNeutron", "ZDCFastSimModelScalesNeutron"),
               "ZP": ("ZDCFastSimModelPathProton", "ZDCFastSimModelScalesProton")}


class ExportCheckError(ExpertSimError):
    """The exported model does not reproduce PyTorch within the stated tolerance."""


@dataclass(frozen=True)
class ExportCheck:
    n_events: int
    max_abs_log_difference: float  # ONNX Runtime vs PyTorch, log(1 + expected photons)
    log_tolerance: float
    max_scaling_difference: float  # scales files as O2 applies them vs the package's scaling
    max_decoding_error: float | None  # |expm1(pixel) - (k + margin)|, float32; None: no counts
    max_channel_difference: float | None  # O2 hit channels vs package o2-hits, photons
    photon_sum_z: float | None  # drawn photon sums vs their expectation, standard errors
    max_abs_probability_difference: float | None  # classifier vs PyTorch gate
    leaves_light_z: float | None  # drawn gate decisions vs the probabilities
    mean_photon_sum: float  # of the expected counts, to judge the scale of the above
    events_per_expert: list[int]  # which of the graph's expert branches the check ran

    @property
    def passed(self) -> bool:
        counting = self.max_decoding_error is None or (
            self.max_decoding_error < HIT_MARGIN / 2 and self.max_channel_difference == 0
            and abs(self.photon_sum_z) <= MAX_Z)
        gate = self.max_abs_probability_difference is None or (
            self.max_abs_probability_difference <= PROBABILITY_TOLERANCE
            and abs(self.leaves_light_z) <= MAX_Z)
        return (self.max_abs_log_difference <= self.log_tolerance and counting and gate
                and self.max_scaling_difference <= SCALING_TOLERANCE)


def to_o2_order(image_BHW: torch.Tensor) -> torch.Tensor:
    """(B, H, W) with rows along x -> (B, W, H): row-major flat index Nx * y + x (Nx = H)."""
    return image_BHW.transpose(1, 2)


class _ExpertBranch(torch.nn.Module):
    """One expert's generator on every event it is given (traced into a branch), in its
    inference form (expertsim.models.folded: the same function, ~2.5x fewer FLOPs)."""

    def __init__(self, generator, expert: int) -> None:
        super().__init__()
        self.folded = FoldedExpert(generator, expert)

    def forward(self, noise: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        return self.folded(noise, conditions)


class _SkippingMixture(torch.nn.Module):
    """MixtureOfExperts.forward's image, with each expert behind a data-dependent ``if``
    (scripted: the ONNX graph gets an If node per expert). A traced mixture runs every
    expert's operators on its possibly empty group; at batch 1, O2's mode, two of three
    experts are empty and ONNX Runtime still pays its fixed cost for each of their few
    hundred operators."""

    def __init__(self, router, branches: list, image_shape: tuple[int, int]) -> None:
        super().__init__()
        self.router, self.branches = router, torch.nn.ModuleList(branches)
        self.rows, self.cols = image_shape

    def forward(self, noise: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        expert_B = self.router(conditions).argmax(dim=1)
        image_BHW = torch.zeros(noise.shape[0], self.rows, self.cols, dtype=noise.dtype)
        expert = 0
        for branch in self.branches:
            index_N = (expert_B == expert).nonzero().squeeze(1)
            if index_N.numel() > 0:
                image_BHW = image_BHW.index_copy(0, index_N,
                                                 branch(noise[index_N], conditions[index_N]))
            expert += 1
        return image_BHW


def _traced(module: torch.nn.Module, example: tuple) -> torch.jit.ScriptModule:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript's retirement notices (see _write_onnx)
        return torch.jit.trace(module.eval(), example, check_trace=False)


class _O2Expected(torch.nn.Module):
    """log(1 + expected photons) (B, H, W) -> (expected, expected) in O2's order (B, W, H):
    the export without counts (``counts=False``)."""

    def forward(self, log_expected_BHW: torch.Tensor):
        expected = to_o2_order(log_expected_BHW)
        return expected, expected


class _O2Draw(torch.nn.Module):
    """log(1 + expected photons) (B, H, W) -> (expected photons (B, P), Poisson counts
    (B, P)), the graph drawing its own uniforms and normals."""

    def forward(self, log_expected_BHW: torch.Tensor):
        # exp(x) - 1: the exporter has no expm1; at these magnitudes (photons >= 1 or
        # exactly 0) the rounding is far below the decoding margin
        expected_BP = (torch.exp(log_expected_BHW.float()) - 1.0).clamp(min=0.0).flatten(1)
        return expected_BP, poisson_from_uniform(expected_BP, torch.rand_like(expected_BP),
                                                 torch.randn_like(expected_BP), compact=True)


class _O2Redraw(torch.nn.Module):
    """(expected (B, P), counts (B, P)) -> counts with the empty rows redrawn (redraw_empty;
    nonempty_counts is _O2Draw then this)."""

    def forward(self, expected_BP: torch.Tensor, counts_BP: torch.Tensor):
        return redraw_empty(expected_BP, counts_BP, torch.rand_like(expected_BP[:, 0]),
                            torch.rand_like(expected_BP[:, :N_SPLIT]))


class _O2Encode(torch.nn.Module):
    """(counts (B, P), log(1 + expected) (B, H, W)) -> O2's (image, expected), (B, W, H)."""

    def forward(self, counts_BP: torch.Tensor, log_expected_BHW: torch.Tensor):
        # log(1 + x): the exporter has no log1p
        encoded_BP = torch.log(1.0 + counts_BP + HIT_MARGIN * (counts_BP > 0).float())
        return (to_o2_order(encoded_BP.view_as(log_expected_BHW)),
                to_o2_order(log_expected_BHW))


class _O2Outputs(torch.nn.Module):
    """log(1 + expected photons) (B, H, W) -> O2's (image, expected), both (B, W, H): counts
    drawn conditioned on at least one photon (nonempty_counts). Scripted around traced parts:
    the redraw of empty rows sits behind an ``if`` (ONNX If), so a particle whose draw has
    light skips its ~110 operators, which ONNX Runtime would run even on an empty selection
    (it pays per operator at batch 1, O2's mode); held out, the seed-0 study models' expected
    photons leave a ZN particle with light empty with probability below 1e-4, a ZP one 3.6 %."""

    def __init__(self, image_shape: tuple[int, int]) -> None:
        super().__init__()
        example = torch.zeros(2, *image_shape)
        flat = torch.zeros(2, image_shape[0] * image_shape[1])
        self.draw = _traced(_O2Draw(), (example,))
        self.redraw = _traced(_O2Redraw(), (flat, flat))
        self.encode = _traced(_O2Encode(), (flat, example))

    def forward(self, log_expected_BHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        expected_BP, counts_BP = self.draw(log_expected_BHW)
        if bool((counts_BP.sum(dim=1) == 0).any()):
            counts_BP = self.redraw(expected_BP, counts_BP)
        return self.encode(counts_BP, log_expected_BHW)


class _O2Generator(torch.nn.Module):
    """The mixture with O2's signature: (noise, scaled conditions) -> (image, expected).
    Scripted around traced parts: the experts behind data-dependent ifs (_SkippingMixture),
    the counting step traced."""

    def __init__(self, mixture, counts: bool) -> None:
        super().__init__()
        generator = mixture.generator
        example = (torch.zeros(2, generator.noise_dim), torch.zeros(2, len(CONDITION_COLUMNS)))
        branches = [_traced(_ExpertBranch(generator, expert), example)
                    for expert in range(generator.n_experts)]
        self.mixture = _SkippingMixture(mixture.router, branches, generator.image_shape)
        self.outputs = (_O2Outputs(generator.image_shape) if counts else
                        _traced(_O2Expected(), (torch.zeros(2, *generator.image_shape),)))

    def forward(self, noise: torch.Tensor, conditions: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.outputs(self.mixture(noise, conditions))


class _O2Classifier(torch.nn.Module):
    """The gate with O2's classifier signature: scaled conditions -> (drawn class, p)."""

    def __init__(self, gate) -> None:
        super().__init__()
        self.gate = gate

    def forward(self, conditions: torch.Tensor):
        probability_B1 = self.gate.probability(conditions)[:, None]
        return (torch.rand_like(probability_B1) < probability_B1).float(), probability_B1


def write_scales_file(path: str | os.PathLike, scaler: Scaler) -> None:
    """O2's scaler text format; full float64 precision, one number per line."""
    lines = ["#means", *(repr(float(v)) for v in scaler.mean), "", "#scales",
             *(repr(float(v)) for v in scaler.scale)]
    Path(path).write_text("\n".join(lines) + "\n")


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


def _o2_scaled(raw_N9: np.ndarray, scales_path: Path) -> np.ndarray:
    """Raw conditions scaled in float32 with a scales file, as O2 scales them."""
    means, scales = read_o2_scales(scales_path)
    return ((raw_N9.astype(np.float32) - means) / scales).astype(np.float32)


def _zero_truncated_moments(expected_sum_N: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of a Poisson total given at least one photon (0 for no light)."""
    total = np.asarray(expected_sum_N, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(total > 0, total / -np.expm1(-total), 0.0)
    return mean, np.maximum(mean * (1.0 + total) - mean ** 2, 0.0)


def check_export(export_dir: str | os.PathLike, model: TrainedModel, *,
                 n_events: int = 1000, seed: int = 0) -> ExportCheck:
    """Run the exported graphs in ONNX Runtime on ``n_events`` random conditions and noise
    against PyTorch (module docstring). Raw conditions are drawn around the training
    distribution (mean + scale * N(0, 1)) and scaled by the package; both runtimes get those
    values, and the written scales files, applied as O2 applies them, must reproduce them."""
    import onnxruntime

    export_dir = Path(export_dir)
    rng = np.random.default_rng(seed)
    onnxruntime.set_seed(seed)
    mean, scale = model.scaler.mean, model.scaler.scale
    raw_N9 = mean + scale * rng.standard_normal((n_events, len(mean)))
    noise_NZ = rng.standard_normal((n_events, model.noise_dim)).astype(np.float32)
    scaled_t_N9 = model.scale(raw_N9)
    scaled_N9 = scaled_t_N9.cpu().numpy().astype(np.float32)  # the model may sit on a GPU
    scaling = max(float(np.abs(_o2_scaled(raw_N9, export_dir / name) - scaled_N9).max())
                  for name in ("scales.txt", "classifier_scales.txt"))
    session = onnx_session(export_dir / "model.onnx")
    # in chunks, as the sampler runs the generators: memory stays bounded for any n_events
    parts = [session.run(None, {INPUT_NAMES[0]: noise_NZ[i:i + CHECK_CHUNK],
                                INPUT_NAMES[1]: scaled_N9[i:i + CHECK_CHUNK]})
             for i in range(0, n_events, CHECK_CHUNK)]
    image_NWH, expected_NWH = (np.concatenate([part[j] for part in parts]) for j in (0, 1))
    torch_NHW, expert_N = model.generate(torch.from_numpy(noise_NZ), scaled_t_N9)
    torch_NHW = torch_NHW.cpu().numpy()
    if expected_NWH.shape != torch_NHW.transpose(0, 2, 1).shape:
        raise ExportCheckError(f"{export_dir}: ONNX output shape {expected_NWH.shape}, "
                               f"PyTorch {torch_NHW.shape} (transposed for O2)")
    expected_sum_N = np.expm1(torch_NHW.astype(np.float64)).clip(min=0).sum(axis=(1, 2))
    counting = _check_counting(image_NWH, expected_sum_N, model.detector.name) \
        if not np.array_equal(image_NWH, expected_NWH) else {}
    return ExportCheck(
        n_events=n_events,
        max_abs_log_difference=float(np.abs(expected_NWH.transpose(0, 2, 1) - torch_NHW).max()),
        log_tolerance=LOG_TOLERANCE,
        max_scaling_difference=scaling,
        max_decoding_error=counting.get("max_decoding_error"),
        max_channel_difference=counting.get("max_channel_difference"),
        photon_sum_z=counting.get("photon_sum_z"),
        **_check_classifier(export_dir, model, scaled_t_N9),
        mean_photon_sum=float(expected_sum_N.mean()),
        events_per_expert=np.bincount(expert_N.cpu().numpy(),
                                      minlength=model.n_experts).tolist())


def _check_counting(image_NWH: np.ndarray, expected_sum_N: np.ndarray, detector: str
                    ) -> dict[str, float]:
    """Decoding, O2 channel mapping and photon statistics of the drawn counts."""
    flat_NP = image_NWH.reshape(len(image_NWH), -1)
    nphe_NP = decode_pixels(flat_NP)
    margin_NP = np.where(nphe_NP > 0, nphe_NP + HIT_MARGIN, 0.0)
    decoding = float(np.abs(np.expm1(flat_NP.astype(np.float32)) - margin_NP).max())
    counts_NHW = nphe_NP.reshape(image_NWH.shape).transpose(0, 2, 1)
    channels = float(np.abs(hit_channel_sums(nphe_NP, detector)
                            - channel_sums(counts_NHW, "o2-hits")).max())
    mean_N, variance_N = _zero_truncated_moments(expected_sum_N)
    z = (nphe_NP.sum() - mean_N.sum()) / math.sqrt(max(variance_N.sum(), 1e-12))
    return {"max_decoding_error": decoding, "max_channel_difference": channels,
            "photon_sum_z": float(z)}


def _check_classifier(export_dir: Path, model: TrainedModel, scaled_t_N9: torch.Tensor
                      ) -> dict[str, float]:
    from expertsim.gate import gate_probability

    drawn_N1, probability_N1 = onnx_session(export_dir / "classifier.onnx").run(None, {
        CLASSIFIER_INPUT_NAMES[0]: scaled_t_N9.cpu().numpy().astype(np.float32)})
    reference_N = gate_probability(model.gate, scaled_t_N9)
    p = probability_N1[:, 0].astype(np.float64)
    spread = math.sqrt(max(float((p * (1 - p)).sum()), 1e-12))
    return {"max_abs_probability_difference": float(np.abs(p - reference_N).max()),
            "leaves_light_z": float((drawn_N1.sum() - p.sum()) / spread)}


def export_onnx(model_path: str | os.PathLike, output_dir: str | os.PathLike, *,
                opset: int = DEFAULT_OPSET, check: bool = True, check_events: int = 1000,
                seed: int = 0, counts: bool = True) -> tuple[Path, ExportCheck | None]:
    """Write the files of the module docstring into ``output_dir``; returns (directory,
    check result or None).

    ``counts=False`` writes the expected photons as output 0 instead of drawn counts: the
    contract before this version, which O2's truncation empties (kept to show that the
    replica catches it). The files are written to a temporary directory, checked, and only
    then moved into place: a failed export or check leaves ``output_dir`` as it was.
    """
    model = TrainedModel.load(model_path)
    if model.gate is None:
        raise ConfigError(f"{model_path}: the model has no empty-response gate, and O2 runs no "
                          "fast simulation without a classifier; train it on a file with empty "
                          "events (gate.enabled: true)")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export.", dir=output_dir))
    try:
        _write_onnx(_scripted(_O2Generator(model.mixture, counts)), staging / "model.onnx",
                    opset, (torch.zeros(2, model.noise_dim),
                            torch.zeros(2, len(CONDITION_COLUMNS))),
                    INPUT_NAMES, OUTPUT_NAMES, model.image_shape[::-1])
        _write_onnx(_O2Classifier(model.gate), staging / "classifier.onnx", opset,
                    (torch.zeros(2, len(CONDITION_COLUMNS)),), CLASSIFIER_INPUT_NAMES,
                    CLASSIFIER_OUTPUT_NAMES, (1,))
        for name in ("scales.txt", "classifier_scales.txt"):
            write_scales_file(staging / name, model.scaler)
        result = check_export(staging, model, n_events=check_events, seed=seed) \
            if check else None
        if result is not None and not result.passed:
            raise ExportCheckError(
                f"{model_path}: the ONNX export does not reproduce PyTorch "
                f"({describe_check(result)}); nothing was written. A router tie flipped by "
                "rounding gives a large log difference once in a while: try --check-seed")
        metadata = _metadata(model, staging, opset, result, seed, counts)
        (staging / "model.json").write_text(json.dumps(metadata, indent=2, default=str) + "\n")
        for name in EXPORT_FILES:
            os.replace(staging / name, output_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir, result


def describe_check(result: ExportCheck) -> str:
    """The check's numbers with their limits, for messages."""
    parts = [f"max |log difference| {result.max_abs_log_difference:.3g} (limit "
             f"{result.log_tolerance})",
             f"scales files vs package scaling {result.max_scaling_difference:.3g} (limit "
             f"{SCALING_TOLERANCE})"]
    if result.max_decoding_error is not None:
        parts += [f"decoding error {result.max_decoding_error:.3g} (limit {HIT_MARGIN / 2})",
                  f"O2 channels vs package {result.max_channel_difference:.3g} photons (limit 0)",
                  f"photon sums {result.photon_sum_z:+.2f} standard errors (limit {MAX_Z})"]
    if result.max_abs_probability_difference is not None:
        parts += [f"gate probability difference {result.max_abs_probability_difference:.3g} "
                  f"(limit {PROBABILITY_TOLERANCE})",
                  f"gate decisions {result.leaves_light_z:+.2f} standard errors (limit {MAX_Z})"]
    return "; ".join(parts)


def _scripted(module: torch.nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's retirement notices (see _write_onnx)
        return torch.jit.script(module)


def _write_onnx(graph: torch.nn.Module, onnx_path: Path, opset: int, example: tuple,
                input_names: tuple[str, ...], output_names: tuple[str, ...],
                output_shape: tuple[int, ...]) -> None:
    """Trace ``graph`` into ONNX with a dynamic batch, then declare the outputs' static
    sizes (the tracer names them only symbolically after the expert scatter) and let onnx's
    checker validate the graph."""
    with warnings.catch_warnings():
        # torch announces the TorchScript-based exporter's retirement on every call; it is
        # the exporter that handles the data-dependent expert grouping (nonzero), see
        # expertsim.models.router.MixtureOfExperts
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph.eval(), example, str(onnx_path), dynamo=False,
            input_names=list(input_names), output_names=list(output_names),
            dynamic_axes={name: {0: "batch"} for name in (*input_names, *output_names)},
            opset_version=opset)
    try:
        import onnx
    except ImportError:
        raise ExpertSimError("the onnx package is not installed: pip install 'expertsim[onnx]'") \
            from None
    model = onnx.load(str(onnx_path))
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        for dim, size in zip(dims[1:], output_shape):
            dim.Clear()
            dim.dim_value = size
    onnx.checker.check_model(model)
    onnx.save(model, str(onnx_path))


def _conventions(model: TrainedModel, counts: bool) -> dict[str, str]:
    """model.json's conventions: how O2 is to read the graphs' inputs and outputs."""
    rows, cols = model.image_shape
    return {
        "pixel_order": (f"output[b, y, x] with x along the detector's {rows}-fibre axis "
                        "(the package's image rows) and y along the other: O2's flat index "
                        f"Nx * y + x with (Nx, Ny) = ({rows}, {cols}); the package's image "
                        "is the transpose"),
        "channels": ("O2 FastSimToHits: (x + y) even -> common PMT (channel 5), odd -> "
                     + ("towers Ch1 x < Nx/2, y < Ny/2; Ch2 x >= Nx/2, y < Ny/2; Ch3 "
                        "x < Nx/2, y >= Ny/2; Ch4 x >= Nx/2, y >= Ny/2"
                        if model.detector.name == "ZN" else
                        "tower int(4 x / Nx) + 1 along the 56-fibre axis")
                     + "; the package's channel convention 'o2-hits'"),
        "side": ("one model for both sides: O2 picks side A for pz > 0 and C for pz < 0; "
                 "the response does not depend on the sign of pz"),
        "counting": ("Poisson per fibre from uniforms drawn in the graph (inverse CDF up "
                     "to 20 expected photons, normal above), given at least one photon in "
                     "the event: as expertsim sample draws" if counts else "none"),
        "mass_unit": "MeV (O2 passes mass x 1000)",
    }


def _metadata(model: TrainedModel, staging: Path, opset: int, result: ExportCheck | None,
              seed: int, counts: bool) -> dict:
    """model.json: what the graphs take and give, how O2 is to use them, what made them."""
    rows, cols = model.image_shape
    path_key, scales_key = O2_SETTINGS[model.detector.name]
    image_meaning = (
        f"photon counts k drawn in the graph, log(1 + k + {HIT_MARGIN}) for k >= 1, 0 for "
        "k = 0: O2's (int)expm1(pixel) gives k" if counts else
        "expected photons per fibre, log(1 + x): O2's (int)expm1 truncation loses every "
        "fraction (not for O2)")
    return {
        "format": "expertsim-onnx-export",
        "detector": model.detector.name,
        "image_shape": [rows, cols],
        "o2_settings": {path_key: "model.onnx", scales_key: "scales.txt",
                        "ZDCFastSimClassifierPath": "classifier.onnx",
                        "ZDCFastSimClassifierScales": "classifier_scales.txt"},
        "inputs": [
            {"index": 0, "name": INPUT_NAMES[0], "shape": ["batch", model.noise_dim],
             "dtype": "float32", "meaning": "standard-normal noise"},
            {"index": 1, "name": INPUT_NAMES[1], "shape": ["batch", len(CONDITION_COLUMNS)],
             "dtype": "float32", "meaning": "conditions scaled as (x - mean) / scale",
             "columns": list(CONDITION_COLUMNS), "units": list(CONDITION_UNITS)}],
        "outputs": [
            {"index": 0, "name": OUTPUT_NAMES[0], "shape": ["batch", cols, rows],
             "dtype": "float32", "meaning": image_meaning},
            {"index": 1, "name": OUTPUT_NAMES[1], "shape": ["batch", cols, rows],
             "dtype": "float32", "meaning": "expected photons per fibre, log(1 + x)"}],
        "classifier": {
            "inputs": [{"index": 0, "name": CLASSIFIER_INPUT_NAMES[0],
                        "shape": ["batch", len(CONDITION_COLUMNS)], "dtype": "float32",
                        "meaning": "conditions scaled with classifier_scales.txt"}],
            "outputs": [{"index": 0, "name": CLASSIFIER_OUTPUT_NAMES[0], "shape": ["batch", 1],
                         "meaning": "1.0 leaves light / 0.0 empty, drawn with output 1's "
                                    "probability (O2 rounds output 0)"},
                        {"index": 1, "name": CLASSIFIER_OUTPUT_NAMES[1], "shape": ["batch", 1],
                         "meaning": "P(photon sum >= 1)"}],
            "training": (model.gate_info or {}).get("report")},
        "conventions": _conventions(model, counts),
        "opset": opset,
        "onnx_sha256": file_sha256(staging / "model.onnx"),
        "classifier_sha256": file_sha256(staging / "classifier.onnx"),
        "model_sha256": file_sha256(model.path),
        "n_experts": model.n_experts,
        "torch": torch.__version__,
        "check": None if result is None else {**asdict(result), "passed": result.passed},
        "provenance": make_provenance(made_by="expertsim export", seed=seed,
                                      inputs=[model.path],
                                      config={"format": "onnx", "opset": opset,
                                              "counts": counts}),
        "model_provenance": model.provenance,
        "package_version": __version__,
    }
