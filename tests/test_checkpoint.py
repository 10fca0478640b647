import pytest
import torch

from expertsim.checkpoint import load_checkpoint, load_model_file, save_checkpoint
from expertsim.errors import CheckpointError


class Boom:
    def __reduce__(self):
        return (exec, ("raise SystemExit('code ran')",))


def test_checkpoint_round_trip(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", config={"a": 1}, state={"w": torch.ones(2)})
    config, state = load_checkpoint(path)
    assert config == {"a": 1} and torch.equal(state["w"], torch.ones(2))


def test_files_that_would_run_code_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "expertsim-model", "payload": Boom()}, path)
    with pytest.raises(CheckpointError, match="evil.pt: cannot be loaded as a weights-only"):
        load_model_file(path)


def test_wrong_kind_and_damaged_files(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", config={}, state={})
    with pytest.raises(CheckpointError, match="expected an expertsim-model file"):
        load_model_file(path)
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="damaged.pt"):
        load_checkpoint(damaged)
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "missing.pt")
