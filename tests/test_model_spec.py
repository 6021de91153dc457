"""Model specs: a model named by registered name, ``file.py:Class``, ``module:Class``, an installed entry point or
the class itself; one-line errors for bad specs; re-registration; the source hash a run records."""

from __future__ import annotations

import hashlib
import importlib
import pickle
import sys
import warnings
from pathlib import Path

import pytest

from modalrec.config import resolve_config
from modalrec.errors import ConfigError
from modalrec.graphs import GraphStore
from modalrec.models import MODEL_REGISTRY, Recommender, build_model, get_model_class, list_models, register, spec
from modalrec.models.lightgcn import LightGCN
from modalrec.models.spec import model_source_hash, model_spec_of, resolve_model

# A user's model: LightGCN whose item table adds a linear projection of the image features.
MODEL_SOURCE = '''\
import torch
from torch import nn

from modalrec.models.lightgcn import LightGCN


class ImgLightGCN(LightGCN):
    name = "ImgLightGCN"
    description = "LightGCN + a projection of the image features (test model)"

    def __init__(self, dataset, config, graphs):
        super().__init__(dataset, config, graphs)
        image = torch.as_tensor(dataset.features["image"], dtype=torch.float32)
        self.register_buffer("image", image, persistent=False)
        self.proj = nn.Linear(image.shape[1], self.item_emb.weight.shape[1], bias=False)

    def compute_representations(self):
        users, items = super().compute_representations()
        return users, items + self.proj(self.image)


class Helper:
    """Not a model."""


def make():
    return ImgLightGCN
'''


@pytest.fixture
def model_file(tmp_path) -> Path:
    path = tmp_path / "mymodels.py"
    path.write_text(MODEL_SOURCE)
    return path


@pytest.fixture(autouse=True)
def _registry_restored():
    """Whatever a test registers is removed afterwards, so the built-in registry is the same for every test."""
    before = dict(MODEL_REGISTRY)
    yield
    MODEL_REGISTRY.clear()
    MODEL_REGISTRY.update(before)


def test_a_file_spec_resolves_relative_or_absolute_to_one_module(model_file, monkeypatch):
    monkeypatch.chdir(model_file.parent)
    cls = resolve_model("mymodels.py:ImgLightGCN")
    assert issubclass(cls, LightGCN) and cls.name == "ImgLightGCN"
    assert resolve_model(f"{model_file}:ImgLightGCN") is cls  # the same file twice: the same module and class
    assert resolve_model("mymodels.py") is cls  # the file's only model
    assert cls.__module__ == spec.file_module_name(model_file) and sys.modules[cls.__module__].__file__
    assert pickle.loads(pickle.dumps(cls)) is cls  # by reference, as a Ray worker would need it
    assert model_spec_of(cls) == f"{model_file.resolve()}:ImgLightGCN"
    assert resolve_model(model_spec_of(cls)) is cls


def test_a_module_spec_and_a_class_resolve(model_file, monkeypatch):
    monkeypatch.syspath_prepend(str(model_file.parent))
    monkeypatch.delitem(sys.modules, "mymodels", raising=False)
    cls = resolve_model("mymodels:ImgLightGCN")
    assert cls.__module__ == "mymodels"
    assert resolve_model("mymodels.ImgLightGCN") is cls  # the dotted form people try first
    assert resolve_model(cls) is cls and get_model_class(cls) is cls
    assert model_spec_of(cls) == "mymodels:ImgLightGCN"
    monkeypatch.delitem(sys.modules, "mymodels")


def test_registered_names_are_case_insensitive_and_built_ins_record_their_name():
    assert resolve_model("lightgcn") is resolve_model("LightGCN") is LightGCN
    assert model_spec_of(LightGCN) == "LightGCN"
    assert get_model_class("  LightGCN ") is LightGCN


def test_build_model_takes_a_file_spec(model_file, syn_dataset):
    config = resolve_config("lightgcn", syn_dataset.name, {"n_layers": 1, "embedding_size": 8})
    model = build_model(f"{model_file}:ImgLightGCN", syn_dataset, config, GraphStore(syn_dataset, cache_dir=False))
    users, items = model.compute_representations()
    assert items.shape == (syn_dataset.n_items, 8) and model.proj.weight.shape == (8, 24)


