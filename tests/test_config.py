import pytest

from expertsim.config import ExperimentConfig, TrainConfig, load_config
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
    assert load_config(path, ["loss.energy_scales=[4, 2, 1, 1]"]).loss.energy_scales == (
        4.0, 2.0, 1.0, 1.0)
    for bad in ("[1, 1, 1]", "[0, 0, 0, 0]", "[1, -1, 1, 1]"):
        with pytest.raises(ConfigError, match=r"loss.energy_scales must be 4 weights >= 0 "
                                              r"\(image, quadrants, blocks, fibres\)"):
            load_config(path, [f"loss.energy_scales={bad}"])


PER_DETECTOR = """\
loss:
  centroid: 1.0
  diversity: 0.2
detectors:
  zn:
    loss: {centroid: 100.0}
  zp:
    train: {max_steps: 7}
"""


def test_detector_section_follows_the_data(tmp_path, zn_file, zp_file):
    path = tmp_path / "c.yaml"
    path.write_text(PER_DETECTOR)
    zn = load_config(path, [f"data.path={zn_file}"])
    zp = load_config(path, [f"data.path={zp_file}"])
    assert (zn.loss.centroid, zn.train.max_steps) == (100.0, TrainConfig().max_steps)
    assert (zp.loss.centroid, zp.train.max_steps) == (1.0, 7)
    assert zn.loss.diversity == zp.loss.diversity == 0.2  # the rest is shared
    assert "detectors" not in zn.to_dict()  # what a run records is resolved
    # --set wins over the section; a missing file is read from data.simulate
    assert load_config(path, [f"data.path={zn_file}", "loss.centroid=3"]).loss.centroid == 3.0
    simulated = load_config(path, [f"data.path={tmp_path / 'new.h5'}",
                                   "data.simulate.detector=zp"])
    assert simulated.train.max_steps == 7
    # the study's configs: ZN's centroid weight only on ZN, the shared start on both
    for name in ("1_expertsim3", "2_single_gan"):
        study_zn = load_config(f"training/study/{name}.yaml", [f"data.path={zn_file}"])
        study_zp = load_config(f"training/study/{name}.yaml", [f"data.path={zp_file}"])
        assert (study_zn.loss.centroid, study_zp.loss.centroid) == (100.0, 1.0)
        assert study_zn.train.shared_start_steps == study_zp.train.shared_start_steps


def test_detector_section_errors_name_the_key(tmp_path, zn_file):
    path = tmp_path / "c.yaml"
    path.write_text(PER_DETECTOR)
    with pytest.raises(ConfigError, match=r"data\.path .*missing\.h5 does not exist"):
        load_config(path, [f"data.path={tmp_path / 'missing.h5'}"])
    data = f"data.path={zn_file}"
    with pytest.raises(ConfigError, match="must map detector names"):
        load_config(path, [data, "detectors.zdc.loss.centroid=1"])
    # a typo in the other detector's section is found too
    with pytest.raises(ConfigError, match=r"detectors\.zp: unknown key 'loss\.centroidd'"):
        load_config(path, [data, "detectors.zp.loss.centroidd=1"])
    with pytest.raises(ConfigError, match=r"'detectors\.zn\.data\.path' cannot be set"):
        load_config(path, [data, "detectors.zn.data.path=other.h5"])


def test_ablation_base_is_the_study_mixture(zn_file, zp_file):
    """The ablation varies the shipped ExpertSim-3 and one GAN: its base configs must resolve to
    the study's (the study reuses one folder's runs in the other only when they do)."""
    for data in (zn_file, zp_file):
        for study, ablation in (("1_expertsim3", "1_expertsim3"), ("2_single_gan", "5_single")):
            shipped = load_config(f"training/study/{study}.yaml", [f"data.path={data}"]).flat()
            varied = load_config(f"training/ablation/{ablation}.yaml",
                                 [f"data.path={data}"]).flat()
            assert {k: v for k, v in shipped.items() if not k.startswith("tracking.")} == \
                {k: v for k, v in varied.items() if not k.startswith("tracking.")}
