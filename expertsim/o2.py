"""ALICE O2's consumer of a ZDC fast-simulation export, replicated in Python.

What O2 does with the files (AliceO2, Detectors/ZDC/fastsimulation and ZDC/simulation;
SOURCES.md lists the details and where they come from), step by step:

1. Scales files: lines up to ``#means``, then numbers one per line up to a blank line or the
   end (parsed with ``std::stof``: float32); the same for ``#scales``; nine of each.
2. Per primary particle, the nine conditions (mass in MeV) scaled in float32 with the
   classifier's scales; the classifier runs at batch 1 and its first output is rounded
   (``std::round``); class 0 means the particle leaves no light and nothing else happens.
3. Otherwise the generator runs at batch 1 on standard-normal noise (1, 10) and the conditions
   scaled with the model's scales; ONNX Runtime on the CPU with one intra-op thread.
4. Every pixel p of the flat output becomes ``nphe = (int)expm1(pixel)`` (float32, truncated);
   a pixel with nphe > 0 is a hit at x = p % Nx, y = p // Nx, (Nx, Ny) = (44, 44) for ZN and
   (56, 30) for ZP. Channels (``FastSimToHits``): (x + y) even -> the common PMT (channel 5),
   odd -> a tower: ZN Ch1 x < Nx/2, y < Ny/2; Ch2 x >= Nx/2, y < Ny/2; Ch3 x < Nx/2,
   y >= Ny/2; Ch4 otherwise; ZP tower int(4 x / Nx) + 1. The sign of pz picks side A (> 0) or
   C (< 0); the same model serves both.

:class:`O2Replica` does exactly that for one detector's export and returns the hits as images
in the package's layout (rows along x), so that the validation suite scores an export with
the same report as the PyTorch path (``expertsim validate --export``). Nothing here uses the
package's networks or channel tables: it is an independent reading of the files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from expertsim.errors import DataSchemaError, ExpertSimError

N_CONDITIONS = 9
NOISE_SHAPE = (1, 10)
O2_SHAPES = {"ZN": (44, 44), "ZP": (56, 30)}  # (Nx, Ny) as O2's geometry gives them


def read_o2_scales(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(means, scales), float32 (9,) each, read as O2's ``parse_block`` reads them."""
    path = Path(path)
    if not path.exists():
        raise DataSchemaError(f"{path}: no such scales file")
    lines = path.read_text().split("\n")
    blocks = {}
    for name in ("#means", "#scales"):
        if name not in lines:
            raise DataSchemaError(f"{path}: no line {name!r} (O2's scales format: '#means', "
                                  "nine numbers, a blank line, '#scales', nine numbers)")
        values = []
        for line in lines[lines.index(name) + 1:]:
            if not line:
                break
            try:
                values.append(np.float32(line))
            except ValueError:
                raise DataSchemaError(f"{path}: {line!r} under {name} is not a number") \
                    from None
        if len(values) != N_CONDITIONS:
            raise DataSchemaError(f"{path}: {len(values)} numbers under {name}, O2 needs "
                                  f"{N_CONDITIONS} (it would switch the fast simulation off)")
        blocks[name] = np.array(values, dtype=np.float32)
    return blocks["#means"], blocks["#scales"]


def decode_pixels(output_NP: np.ndarray) -> np.ndarray:
    """O2's ``nphe = (int)expm1(pixel)`` on float32 pixels, negatives to 0 (no hit)."""
    photons = np.expm1(np.asarray(output_NP, dtype=np.float32))
    return np.maximum(np.trunc(photons), 0).astype(np.int64)


