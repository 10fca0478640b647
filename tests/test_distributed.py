"""Data parallelism with real torch.distributed: 2 CPU processes (gloo) under torchrun."""

import subprocess
import sys

import pytest
import torch

from expertsim.checkpoint import load_checkpoint


def train(config, output, *extra):
    command = [*extra, "-m", "expertsim", "train", "--config", str(config), "--no-resume",
               "--set", f"train.output_dir={output}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return load_checkpoint(output / "checkpoint_last.pt")[1]


@pytest.mark.slow
def test_two_processes_match_one_on_the_same_global_batch(zn_file, tmp_path):
    config = tmp_path / "ddp.yaml"
    config.write_text(
        f"data: {{path: {zn_file}, batch_size: 64, val_max_events: 200}}\n"
        "model: {generator_channels: 8, discriminator_channels: 4, discriminator_features: 16}\n"
        "train: {epochs: 1, max_steps: 4, seed: 3, threads: 1, log_every: 1}\n"
        "gate: {steps: 300}\n"
        "tracking: {enabled: false}\n")
    single = train(config, tmp_path / "one", sys.executable)
    double = train(config, tmp_path / "two", sys.executable, "-m", "torch.distributed.run",
                   "--standalone", "--nproc_per_node", "2")
    assert single["step"] == double["step"] == 4
    for part in ("generator", "discriminator", "router", "aux"):
        for name, tensor in single[part].items():
            torch.testing.assert_close(double[part][name], tensor, rtol=1e-4, atol=1e-5,
                                       msg=f"{part}.{name}")
    moments = single["opt_generator"]["state"][0]["exp_avg"]
    assert moments.abs().sum() > 0, "no update happened: the comparison would be vacuous"
