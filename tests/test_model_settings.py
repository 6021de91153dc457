"""Settings owned by the model: own keys, grid, tune ranges and presets declared on the class (``settings``) or in a
YAML beside its file (``config_file``), checked like the shared keys and usable from ``--set``/``--config``; a
subclass of a built-in model keeps the built-in's settings; ``modalrec models --details`` lists them."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import pytest
import yaml
from test_model_spec import MODEL_SOURCE as SPEC_TEST_MODEL
from typer.testing import CliRunner

from modalrec.cli import app
from modalrec.config import (
    describe_preset,
    describe_settings,
    load_bounds,
    load_defaults,
    load_search_ranges,
    model_settings,
    resolve_config,
)
from modalrec.errors import ConfigError
from modalrec.experiments.search_space import tune_space
from modalrec.models import Recommender, spec
from modalrec.models.lightgcn import LightGCN
from modalrec.models.spec import resolve_model

ENV = {"COLUMNS": "200", "NO_COLOR": "1"}

# The user's own settings, written once as a dict (``settings = ...``) and once as the YAML of ``config_file``.
OWN_SETTINGS = {
    "description": "LightGCN + a scaled projection of the image features (test model)",
    "proj_scale": 0.5,
    "bounds": {"proj_scale": {"low": 0.0, "high": 1.0}},
    "search_space": {"proj_scale": [0.0, 0.5]},
    "search_ranges": {"proj_scale": {"low": 0.0, "high": 1.0}},
    "presets": {"baby": {"proj_scale": 0.25}, "mine": {"proj_scale": 0.75, "n_layers": 1}},
}

# The user's ImgLightGCN of test_model_spec, its image term scaled by its own key proj_scale.
MODEL_SOURCE = SPEC_TEST_MODEL.replace(
    '    name = "ImgLightGCN"\n', '    name = "ImgLightGCN"\n    SETTINGS_LINE\n'
).replace("items + self.proj(self.image)", "items + float(self.config.proj_scale) * self.proj(self.image)")
assert "SETTINGS_LINE" in MODEL_SOURCE and "proj_scale" in MODEL_SOURCE


def write_model(folder: Path, how: str) -> Path:
    """The user's model file (and, for ``config_file``, its YAML beside it); returns the file."""
    if how == "settings":
        line = f"settings = {OWN_SETTINGS!r}"
    else:
        line = 'config_file = "imglightgcn.yaml"'
        (folder / "imglightgcn.yaml").write_text(yaml.safe_dump(OWN_SETTINGS, sort_keys=False))
    path = folder / "mymodels.py"
    path.write_text(MODEL_SOURCE.replace("SETTINGS_LINE", line))
    return path


@pytest.fixture(params=["settings", "config_file"])
def model_file(request, tmp_path) -> Path:
    return write_model(tmp_path, request.param)


def test_own_keys_resolve_with_their_defaults_and_the_parents_keys(model_file):
    cls = resolve_model(f"{model_file}:ImgLightGCN")
    assert cls.name == "ImgLightGCN"  # named after its class, not LightGCN's inherited name
    config = resolve_config(cls, overrides={"proj_scale": 1.0})
    assert config.proj_scale == 1.0 and config.n_layers == 2 and config.embedding_size == 64  # LightGCN's + shared
    assert resolve_config(cls).proj_scale == 0.5
    assert resolve_config(f"{model_file}:ImgLightGCN", overrides={"proj_scale": 0}).proj_scale == 0  # a spec works
    own = model_settings(cls)
    assert own["proj_scale"] == 0.5 and own["n_layers"] == 2 and own["description"] == OWN_SETTINGS["description"]


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"proj_scale": "big"}, "proj_scale = 'big' has type str, expected float like the default 0.5"),
        ({"proj_scale": 1.5}, "proj_scale = 1.5 must be in [0.0, 1.0]"),
        ({"proj_scale": -0.1}, "proj_scale = -0.1 must be in [0.0, 1.0]"),
        ({"n_layers": -1}, "n_layers = -1 must be >= 0"),  # LightGCN's bound still holds
        ({"proj_scal": 0.1}, "unknown configuration key 'proj_scal' (did you mean 'proj_scale'?"),
    ],
)
def test_a_wrong_own_value_or_unknown_key_is_one_line(model_file, overrides, fragment):
    cls = resolve_model(f"{model_file}:ImgLightGCN")
    with pytest.raises(ConfigError) as err:
        resolve_config(cls, overrides=overrides, source="--set")
    message = str(err.value)
    assert "\n" not in message and message.startswith("--set: ") and fragment in message, message


def test_an_unknown_key_names_where_the_models_keys_come_from(model_file):
    cls = resolve_model(f"{model_file}:ImgLightGCN")
    with pytest.raises(ConfigError) as err:
        resolve_config(cls, overrides={"zzz": 1})
    source = "ImgLightGCN.settings" if "settings =" in model_file.read_text() else str(model_file.parent.resolve())
    assert "configs/overall.yaml + configs/lightgcn.yaml + " in str(err.value) and source in str(err.value)