def hit_channel_sums(nphe_NP: np.ndarray, detector: str) -> np.ndarray:
    """Photons per channel (N, 5) of flat hit arrays as O2's FastSimToHits assigns them."""
    nx, ny = O2_SHAPES[detector]
    pixel = np.arange(nx * ny)
    x, y = pixel % nx, pixel // nx
    if detector == "ZN":
        tower = (x >= nx // 2).astype(int) + 2 * (y >= ny // 2)
    else:
        tower = (4 * x) // nx
    channel = np.where((x + y) % 2 == 0, 4, tower)
    sums = np.zeros((len(nphe_NP), 5))
    for c in range(5):
        sums[:, c] = nphe_NP[:, channel == c].sum(axis=1)
    return sums


def flat_to_image(nphe_NP: np.ndarray, detector: str) -> np.ndarray:
    """Flat hit arrays (index Nx * y + x) -> images (N, Nx, Ny): rows along x."""
    nx, ny = O2_SHAPES[detector]
    return nphe_NP.reshape(len(nphe_NP), ny, nx).transpose(0, 2, 1)


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ExpertSimError("ONNX Runtime is not installed: pip install 'expertsim[onnx]'") \
            from None
    return onnxruntime


def _session(path: Path, threads: int):
    """A CPU session as O2 makes it."""
    onnxruntime = _onnxruntime()
    if not path.exists():
        raise DataSchemaError(f"{path}: no such file (an export directory holds model.onnx, "
                              "scales.txt, classifier.onnx, classifier_scales.txt)")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        return onnxruntime.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises its own kinds for unreadable graphs
        raise DataSchemaError(f"{path}: ONNX Runtime cannot load it ({type(error).__name__}: "
                              f"{str(error).splitlines()[0][:200]})") from None


class O2Replica:
    """One detector's export run the way O2 runs it (module docstring).

    Args:
        export_dir: a directory written by ``expertsim export``.
        threads: ONNX Runtime intra-op threads (O2 uses 1).
        seed: seeds the noise draws and ONNX Runtime's random operators (O2 seeds from the
            machine; a seed makes the replica reproducible).
    """

    def __init__(self, export_dir: str | os.PathLike, *, threads: int = 1, seed: int = 0
                 ) -> None:
        self.export_dir = Path(export_dir)
        metadata_path = self.export_dir / "model.json"
        if not metadata_path.exists():
            raise DataSchemaError(f"{metadata_path}: no such file; export the model with "
                                  "expertsim export first")
        self.metadata = json.loads(metadata_path.read_text())
        self.detector = str(self.metadata.get("detector", "")).upper()
        if self.detector not in O2_SHAPES:
            raise DataSchemaError(f"{metadata_path}: detector {self.detector!r} is not ZN or ZP")
        _onnxruntime().set_seed(int(seed))  # once: the sessions' random operators follow it
        self.rng = np.random.default_rng(seed)
        self.classifier = _session(self.export_dir / "classifier.onnx", threads)
        self.classifier_scales = read_o2_scales(self.export_dir / "classifier_scales.txt")
        self.generator = _session(self.export_dir / "model.onnx", threads)
        self.model_scales = read_o2_scales(self.export_dir / "scales.txt")
        self._generator_inputs = [i.name for i in self.generator.get_inputs()]
        self._classifier_input = self.classifier.get_inputs()[0].name
        self._classifier_output = self.classifier.get_outputs()[0].name

    @staticmethod
    def _scale(raw_9: np.ndarray, scales: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        means, stds = scales
        return ((raw_9.astype(np.float32) - means) / stds).astype(np.float32)[None, :]

    def particle(self, raw_9: np.ndarray) -> np.ndarray | None:
        """The flat nphe array (Nx * Ny,) of one particle, or None when the classifier says
        it leaves no light."""
        gate = self.classifier.run([self._classifier_output], {
            self._classifier_input: self._scale(raw_9, self.classifier_scales)})[0]
        if int(np.round(gate.reshape(-1)[0])) == 0:
            return None
        return self.generate(raw_9, self.rng.standard_normal(NOISE_SHAPE))[0]

    def generate(self, raw_9: np.ndarray, noise_10: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The generator alone on one particle and given noise: (nphe, expected photons), flat
        in O2's order (the second from the export's output 1, for paired checks)."""
        image, expected = self.generator.run(None, {
            self._generator_inputs[0]: np.asarray(noise_10, dtype=np.float32).reshape(
                NOISE_SHAPE),
            self._generator_inputs[1]: self._scale(raw_9, self.model_scales)})[:2]
        return (decode_pixels(image.reshape(1, -1))[0],
                np.expm1(expected.reshape(-1).astype(np.float64)))

    def run(self, conditions_N9: np.ndarray, progress: Callable[[int], None] | None = None,
            gate: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(images (N, Nx, Ny) uint32 in the package's layout, hit channels (N, 5), side
        (N,) "A"/"C") for raw conditions (N, 9), one particle at a time. ``gate=False``
        skips the classifier (every particle through the generator: the generator scored
        alone on particles known to leave light, as ``expertsim validate`` scores a model on
        such a reference)."""
        nx, ny = O2_SHAPES[self.detector]
        flat = np.zeros((len(conditions_N9), nx * ny), dtype=np.int64)
        for i, raw_9 in enumerate(np.asarray(conditions_N9, dtype=np.float64)):
            nphe = self.particle(raw_9) if gate else \
                self.generate(raw_9, self.rng.standard_normal(NOISE_SHAPE))[0]
            if nphe is not None:
                flat[i] = nphe
            if progress is not None and (i + 1) % 256 == 0:
                progress(256)
        if progress is not None:
            progress(len(flat) % 256)
        side = np.where(np.asarray(conditions_N9)[:, 6] > 0, "A", "C")
        return (flat_to_image(flat, self.detector).astype(np.uint32),
                hit_channel_sums(flat, self.detector), side)


def replica_to_file(export_dir: str | os.PathLike, conditions_path: str | os.PathLike,
                    output: str | os.PathLike, *, seed: int = 0, threads: int = 1,
                    progress: Callable[[int], None] | None = None, gate: bool = True) -> Path:
    """Run the replica over every particle of ``conditions_path`` and write the hits as an
    event file (counts in the package's layout, ``/source_row``, and provenance naming the
    export's files by hash), ready for ``expertsim.validation.validate``. ``gate=False``:
    without the classifier (O2Replica.run)."""
    from expertsim.eventfile import EventFileWriter
    from expertsim.provenance import file_sha256, make_provenance
    from expertsim.sampling import read_conditions

    replica = O2Replica(export_dir, threads=threads, seed=seed)
    conditions, pdg = read_conditions(conditions_path)
    images, _, _ = replica.run(conditions, progress=progress, gate=gate)
    export_dir = Path(export_dir)
    provenance = make_provenance(
        made_by="expertsim O2 replica", seed=seed, inputs=[conditions_path],
        config={"export": str(export_dir.resolve()), "threads": threads, "batch": 1,
                "classifier": gate,
                **{f"{name}_sha256": file_sha256(export_dir / name)
                   for name in ("model.onnx", "classifier.onnx")}})
    with EventFileWriter(output, replica.detector, len(conditions), provenance=provenance,
                         with_pdg=pdg is not None, image_dtype=np.uint32, split_seed=seed,
                         extras={"source_row": np.arange(len(conditions))}) as writer:
        writer.write(0, images, conditions, pdg)
    return Path(output)
