import pytest

from pipeline.config import ConfigError, load_config, save_config


def test_defaults_and_overrides():
    cfg = load_config(None, ["ppo.iterations=2", "data.image_size=32", "reward_dataset.contrast=[0.5]"])
    assert cfg.ppo.iterations == 2 and cfg.data.image_size == 32
    assert tuple(cfg.reward_dataset.contrast) == (0.5,)
    # untouched keys keep their defaults (the paper's settings, docs/method.md)
    assert cfg.ppo.clip_range == 0.2 and tuple(cfg.reward_dataset.weight_noise) == (0.005, 0.01, 0.015, 0.02)


def test_unknown_key_suggests_nearest():
    with pytest.raises(ConfigError, match=r"ppo\.iteratons.*did you mean 'ppo\.iterations'"):
        load_config(None, ["ppo.iteratons=2"])
    with pytest.raises(ConfigError, match=r"data\.target\.n_trian.*n_train"):
        load_config(None, ["data.target.n_trian=3"])


def test_unknown_key_in_file_names_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("ppo:\n  clip_rnage: 0.1\n")
    with pytest.raises(ConfigError, match=r"ppo\.clip_rnage.*bad\.yaml.*clip_range"):
        load_config(f)


def test_wrong_type_refused():
    with pytest.raises(ConfigError, match="ppo.iterations"):
        load_config(None, ["ppo.iterations=abc"])
    with pytest.raises(ConfigError, match="shape_ae.enabled"):
        load_config(None, ["shape_ae.enabled=3"])


def test_the_two_oracle_ablations_exclude_each_other():
    assert load_config(None, ["oracle_references=true"]).oracle_references
    with pytest.raises((ConfigError, ValueError), match="oracle_reward and oracle_references"):
        load_config(None, ["oracle_reward=true", "oracle_references=true"])


def test_round_trip(tmp_path):
    cfg = load_config(None, ["seed=3", "data.target.preset=target_shape"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize("name", ["default", "quick", "camus", "paper"])
def test_shipped_configs_load(name):
    load_config(f"configs/{name}.yaml")


#: the bad values a user reported, each with the key its error must name
BAD_VALUES = ["network.norm=banana", "network.channels=[a,b]", "ppo.clip_range=-3", "data.image_size=63",
              "reward_dataset.criteria=nope", "data.target.preset=nope", "ppo.iterations=0", "ppo.iteratons=2",
              "device=gpu", "evaluation.n_test=null", "data.source=3",
              "reward_dataset.source.images=-1", "reward_dataset.source.noise=[0.2,0.1]",
              "reward_net.fusion=shape", "reward_net.ensemble=0", "reward_dataset.target_samples=false",
              "reward_net.fusion_max_validity=80", "reward_dataset.correction=some"]


def test_a_fusion_with_the_shape_prior_needs_the_shape_autoencoder(capsys):
    from pipeline.commands.train import main

    assert main(["shape_ae.enabled=false", "reward_net.fusion=shape_ae"]) == 2
    err = capsys.readouterr().err
    assert "'reward_net.fusion' (command line)" in err and "shape_ae.enabled" in err


def test_the_fusion_gate_is_a_percentage(capsys):
    from pipeline.commands.train import main

    assert main(["reward_net.fusion=shape_ae", "reward_net.fusion_max_validity=150"]) == 2
    err = capsys.readouterr().err
    assert "'reward_net.fusion_max_validity'" in err and "[0, 100]" in err
    assert load_config(None, ["reward_net.fusion=shape_ae", "reward_net.fusion_max_validity=80"]
                       ).reward_net.fusion_max_validity == 80


@pytest.mark.parametrize("override", BAD_VALUES)
def test_bad_value_on_the_command_line_exits_2_naming_key_and_source(override, capsys):
    from pipeline.commands.train import main

    assert main([override]) == 2
    err = capsys.readouterr().err
    key = override.split("=")[0]
    assert f"'{key}'" in err and "command line" in err


@pytest.mark.parametrize("override", BAD_VALUES)
def test_bad_value_in_a_file_names_the_file(override, tmp_path):
    key, value = override.split("=", 1)
    *sections, leaf = key.split(".")
    text, indent = "", ""
    for section in sections:
        text += f"{indent}{section}:\n"
        indent += "  "
    f = tmp_path / "bad.yaml"
    f.write_text(text + f"{indent}{leaf}: {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(f)
    assert f"'{key}'" in str(info.value) and str(f) in str(info.value)


def test_keys_the_run_fills_are_refused_with_the_key_to_set():
    with pytest.raises(ConfigError, match=r"'pretrain\.channels'.*'network\.channels'"):
        load_config(None, ["pretrain.channels=[8,16]"])
    with pytest.raises(ConfigError, match=r"'reward_net\.device'.*'device'"):
        load_config(None, ["reward_net.device=cpu"])


def test_every_library_option_is_settable_and_typed():
    cfg = load_config(None, ["pretrain.dice_weight=2", "pretrain.gamma_range=[0.8,1.2]", "reward_net.n_bins=10",
                             "test_time.worst_quantile=0.05", "shape_ae.corruption_p=0.3", "pretrain.patience=null"])
    assert cfg.pretrain.dice_weight == 2.0 and isinstance(cfg.pretrain.dice_weight, float)
    assert cfg.pretrain.gamma_range == (0.8, 1.2) and cfg.pretrain.patience is None
    assert cfg.reward_net.n_bins == 10 and cfg.test_time.worst_quantile == 0.05 and cfg.shape_ae.corruption_p == 0.3
    with pytest.raises(ConfigError, match="pretrain.gamma_range"):
        load_config(None, ["pretrain.gamma_range=[1,2,3]"])


def test_print_config_prints_the_resolved_config(capsys):
    import yaml

    from pipeline.commands.train import main

    assert main(["--print-config", "ppo.iterations=2"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["ppo"]["iterations"] == 2 and printed["data"]["image_size"] == 64
    assert "channels" not in printed["pretrain"]  # filled by the run from network.channels



def test_a_key_given_twice_in_a_file_is_refused_with_both_lines(tmp_path):
    # plain YAML keeps the last value: an edit in one place would be silently undone by a copy left in another
    path = tmp_path / "twice.yaml"
    path.write_text("reward_dataset:\n  anatomical: 2\n  swap: true\n  anatomical: 0\nppo: {iterations: 2}\n")
    with pytest.raises(ConfigError, match=r"twice\.yaml.*'anatomical' \(lines 2 and 4\)"):
        load_config(path)
    path.write_text("ppo: {iterations: 2}\nreward_net: {epochs: 2}\nppo: {iterations: 3}\n")
    with pytest.raises(ConfigError, match=r"'ppo' \(lines 1 and 3\)"):
        load_config(path)
    path.write_text("pretrain: {epochs: 3}\nreward_net: {epochs: 2}\n")  # one key in two sections: no duplicate
    config = load_config(path)
    assert config.pretrain.epochs == 3 and config.reward_net.epochs == 2
