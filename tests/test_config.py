import pytest

from agents.config import ConfigError, load_config, save_config


def test_defaults_and_overrides():
    cfg = load_config(None, ["ppo.iterations=2", "data.image_size=32", "reward_dataset.contrast=[0.5]"])
    assert cfg.ppo.iterations == 2 and cfg.data.image_size == 32
    assert cfg.reward_dataset.contrast == [0.5]
    # untouched keys keep their defaults (METHOD.md settings)
    assert cfg.ppo.clip_range == 0.2 and cfg.reward_dataset.weight_noise == [0.005, 0.01, 0.015, 0.02]


def test_unknown_key_suggests_nearest():
    with pytest.raises(ConfigError, match=r"ppo\.iteratons.*did you mean ppo\.iterations"):
        load_config(None, ["ppo.iteratons=2"])
    with pytest.raises(ConfigError, match=r"data\.target\.n_trian.*n_train"):
        load_config(None, ["data.target.n_trian=3"])


def test_unknown_key_in_file_names_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("ppo:\n  clip_rnage: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*ppo\.clip_rnage.*clip_range"):
        load_config(f)


def test_wrong_type_refused():
    with pytest.raises(ConfigError, match="ppo.iterations"):
        load_config(None, ["ppo.iterations=abc"])
    with pytest.raises(ConfigError, match="shape_ae.enabled"):
        load_config(None, ["shape_ae.enabled=3"])


def test_round_trip(tmp_path):
    cfg = load_config(None, ["seed=3", "data.target.preset=target_shape"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize("name", ["default", "quick", "camus", "paper"])
def test_shipped_configs_load(name):
    load_config(f"configs/{name}.yaml")
