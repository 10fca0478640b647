import pytest

from expertsim.config import ExperimentConfig, load_config
from expertsim.errors import ConfigError


def test_repository_configs_load():
    for name in ("smoke", "zn", "zp"):
        config = load_config(f"training/{name}.yaml")
        assert isinstance(config, ExperimentConfig)
    assert load_config("training/zn.yaml").loss.diversity == 0.1  # published default


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("loss:\n  diversty: 0.2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'loss\.diversty'"):
        load_config(path)


def test_overrides_are_typed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 2\noptim:\n  lr_router: 1e-3\n")
    config = load_config(path, ["train.epochs=5", "loss.intensity=0", "model.n_experts=1",
                                "data.min_photon_sum=1"])
    assert config.train.epochs == 5 and config.loss.intensity == 0.0
    assert config.model.n_experts == 1 and config.data.min_photon_sum == 1.0
    assert config.optim.lr_router == 1e-3
    with pytest.raises(ConfigError, match="'train.epochs' must be an integer"):
        load_config(path, ["train.epochs=many"])
    with pytest.raises(ConfigError, match="loss.diversity must be >= 0"):
        load_config(path, ["loss.diversity=-1"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(path, ["epochs"])
