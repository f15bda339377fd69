import re

import pytest
import yaml

from tuneforge.config import ConfigError, load_config, parse_overrides
from tuneforge.strict import UniqueKeyLoader
from tuneforge.methods import registry


def test_defaults_and_dotted_overrides():
    cfg = load_config(None, ["method.rank=16", "train.lr=1e-3", "data.split=[0.7,0.2,0.1]", "train.max_grad_norm=null"])
    assert cfg.method == {"name": "lora", "rank": 16}
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.data.split == [0.7, 0.2, 0.1]
    assert cfg.train.max_grad_norm is None


def test_yaml_file_then_overrides(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("method: {name: freeze, num_layers: 1}\ntrain: {epochs: 3}\n")
    cfg = load_config(f, ["train.epochs=2"])
    assert cfg.method_name == "freeze" and cfg.train.epochs == 2.0
    assert registry.make_config("freeze", cfg.method_options()).num_layers == 1


def test_switching_method_drops_other_options(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("method: {name: lora, rank: 4}\n")
    cfg = load_config(f, ["method.name=full"])
    assert cfg.method == {"name": "full"}
    assert load_config(f, ["method.name=LoRA"]).method == {"name": "lora", "rank": 4}  # names are case-blind
    assert load_config(None, {"method": {"name": " P-Tuning "}}).method_name == "p-tuning"


def test_naming_the_default_method_keeps_its_options_given_without_a_name(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("method: {rank: 16}\n")  # the default method's options alone
    assert load_config(f, ["method.name=lora"]).method == {"name": "lora", "rank": 16}  # were dropped
    assert load_config(f, ["method.name=full"]).method == {"name": "full"}


@pytest.mark.parametrize("overrides, message", [
    (["train.lrr=1"], "unknown config key 'train.lrr'"),
    (["bogus.x=1"], "unknown config key 'bogus'"),
    (["train.batch_size=0"], "train.batch_size must be positive"),
    (["train.lr=-1"], "train.lr must be >= 0"),
    (["train.batch_size=abc"], "train.batch_size: expected an integer"),
    (["train.optimizer=adam"], "train.optimizer: 'adam' is not allowed"),
    (["data.split=[0.5,0.2]"], "data.split must be three"),
    (["noequals"], "must look like key.sub=value"),
    (["configs/mine.yaml"], "override 'configs/mine.yaml' must look like key.sub=value; give a config file with -c"),
    (["forgetting.augment.p_delete=1.5"], "forgetting.augment.p_delete must be a probability in [0, 1], got 1"),
    (["train.batch_size=+-5"], "train.batch_size: expected an integer, got '+-5'"),  # a ValueError traceback
    (["eval.max_new_tokens=-3"], "eval.max_new_tokens must be positive, got -3"),  # failed after loading
    (["eval.generate_samples=-2"], "eval.generate_samples must be >= 0"),  # was taken as 0
    (["train.num_threads=-2"], "train.num_threads must be positive, got -2"),  # a RuntimeError traceback
])
def test_bad_config_gives_one_clear_error(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)


@pytest.mark.parametrize("name, options, message", [
    ("lora", {"rank": 0}, "method.rank must be positive"),
    ("lora", {"rnak": 4}, "unknown config key 'method.rnak'"),
    ("lora", {"alpha": -1}, "method.alpha must be positive"),
    ("nosuch", {}, "unknown method 'nosuch'"),
])
def test_bad_method_options(name, options, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        registry.make_config(name, options)


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a folder; give a YAML file"):
        load_config(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("model:\n  max_length: [64\ndata:\n  path: a.csv\n")  # where it is wrong, not only that it is
    with pytest.raises(ConfigError, match=r"not valid YAML, line 3, column 5: expected ',' or '\]', but got ':' "
                                          r"\(while parsing a flow sequence that starts on line 2\)"):
        load_config(bad)
    bad.write_text("train:\n  lr: 1e-3\ntrain:\n  max_steps: 2\n")  # YAML would keep the second section only
    with pytest.raises(ConfigError, match=r"bad\.yaml, line 3: 'train' is given twice in one section; keep one"):
        load_config(bad)
    bad.write_text("train: {lr: 1e-3, lr: 2e-3}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml, line 1: 'lr' is given twice"):
        load_config(bad)
    bad.write_text("base: &base {lr: 0.001}\ntrain:\n  <<: *base\n  lr: 0.002\n")  # a YAML merge key may be set again
    assert yaml.load(bad.read_text(), Loader=UniqueKeyLoader)["train"] == {"lr": 0.002}
    bad.write_text("train: abc\n")  # a section that is no mapping, whether or not an override names it
    for overrides in ([], ["train.lr=1e-3"]):
        with pytest.raises(ConfigError, match=r"^train: expected a mapping, got 'abc'$"):
            load_config(bad, overrides)


def test_parse_overrides_types():
    assert parse_overrides(["a.b=3", "a.c=true", "d=x"]) == {"a": {"b": 3, "c": True}, "d": "x"}


def test_the_configuration_reference_is_generated_from_the_code():
    """docs/configuration.md is what docs/make_config_reference.py renders from the dataclasses' comments."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "docs" / "make_config_reference.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_override_values_that_are_not_yaml_or_look_like_a_mapping():
    from tuneforge.config import parse_overrides
    with pytest.raises(ConfigError, match=r"override 'train.max_steps=\[2': the value is not valid YAML"):
        parse_overrides(["train.max_steps=[2"])
    assert parse_overrides(["data.system_prompt=Answer: briefly"]) == {"data": {"system_prompt": "Answer: briefly"}}
    assert parse_overrides(["method.x={a: 1}"]) == {"method": {"x": {"a": 1}}}


def test_a_validation_or_test_file_without_a_train_file_is_refused():
    for key in ("validation_file", "test_file"):
        with pytest.raises(ConfigError, match=f"data.{key} is given without data.train_file"):
            load_config(None, {"data": {key: "v.csv"}})


def test_settings_built_directly_refuse_non_finite_numbers():
    from tuneforge.config import DataConfig, RegularizeConfig, TrainConfig
    for key in ("lr", "head_lr", "weight_decay", "momentum", "epochs", "max_grad_norm"):
        for bad in (float("inf"), float("nan")):
            with pytest.raises(ConfigError, match=f"train.{key} must be"):
                TrainConfig(**{key: bad})
    with pytest.raises(ConfigError, match="data.split must be three"):
        DataConfig(split=[float("nan"), 0.5, 0.5])
    with pytest.raises(ConfigError, match="forgetting.regularize.strength must be"):
        RegularizeConfig(strength=float("inf"))


def test_a_text_setting_takes_the_override_text_as_given():
    cfg = load_config(None, ["data.label_column=on", "data.text_column=1.0", "output_dir=runs/exp #2: b",
                             "data.system_prompt=Answer: briefly", "data.template={{ x"])
    assert (cfg.data.label_column, cfg.data.text_column, cfg.output_dir) == ("on", "1.0", "runs/exp #2: b")
    assert (cfg.data.system_prompt, cfg.data.template) == ("Answer: briefly", "{{ x")
    cfg = load_config(None, ["data.system_prompt=null", "data.text_column='quoted'", 'data.template="a\\nb"'])
    assert (cfg.data.system_prompt, cfg.data.text_column, cfg.data.template) == (None, "quoted", "a\nb")
    with pytest.raises(ConfigError, match="override 'data.template='x': the value is not valid YAML"):
        load_config(None, ["data.template='x"])
