"""The wheel ships what a pip-installed user needs. The package list in
pyproject.toml is explicit (the directories ship under other names), and an
editable install hides a missing entry, so these rules read the tree.
The CI builds and installs the wheel as well (scripts/check_wheel.sh)."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _shipped_directories() -> dict[Path, str]:
    """Each directory that holds shipped files, with its installed package name."""
    found: dict[Path, str] = {}
    for package, directory in CONFIG["package-dir"].items():
        base = ROOT / directory
        for path in base.rglob("*"):
            if path.is_dir() and (path / "__init__.py").exists():
                found[path] = ".".join((package, *path.relative_to(base).parts))
        found[base] = package
    return found


def test_every_package_directory_is_listed() -> None:
    listed = set(CONFIG["packages"])
    missing = sorted(name for name in _shipped_directories().values() if name not in listed)
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"


def test_every_data_file_matches_package_data() -> None:
    data = CONFIG["package-data"]
    unshipped = []
    for directory, package in _shipped_directories().items():
        for path in directory.iterdir():
            if path.is_dir() or path.suffix in (".py", ".pyc"):
                continue
            patterns = data.get(package, [])
            if not any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns):
                unshipped.append(str(path.relative_to(ROOT)))
        # files in subdirectories without __init__.py ship through the parent's patterns
        for sub in directory.iterdir():
            if sub.is_dir() and not (sub / "__init__.py").exists() and sub.name != "__pycache__":
                patterns = data.get(package, [])
                for path in sub.rglob("*"):
                    if path.is_file():
                        name = str(path.relative_to(directory))
                        if not any(fnmatch.fnmatch(name, pattern) for pattern in patterns):
                            unshipped.append(str(path.relative_to(ROOT)))
    assert not unshipped, f"not shipped in the wheel (add to package-data): {unshipped}"
