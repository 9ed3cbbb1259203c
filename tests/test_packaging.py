"""A non-editable install (``pip install .``, a wheel) carries every package of the tree.

pyproject.toml lists the packages by name (exporters/ and profiles/ are installed under other
names), so a new folder of edgeprune/ that is not added there works from the editable install
of the developers and is missing for a user: ``edgeprune prune`` failed with "No module named
'edgeprune.api'" from a wheel while every test passed.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_installed():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    folders = {str(p.parent.relative_to(ROOT)).replace("/", ".") for p in (ROOT / "edgeprune").rglob("__init__.py")}
    listed = set(setuptools["packages"])
    assert folders - listed == set(), "add these to pyproject.toml [tool.setuptools] packages"
    assert {"edgeprune.exporters", "edgeprune.profiles"} <= listed  # installed from exporters/ and profiles/
