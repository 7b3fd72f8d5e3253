"""The embedded Redis keeps its writes across a restart and takes commands once started."""

from __future__ import annotations

from pathlib import Path

import redis

from worker.dev import embedded


def test_a_restarted_embedded_redis_has_its_data_and_takes_commands_at_once(
    tmp_path: Path,
) -> None:
    server = embedded.EmbeddedRedis(tmp_path)
    port = server.start()
    try:
        client = redis.Redis(port=port)
        # Enough that replaying the append-only file takes a while.
        pipe = client.pipeline(transaction=False)
        for i in range(300_000):
            pipe.set(f"key:{i}", "x" * 32)
        pipe.execute()
        client.close()
        server.stop()
        port = server.start(port)
        client = redis.Redis(port=port)
        # No BusyLoadingError: start() returned once the file was replayed.
        assert client.dbsize() == 300_000
        assert client.info("persistence")["aof_enabled"] == 1
        client.close()
    finally:
        server.stop()
