import argparse
import dataclasses
import json

import pytest

from pneumocnn.core.config import Config
from pneumocnn.core.settings import add_config_arguments, config_from_args


def parse(argv):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Config)
    return config_from_args(parser.parse_args(argv), Config)


def test_every_field_has_a_flag_with_its_default_in_help():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Config)
    help_text = parser.format_help()
    for field in dataclasses.fields(Config):
        assert "--" + field.name.replace("_", "-") in help_text
        assert f"(default: {field.default!r})" in " ".join(help_text.split())


def test_flags_override_defaults_with_the_right_types():
    config = parse(
        [
            "--image-size",
            "96",
            "--learning-rate",
            "0.01",
            "--balance",
            "oversample",
            "--horizontal-flip",
        ]
    )
    assert config.image_size == 96
    assert config.learning_rate == pytest.approx(0.01)
    assert config.balance == "oversample"
    assert config.horizontal_flip is True
    assert config.epochs == Config().epochs


@pytest.mark.parametrize(
    "argv",
    [["--no-such-flag", "1"], ["--image-size", "big"], ["--balance", "smote"]],
)
def test_unknown_flag_or_wrong_type_fails_loudly(argv):
    with pytest.raises(SystemExit) as error:
        parse(argv)
    assert error.value.code == 2


def test_config_file_sets_values_and_flags_win(tmp_path):
    path = tmp_path / "experiment.json"
    path.write_text(json.dumps({"image_size": 128, "epochs": 5}))
    config = parse(["--config", str(path), "--epochs", "7"])
    assert (config.image_size, config.epochs) == (128, 7)


def test_config_file_with_unknown_key_names_it(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"image_sise": 128}))
    with pytest.raises(ValueError, match="image_sise"):
        Config.load(path)


def test_out_of_range_value_names_field_and_value():
    with pytest.raises(ValueError, match=r"Received: val_fraction=1\.5"):
        Config(val_fraction=1.5)


def test_save_and_load_round_trip(tmp_path):
    config = Config(image_size=64, balance="none", data_dir="/data")
    config.save(tmp_path / "config.json")
    assert Config.load(tmp_path / "config.json") == config


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().image_size = 10


def test_a_run_config_from_before_train_on_subtypes_reloads_as_it_trained():
    # A complete config.json written before the field existed trained a sigmoid head.
    old = Config(train_on_subtypes=True).to_dict()
    del old["train_on_subtypes"]
    assert Config.from_dict(old).train_on_subtypes is False
    # A partial config (some fields, by hand) takes the defaults, this one included.
    assert Config.from_dict({"seed": 3}).train_on_subtypes == Config().train_on_subtypes


@pytest.mark.parametrize(
    ("content", "expected"),
    [("{not json", "is not valid JSON"), ("[128, 5]", "holds a JSON list")],
)
def test_a_malformed_config_file_is_named_with_the_fix(tmp_path, content, expected):
    # The bug: these messages named neither the received value nor the fix (STYLE.md).
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=expected) as error:
        Config.load(path)
    assert f"Received: path='{path}'" in str(error.value)
    assert "config.json" in str(error.value)
