"""The wheel without the [embedded] extra: an unset URL is one line saying what to do."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.deploy.servers import Installation


@pytest.mark.parametrize(
    ("unset", "named"),
    [("DATABASE_URL", "the embedded Postgres (pgserver)"), ("REDIS_URL", "the embedded Redis")],
)
def test_an_unset_url_without_the_embedded_servers_names_it_and_the_fix(
    installation: Installation, tmp_path: Path, unset: str, named: str
) -> None:
    assert not installation.has_module("pgserver")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": "postgresql://survey@127.0.0.1:1/survey",
        "REDIS_URL": "redis://127.0.0.1:1/0",
    }
    del env[unset]
    done = subprocess.run(
        [str(installation.bin_dir / "survey-worker"), "status", "1"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"{unset} is unset and {named}" in lines[0]
    assert "pip install 'survey-worker[embedded]'" in lines[0]