def test_the_own_grid_ranges_bounds_and_presets(model_file):
    cls = resolve_model(f"{model_file}:ImgLightGCN")
    defaults, presets, grid = load_defaults(cls)
    assert grid == {"proj_scale": [0.0, 0.5]}  # its own grid replaces LightGCN's 120 points
    assert load_search_ranges(cls) == {"proj_scale": {"low": 0.0, "high": 1.0, "log": False, "int": False}}
    assert tune_space(cls, {}) == {"proj_scale": {"low": 0.0, "high": 1.0, "log": False, "int": False}}
    assert tune_space(cls, {}, "grid") == {"proj_scale": {"choices": [0.0, 0.5]}}
    assert load_bounds(cls)["proj_scale"].describe() == "in [0.0, 1.0]" and "n_layers" in load_bounds(cls)
    # presets extend LightGCN's: its "baby" keeps LightGCN's settings and adds proj_scale
    assert presets["baby"] == {"n_layers": 3, "reg_weight": 0.0, "train_batch_size": 4096, "proj_scale": 0.25}
    assert resolve_config(cls, dataset_name="Baby").preset is None  # named like the dataset: not applied
    baby = resolve_config(cls, dataset_name="Baby", preset="baby")
    assert baby.preset == "baby" and baby.n_layers == 3 and baby.proj_scale == 0.25
    assert "proj_scale=0.25" in describe_preset(baby)
    mine = resolve_config(cls, dataset_name="baby", preset="mine")
    assert (mine.proj_scale, mine.n_layers) == (0.75, 1)
    sports = resolve_config(cls, preset="sports")
    # LightGCN's sports preset, and the own default
    assert (sports.train_batch_size, sports.reg_weight, sports.proj_scale) == (4096, 0.0, 0.5)
    with pytest.raises(ConfigError, match=r"^ImgLightGCN: no preset 'nope' \(available: baby, sports, clothing, mine"):
        resolve_config(cls, preset="nope")
    rows = {r.key: r for r in describe_settings(cls)[0]}
    assert rows["proj_scale"].own and rows["proj_scale"].grid == [0.0, 0.5] and rows["proj_scale"].tune == "0.0..1.0"
    assert not rows["embedding_size"].own and rows["n_layers"].own and rows["n_layers"].grid is None


