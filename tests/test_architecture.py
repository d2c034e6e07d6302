"""The tree is the pipeline: imports flow one way, files stay small, the planner names no method."""

import ast
import re
from pathlib import Path

import pytest

from fxdelta.methods.registry import ALIASES, METHODS
from fxdelta.opendelta.classes import model_class_for

from import_graph import circles, folder_of, import_graph, module_files

ROOT = Path(__file__).resolve().parents[1]
# A folder (or top-level file) may import only from itself and from those listed before it.
LAYERS = [
    "fxdelta.passes",
    "fxdelta.core",
    "fxdelta.utils",
    "fxdelta.io",
    "fxdelta.spec",
    "fxdelta.sites",
    "fxdelta.compiler",
    "fxdelta.methods",
    "fxdelta.inspect",
    # The user half: a small handle, feature wings over it, two faces over the wings.
    "fxdelta.deltas",
    "fxdelta.formats",
    "fxdelta.merge",
    "fxdelta.lifecycle",
    "fxdelta.serve",
    "fxdelta.opendelta",
    "fxdelta.api",
    "fxdelta",
    # Above the package: cli/ and web/ use the public API only (test_rooms_above_the_package_use_...).
    "fxdelta.cli",
    "fxdelta.web",
    "fxdelta.demo",
]
# The stages that must work for any method: they never name one (core/routes.py names the routes and
# sites/base.py the site kinds, some of which share their name with the method that uses them).
METHOD_AGNOSTIC = [
    "fxdelta/core/calls.py",
    "fxdelta/core/entries.py",
    "fxdelta/core/errors.py",
    "fxdelta/core/handles.py",
    "fxdelta/core/paths.py",
    "fxdelta/core/records.py",
    "fxdelta/spec",
    "fxdelta/compiler",
    "fxdelta/deltas",
    "fxdelta/formats",
    "fxdelta/merge",
    "fxdelta/lifecycle",
    "fxdelta/serve",
    "fxdelta/opendelta",
    "fxdelta/inspect",
    "fxdelta/io",
    "fxdelta/sites/graph.py",
    "fxdelta/sites/hooks.py",
    "fxdelta/sites/carrier.py",
    "fxdelta/api.py",
]
GRAPH = import_graph(ROOT)
FILES = module_files(ROOT)


def test_every_file_is_in_a_layer():
    assert {folder_of(m) for m in GRAPH} <= set(LAYERS)


def test_no_import_circle():
    assert circles(GRAPH) == []


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_flow_down_the_layers(module):
    rank = LAYERS.index(folder_of(module))
    upward = sorted(t for t in GRAPH[module] if LAYERS.index(folder_of(t)) > rank)
    assert upward == [], f"{module} imports from later layers: {upward}"


@pytest.mark.parametrize("module", [m for m, f in FILES.items() if f.name == "__init__.py" and m.count(".") == 1])
def test_subpackage_inits_import_only_their_own_folder(module):
    # Python runs a package's __init__ before any of its modules: a heavier one would hide a circle.
    assert all(t.startswith(module + ".") for t in GRAPH[module]), GRAPH[module]


@pytest.mark.parametrize("file", sorted(str(f.relative_to(ROOT)) for f in FILES.values()))
def test_source_files_stay_under_300_lines(file):
    assert len((ROOT / file).read_text().splitlines()) <= 300


def _method_agnostic_files() -> list[Path]:
    out = []
    for entry in METHOD_AGNOSTIC:
        path = ROOT / entry
        out += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return out


@pytest.mark.parametrize("file", [str(f.relative_to(ROOT)) for f in _method_agnostic_files()])
def test_the_pipeline_names_no_method(file):
    names = set(METHODS) | set(ALIASES)
    tree = ast.parse((ROOT / file).read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value in names:
            found.append(repr(node.value))
        if (
            isinstance(node, ast.Attribute)
            and node.attr in ("PREFIX", "PROMPT")
            and getattr(node.value, "id", "") == "Route"
        ):
            found.append(f"Route.{node.attr}")
    assert found == []


@pytest.mark.parametrize("file", sorted(str(f.relative_to(ROOT)) for f in FILES.values()))
def test_no_assert_as_a_runtime_check(file):
    # `python -O` strips asserts: a check that protects users must raise a real error.
    tree = ast.parse((ROOT / file).read_text())
    assert not [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Assert)]


def test_pyproject_lists_every_package():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {m for m, f in FILES.items() if f.name == "__init__.py"}
    assert listed == folders


def test_every_registered_method_has_a_matrix_row():
    from invariants import METHODS as MATRIX

    assert set(MATRIX) == set(METHODS)
    assert all(MATRIX[t].config_class is m.config for t, m in METHODS.items())


def test_every_method_is_registered_once_and_faces_the_package():
    import fxdelta

    for delta_type, method in METHODS.items():
        model_class = getattr(fxdelta, method.config.__name__.removesuffix("Config") + "Model")
        assert model_class.config_class is method.config
        assert model_class_for(delta_type) is model_class
        assert all(model_class_for(alias) is model_class for alias in method.aliases)
        assert getattr(fxdelta, method.config.__name__) is method.config
        assert model_class.__name__ in fxdelta.__all__ and method.config.__name__ in fxdelta.__all__


@pytest.mark.parametrize("package", sorted(m for m, f in FILES.items() if f.name == "__init__.py" and m != "fxdelta"))
def test_each_folder_docstring_names_its_files(package):
    # A newcomer reads a folder's __init__ first: it names every file there and what it owns, and nothing gone.
    init = FILES[package]
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    files = {f.name for f in init.parent.glob("*.py") if f.name != "__init__.py"}
    named = set(re.findall(r"``(\w+\.py)``", doc))
    assert files - named == set(), f"{init.relative_to(ROOT)} does not name {sorted(files - named)}"
    assert named - files == set(), f"{init.relative_to(ROOT)} names files that are not there: {sorted(named - files)}"


ABOVE_THE_PACKAGE = ["fxdelta.cli", "fxdelta.web"]


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if folder_of(m) in ABOVE_THE_PACKAGE))
def test_rooms_above_the_package_use_only_the_public_api(module):
    # The CLI, the web page and the demos are users: they see what a user sees, so the API serves them all.
    room = folder_of(module)
    private = sorted(t for t in GRAPH[module] if t != "fxdelta" and folder_of(t) != room)
    assert private == [], f"{module} reaches past the public API: {private}"
