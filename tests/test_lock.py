"""The image's lock file (requirements.lock) agrees with pyproject.toml's dependencies."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s\\]+)")


def pins() -> dict[str, tuple[str, int]]:
    """Each locked package: its version and how many hashes it lists."""
    found: dict[str, tuple[str, int]] = {}
    name = ""
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        pinned = PIN.match(line)
        if pinned:
            name = canonicalize_name(pinned[1])
            found[name] = (pinned[2], 0)
        elif line.strip().startswith("--hash=sha256:") and name:
            version, hashes = found[name]
            found[name] = (version, hashes + 1)
    return found


def test_every_runtime_dependency_is_locked_at_a_version_it_allows() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    locked = pins()
    for text in project["dependencies"]:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is in pyproject.toml but not in requirements.lock"
        version = locked[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {name}=={version}, which pyproject.toml's {text!r} refuses"
            " (run make lock)"
        )


def test_every_locked_package_is_pinned_by_hash_and_names_no_local_source() -> None:
    locked = pins()
    assert locked, "requirements.lock pins nothing"
    assert all(hashes for _, hashes in locked.values()), "a pin without --hash"
    text = (ROOT / "requirements.lock").read_text()
    assert "--find-links" not in text and "--index-url" not in text
