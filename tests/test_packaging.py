"""The package list in pyproject.toml is explicit (the folders map onto defi.<folder>): every code
folder with an __init__.py must be listed, or `pip install .` silently drops it."""

import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    mapping = cfg["package-dir"]
    found = set()
    for top in ["schemas", "curate", "labelers", "training", "pipelines"]:
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT)
            found.add("defi." + ".".join(rel.parts))
    assert found - listed == set(), f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    for pkg in listed:
        assert (ROOT / mapping[pkg] / "__init__.py").exists(), f"{pkg} maps to a folder without __init__.py"
