"""The image's build context: `.dockerignore` keeps out what `make demo` and `make test`
leave in a checkout (a 400 MB `.venv`, the embedded servers' 0700 data that a non-root
builder cannot read, the demo's mail, `.env` with its secrets) and nothing the Dockerfile
copies."""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _matches(pattern: list[str], parts: list[str]) -> bool:
    """Go's filepath.Match per folder, as Docker uses it, with `**` for any folders."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_matches(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], pattern[0]) and _matches(pattern[1:], parts[1:])


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` (relative, '/'-separated) out of the context: the last
    pattern that matches it or a folder it is in decides (`!PATTERN` takes it back in)."""
    parts = path.split("/")
    left_out = False
    for pattern in patterns:
        keep = pattern.startswith("!")
        folders = pattern.removeprefix("!").strip("/").split("/")
        if any(_matches(folders, parts[: i + 1]) for i in range(len(parts))):
            left_out = not keep
    return left_out


def patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [x.strip() for x in lines if x.strip() and not x.startswith("#")]


def copied() -> list[str]:
    """The sources of the Dockerfile's COPY instructions from the context."""
    sources = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources += words[1:-1]
    return sources


def test_the_context_leaves_out_local_state_and_keeps_what_the_image_copies() -> None:
    rules = patterns()
    for local in (
        ".venv/bin/python",
        ".data/pg/PG_VERSION",
        "demo-mail/1.eml",
        ".env",
        ".git/HEAD",
    ):
        assert ignored(local, rules), local
    assert ignored("worker/__pycache__/jobs.cpython-311.pyc", rules)
    sources = copied()
    assert {
        "pyproject.toml",
        "README.md",
        "worker",
        "sql",
        "templates",
        "requirements.lock",
    } <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not ignored(source, rules), source
    for shipped in ("worker/jobs.py", "sql/001_schema.sql", "templates/invitation/en/body.txt"):
        assert not ignored(shipped, rules), shipped
