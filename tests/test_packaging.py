"""The package list in pyproject.toml is explicit (the folders map onto defi.<folder>): every code
folder with an __init__.py must be listed, or `pip install .` silently drops it. The distribution is
named defi-robot (not PyPI's unrelated `defi`), and dependencies only the tests import sit in the
test extra."""

import ast
import importlib.metadata as md
import pathlib
import re
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
CODE_FOLDERS = ["schemas", "curate", "labelers", "training", "pipelines"]


def test_every_subpackage_is_listed():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    mapping = cfg["package-dir"]
    found = set()
    for top in CODE_FOLDERS:
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT)
            found.add("defi." + ".".join(rel.parts))
    assert found - listed == set(), f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    for pkg in listed:
        assert (ROOT / mapping[pkg] / "__init__.py").exists(), f"{pkg} maps to a folder without __init__.py"


def _project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _dist(requirement: str) -> str:
    """Normalised distribution name of a requirement string ('ray[data]>=2.30' -> 'ray')."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement).group()).lower()


def _imported_dists(folders) -> set[str]:
    """Installed distributions whose modules the .py files under ``folders`` import (anywhere in a file)."""
    mods = set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    mods.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods.add(node.module.split(".")[0])
    owners = md.packages_distributions()
    return {re.sub(r"[-_.]+", "-", d).lower() for m in mods for d in owners.get(m, [])}


def test_distribution_is_not_pypis_defi_and_keeps_the_command():
    proj = _project()
    assert proj["name"] == "defi-robot"  # PyPI's `defi` (1.0.19) is an unrelated package
    assert proj["scripts"] == {"defi": "defi.pipelines.cli:main"}
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert all(p.startswith("defi.") for p in packages)  # `import defi` is unchanged


def test_dependencies_only_tests_import_are_in_the_test_extra():
    proj = _project()
    core = {_dist(r) for r in proj["dependencies"]}
    test_extra = {_dist(r) for r in proj["optional-dependencies"]["test"]}
    code = _imported_dists(CODE_FOLDERS)
    tests = _imported_dists(["tests"])
    assert "webdataset" in tests and "webdataset" in test_extra  # the check below sees test-only imports
    only_tests = (core & tests) - code
    assert only_tests == set(), f"only tests import {sorted(only_tests)}: move them to the test extra"
    assert test_extra & code == set(), f"the package imports test-extra dependencies {sorted(test_extra & code)}"