@pytest.mark.parametrize(
    ("make_spec", "fragments"),
    [
        (lambda d: f"{d}/missing.py:ImgLightGCN", ["missing.py", "does not exist"]),
        (lambda d: f"{d}/mymodels.py:Nope", ["has no class 'Nope'", "its models: ImgLightGCN"]),
        (lambda d: f"{d}/mymodels.py:Helper", ["the class Helper is not a modalrec Recommender subclass"]),
        (lambda d: f"{d}/mymodels.py:make", ["a function is not a modalrec Recommender subclass"]),
        (lambda d: f"{d}/broken.py:Model", ["importing", "broken.py raised ValueError: the user's own bug"]),
        (lambda d: f"{d}/syntax.py:Model", ["importing", "syntax.py raised SyntaxError"]),
        (
            lambda d: f"{d}/needs.py:Model",
            ["importing", "raised ModuleNotFoundError: No module named 'not_installed_x'"],
        ),
        (lambda d: "no_such_module_x:Model", ["no module named 'no_such_module_x'"]),
        (lambda d: "NoSuchModel", ["unknown model 'NoSuchModel' (registered:", "LightGCN", "file.py:Class"]),
        (lambda d: f"{d}", ["is a directory"]),
    ],
)
def test_a_bad_spec_gets_one_line_naming_it_and_the_cause(model_file, make_spec, fragments):
    d = model_file.parent
    (d / "broken.py").write_text('x = 1\nraise ValueError("the user\'s own bug")\n')
    (d / "syntax.py").write_text("def broken(:\n")
    (d / "needs.py").write_text("import not_installed_x\n")
    bad = make_spec(d)
    with pytest.raises(ConfigError) as info:
        resolve_model(bad)
    message = str(info.value)
    assert "\n" not in message and bad in message, message
    for f in fragments:
        assert f in message, (f, message)


def test_an_error_inside_the_users_file_keeps_their_exception_as_the_cause(tmp_path):
    (tmp_path / "broken.py").write_text("raise ValueError('boom')\n")
    with pytest.raises(ConfigError) as info:
        resolve_model(f"{tmp_path}/broken.py:Model")
    assert isinstance(info.value.__cause__, ValueError) and str(info.value.__cause__) == "boom"
    assert spec.file_module_name(tmp_path / "broken.py") not in sys.modules  # a failed import leaves nothing


def test_a_file_broken_after_a_good_import_keeps_the_good_version_importable(model_file):
    cls = resolve_model(f"{model_file}:ImgLightGCN")
    model_file.write_text(MODEL_SOURCE + "\nraise ValueError('half-edited')\n")
    with pytest.raises(ConfigError, match="raised ValueError: half-edited"):
        resolve_model(f"{model_file}:ImgLightGCN")
    assert sys.modules[cls.__module__].ImgLightGCN is cls and pickle.loads(pickle.dumps(cls)) is cls


def test_a_file_that_registers_its_model_is_replaced_with_a_warning_when_imported_again(tmp_path):
    path = tmp_path / "registered.py"
    source = "from modalrec.models import register\nfrom modalrec.models.bpr import BPR\n\n\n@register\n"
    path.write_text(source + "class SpecTestModel(BPR):\n    name = 'SpecTestModel'\n")
    first = resolve_model(f"{path}:SpecTestModel")
    assert resolve_model("spectestmodel") is first
    path.write_text(source + "class SpecTestModel(BPR):\n    name = 'SpecTestModel'  # changed\n")
    with pytest.warns(UserWarning, match="model SpecTestModel: replaced the registered class"):
        second = resolve_model(f"{path}:SpecTestModel")  # the file changed: imported again, registered again
    assert second is not first and resolve_model("SpecTestModel") is second
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_model(f"{path}:SpecTestModel") is second  # unchanged: not imported again, no warning


def test_a_notebook_cell_run_twice_replaces_its_model_with_a_warning():
    def cell() -> type[Recommender]:
        return type("CellModel", (Recommender,), {"name": "CellModel", "__module__": "__main__"})

    first = register(cell())
    assert register(first) is first  # the same class again: nothing to say
    with pytest.warns(UserWarning, match="replaced the registered class"):
        second = register(cell())
    assert get_model_class("cellmodel") is second is not first