def test_a_config_file_that_is_missing_or_invalid_is_one_line_naming_its_path(tmp_path):
    path = write_model(tmp_path, "config_file")
    yaml_file = tmp_path / "imglightgcn.yaml"
    yaml_file.write_text("proj_scale: [0.5\n  bad: :\n")
    cls = resolve_model(f"{path}:ImgLightGCN")
    with pytest.raises(ConfigError) as err:
        resolve_config(cls)
    assert (
        "\n" not in str(err.value) and str(yaml_file.resolve()) in str(err.value) and "invalid YAML" in str(err.value)
    )
    yaml_file.write_text("- a list, not a mapping\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        resolve_config(cls)
    yaml_file.unlink()
    with pytest.raises(ConfigError) as err:
        load_defaults(cls)
    assert str(err.value) == f"model ImgLightGCN: config_file {yaml_file.resolve()} does not exist"


class Subclassed(LightGCN):
    """A LightGCN variant that states no settings: LightGCN's, all of them."""


class OnlyOwn(Recommender):
    """A model on the base class with a few settings of its own."""

    settings = {"temperature": 0.2, "bounds": {"temperature": {"low": 0, "low_open": True}}}


def test_a_subclass_without_settings_has_its_parents():
    assert Subclassed.name == "Subclassed"
    assert load_defaults(Subclassed) == load_defaults(LightGCN)
    assert resolve_config(Subclassed, preset="baby").to_dict() == resolve_config(LightGCN, preset="baby").to_dict()
    assert resolve_config(Subclassed, overrides={"n_layers": 3}).n_layers == 3


def test_a_model_on_the_base_class_gets_overall_yaml_and_its_own_keys():
    config = resolve_config(OnlyOwn, overrides={"temperature": 1})
    assert config.temperature == 1 and config.learning_rate == 0.001 and "n_layers" not in config
    with pytest.raises(ConfigError, match=r"temperature = 0.0 must be > 0"):
        resolve_config(OnlyOwn, overrides={"temperature": 0.0})
    bare = type("Bare", (Recommender,), {"__module__": __name__})
    assert load_defaults(bare)[0] == load_defaults(None)[0] and model_settings(bare) == {}


@pytest.mark.parametrize(
    ("attributes", "fragment"),
    [
        ({"settings": {"a": 1}, "config_name": "lightgcn"}, "one of config_name, config_file or settings"),
        ({"config_name": "nosuch"}, "no configuration file configs/nosuch.yaml in modalrec"),
        ({"settings": [("a", 1)]}, "Broken.settings: expected a dict"),
        ({"settings": {"search_space": {"a": 1}, "a": 1}}, "Broken.settings search_space: each key must list"),
        ({"settings": {"presets": {"x": 1}}}, "Broken.settings presets: each preset must map keys to values"),
        ({"settings": {"bad key": 1}}, "'bad key' is not a valid configuration key"),
        ({"settings": {"a": 1, "bounds": {"b": {"low": 0}}}}, "Broken.settings bounds: 'b' is not a configuration key"),
        ({"settings": {"a": 1, "search_ranges": {"a": {"low": 2, "high": 1}}}}, "low 2 must be below high 1"),
        ({"settings": {"a": 1, "presets": {"p": {"a": "x"}}}}, "Broken.settings preset 'p': a = 'x' has type str"),
    ],
)
def test_malformed_settings_are_one_line_naming_the_model(attributes, fragment):
    broken = type("Broken", (Recommender,), {"__module__": __name__, **attributes})
    with pytest.raises(ConfigError) as err:
        resolve_config(broken, preset="p" if "presets" in str(attributes) else None)
        load_search_ranges(broken)
    assert "\n" not in str(err.value) and fragment in str(err.value), str(err.value)


# ---------------------------------------------------------------------- the command line
def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("settings") / "synth"
    res = invoke("data", "synth", out, "--users", 60, "--items", 40, "--modalities", "image:8", "--seed", 3)
    assert res.exit_code == 0, res.output
    return out


def test_train_takes_an_own_key_from_set_and_config(tiny_data, tmp_path):
    spec = f"{write_model(tmp_path, 'settings')}:ImgLightGCN"
    base = ("train", "--model", spec, "--data", tiny_data, "--quiet", "--set", "epochs=1", "--set", "embedding_size=8")
    res = invoke(*base, "--set", "proj_scale=0.1", "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["config"]["proj_scale"] == 0.1
    (tmp_path / "mine.yaml").write_text("proj_scale: 0.0\n")
    res = invoke(*base, "--config", tmp_path / "mine.yaml", "--out", tmp_path / "run2")
    assert res.exit_code == 0, res.output
    assert yaml.safe_load((tmp_path / "run2" / "config.yaml").read_text())["config"]["proj_scale"] == 0.0
    bad = invoke(*base, "--set", "proj_scale=2", "--out", tmp_path / "run3")
    assert bad.exit_code == 1 and bad.stderr.strip() == "error: override: proj_scale = 2 must be in [0.0, 1.0]"
    assert not (tmp_path / "run3").exists()


def test_the_grid_and_tune_search_the_own_key(tiny_data, tmp_path):
    spec = f"{write_model(tmp_path, 'config_file')}:ImgLightGCN"
    fixed = ("--epochs", 1, "--set", "embedding_size=8")
    res = invoke("benchmark", "--data", tiny_data, "--models", spec, "--grid", *fixed, "--out", tmp_path / "bench")
    assert res.exit_code == 0, res.output
    grid = (tmp_path / "bench" / "grid.csv").read_text().splitlines()
    assert grid[0].startswith("row,proj_scale,selected") and len(grid) == 3  # its own 2 points, not LightGCN's 120
    res = invoke(
        "tune", spec, "--data", tiny_data, "--trials", 2, "--sampler", "random", *fixed, "--out", tmp_path / "t"
    )
    assert res.exit_code == 0, res.output
    best = yaml.safe_load((tmp_path / "t" / "best_config.yaml").read_text())
    assert 0.0 <= best["proj_scale"] <= 1.0 and best["proj_scale"] not in (0.0, 0.5)  # drawn from search_ranges


def test_models_details_lists_the_own_keys_grid_tune_and_presets(tmp_path):
    spec = f"{write_model(tmp_path, 'config_file')}:ImgLightGCN"
    res = invoke("models", "--details", spec)
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    own = next(line for line in lines if line.split()[:1] == ["proj_scale"])
    assert (
        own.split()[:4] == ["proj_scale", "0.5", "float", "in"] and "grid: 0.0, 0.5" in own and "tune: 0.0..1.0" in own
    )
    assert any(line.startswith("ImgLightGCN's own keys (") and "imglightgcn.yaml" in line for line in lines)
    assert any(line.split()[:1] == ["n_layers"] for line in lines)  # LightGCN's, inherited
    assert "  baby: n_layers=3, reg_weight=0.0, train_batch_size=4096, proj_scale=0.25" in lines
    bad = invoke("models", "--details", tmp_path / "nope.py:X")
    assert bad.exit_code == 1 and "does not exist" in bad.stderr and "\n" not in bad.stderr.strip()


def test_models_lists_the_built_ins_and_installed_plugins_with_their_settings(tmp_path, monkeypatch):
    write_model(tmp_path, "config_file")
    (tmp_path / "mymodels.py").rename(tmp_path / "settings_plugin_x.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin = importlib.metadata.EntryPoint("PluginImg", "settings_plugin_x:ImgLightGCN", spec.ENTRY_POINT_GROUP)
    monkeypatch.setattr(spec, "_entry_points", lambda: [plugin])
    res = invoke("models")
    assert res.exit_code == 0, res.output
    assert "LightGCN" in res.stdout and "MeAIM" in res.stdout and "ImgLightGCN" in res.stdout
    res = invoke("models", "--details", "PluginImg")
    assert res.exit_code == 0 and any(line.split()[:2] == ["proj_scale", "0.5"] for line in res.stdout.splitlines())
    monkeypatch.delitem(sys.modules, "settings_plugin_x")
