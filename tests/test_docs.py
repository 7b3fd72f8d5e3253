"""The documentation site builds, and what it lists cannot drift from the code.

`mkdocs build --strict` fails on a broken link, a missing anchor or a page left out of the
nav; the client API reference page names every operation of the API's OpenAPI document;
the configuration page's table lists exactly the settings `Settings` reads, and the
command-line page every command `survey-worker` has; the README's links lead to pages that
exist, and its quick start is a part of the production steps `tests/deploy/` runs.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from pydantic import AliasChoices, AliasPath

from worker.cli import main
from worker.settings import Settings
from worker.web.api.app import create_app as create_api

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built once for this module's tests with `mkdocs build --strict`."""
    site = tmp_path_factory.mktemp("docs") / "site"
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return site


def test_site_builds_strict(site: Path) -> None:
    for page in DOCS.glob("*.md"):
        name = "index.html" if page.stem == "index" else f"{page.stem}/index.html"
        assert (site / name).is_file(), f"{page.name} was not built"


def test_api_reference_documents_every_operation(site: Path) -> None:
    # The page is generated from the API's own OpenAPI document (docs/hooks/openapi.py), so
    # a new endpoint is documented by building the site; this holds the hook to it.
    page = html.unescape((site / "api-reference" / "index.html").read_text())
    paths = create_api().openapi()["paths"]
    assert paths
    missing = [
        f"{method.upper()} /v1{path}"
        for path, item in paths.items()
        for method in item
        if f"<code>{method.upper()} /v1{path}</code>" not in page
    ]
    assert missing == [], "operations missing from the built api-reference page"


def table_rows(text: str, header: str) -> list[list[str]]:
    """The cells of the rows of the Markdown table whose header row is `header`."""
    lines = text.splitlines()
    start = lines.index(header)
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def environment_names() -> set[str]:
    """The environment variables `Settings` reads: each field's alias(es), else its name."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias or field.alias
        if alias is None:
            names.add((prefix + name).upper())
        elif isinstance(alias, str):
            names.add(alias.upper())
        elif isinstance(alias, AliasChoices):
            names.update(c.upper() for c in alias.choices if isinstance(c, str))
        else:
            assert not isinstance(alias, AliasPath), f"{name}: an AliasPath is not documented"
    return names


def test_configuration_table_lists_exactly_the_settings() -> None:
    rows = table_rows((DOCS / "configuration.md").read_text(), "| variable | default | meaning |")
    documented = [name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", row[0])]
    assert len(documented) == len(set(documented)), "a variable is listed twice"
    settings = environment_names()
    assert set(documented) - settings == set(), "documented, but Settings has no such field"
    assert settings - set(documented) == set(), "in Settings, but not in docs/configuration.md"


def commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        if command.hidden:
            continue
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name)


def test_command_line_page_lists_every_command() -> None:
    rows = table_rows((DOCS / "command-line.md").read_text(), "| command | what it does |")
    # `pause \| resume \| cancel CAMPAIGN_ID` documents three commands.
    usages = [
        alternative.split()
        for row in rows
        for alternative in re.split(r"\s*\\\|\s*", row[0].replace("`", ""))
    ]
    assert isinstance(main, click.Group)
    missing = [
        " ".join(path)
        for path in commands(main)
        if not any(usage[: len(path)] == list(path) for usage in usages)
    ]
    assert missing == [], "commands missing from docs/command-line.md"


def test_readme_links_lead_to_pages() -> None:
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", readme)
    assert targets, "the README links to no page"
    for target in targets:
        assert (ROOT / target).is_file(), f"README links to {target}, which does not exist"


def test_readme_quick_start_is_part_of_the_tested_steps() -> None:
    readme = (ROOT / "README.md").read_text()
    guide = (DOCS / "getting-started.md").read_text()
    quick = re.search(r"<!-- quickstart -->\n```sh\n(.*?)```", readme, re.S)
    steps = re.search(r"<!-- deploy: steps -->\n```sh\n(.*?)```", guide, re.S)
    assert quick and steps
    step_lines = steps.group(1).splitlines()
    # Every line as the deploy test runs it, in the same order.
    at = [step_lines.index(line) for line in quick.group(1).splitlines()]
    assert at == sorted(at)
