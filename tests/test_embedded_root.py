"""The embedded servers for root, with the data folder inside a folder only root may enter
(a checkout in root's home directory): Postgres, which refuses to run as root, must still
start, and root's folders must stay closed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker.dev import embedded

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs Postgres as another user")
def test_migrate_on_embedded_servers_from_a_private_folder(tmp_path: Path) -> None:
    private = tmp_path / "home"
    private.mkdir(mode=0o700)
    data_dir = private / "checkout" / ".data"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "APP_ENV")}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "worker", "migrate"],
            env={**env, "APP_ENV": "demo", "DATA_DIR": str(data_dir)},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[0] == "applied 001_schema.sql"
        assert private.stat().st_mode & 0o777 == 0o700, "root's folder was opened up"
        # The cluster lives where its system user can reach it, and is gone once the last
        # command using it exited.
        cluster = embedded.EmbeddedPostgres(data_dir)
        assert not cluster.root.is_relative_to(private)
        assert cluster.running_port() is None
    finally:
        embedded.discard(data_dir)