def test_a_different_model_under_a_built_in_name_is_an_error():
    impostor = type("LightGCN", (Recommender,), {"name": "LightGCN", "__module__": "someone.else"})
    with pytest.raises(ConfigError, match=r"'LightGCN' is taken by modalrec\.models\.lightgcn\.LightGCN"):
        register(impostor)
    assert get_model_class("LightGCN") is LightGCN


def test_the_source_hash_follows_the_file(model_file):
    cls = resolve_model(f"{model_file}:ImgLightGCN")
    first = model_source_hash(cls)
    assert model_source_hash(cls) == first and len(first) == 16
    model_file.write_text(MODEL_SOURCE.replace("(test model)", "(test model!)"))  # one character
    changed = model_source_hash(resolve_model(f"{model_file}:ImgLightGCN"))
    assert changed != first
    model_file.write_text(MODEL_SOURCE)
    assert model_source_hash(resolve_model(f"{model_file}:ImgLightGCN")) == first
    lightgcn_file = Path(sys.modules[LightGCN.__module__].__file__)
    assert model_source_hash(LightGCN) == hashlib.sha256(lightgcn_file.read_bytes()).hexdigest()[:16]


# ---------------------------------------------------------------------- entry points
PLUGIN_MODELS = """\
from modalrec.models.lightgcn import LightGCN


class ImgX(LightGCN):
    name = "ImgX"
    description = "a model from an installed plugin (test)"
"""


@pytest.fixture
def install_plugin(tmp_path, monkeypatch):
    """Installs a tiny distribution ``myplugin`` (package ``mypkg``) on sys.path, as pip would leave it, with the
    given ``entry_points.txt``; returns its folder. Its modules are forgotten afterwards."""

    def install(entry_points: str) -> Path:
        site = tmp_path / "site"
        (site / "mypkg").mkdir(parents=True)
        (site / "mypkg" / "__init__.py").write_text("")
        (site / "mypkg" / "models.py").write_text(PLUGIN_MODELS)
        (site / "mypkg" / "broken.py").write_text("raise RuntimeError('plugin bug')\n")
        info = site / "myplugin-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: myplugin\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(entry_points)
        files = ["mypkg/__init__.py", "mypkg/models.py", "mypkg/broken.py"]
        files += [f"{info.name}/{n}" for n in ("METADATA", "entry_points.txt", "RECORD")]
        (info / "RECORD").write_text("".join(f"{f},,\n" for f in files))
        monkeypatch.syspath_prepend(str(site))
        importlib.invalidate_caches()  # importlib.metadata caches what each sys.path entry holds
        return site

    monkeypatch.setattr(spec, "_entry_point_classes", {})
    yield install
    for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
        del sys.modules[name]


@pytest.fixture
def plugin(install_plugin) -> Path:
    return install_plugin("[modalrec.models]\nImgX = mypkg.models:ImgX\n")


def test_an_installed_entry_point_is_listed_and_resolved(plugin):
    listed = {cls.name: cls for cls in list_models()}
    assert "ImgX" in listed and "LightGCN" in listed
    cls = resolve_model("imgx")
    assert cls is listed["ImgX"] and cls.__module__ == "mypkg.models"
    assert model_spec_of(cls) == "ImgX"


def test_an_entry_point_models_hash_covers_its_distributions_files(plugin):
    cls = resolve_model("ImgX")
    first = model_source_hash(cls)
    (plugin / "mypkg" / "__init__.py").write_text("# another file of the package changed\n")
    assert model_source_hash(cls) != first


def test_a_broken_entry_point_is_skipped_by_the_listing_and_named_when_asked_for(install_plugin):
    install_plugin("[modalrec.models]\nImgX = mypkg.models:ImgX\nBroken = mypkg.broken:Model\n")
    with pytest.warns(UserWarning, match="model 'Broken'.*raised RuntimeError: plugin bug"):
        names = [cls.name for cls in list_models()]
    assert "ImgX" in names
    with pytest.raises(ConfigError) as info:
        resolve_model("Broken")
    assert "\n" not in str(info.value) and "myplugin" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)
