"""A Redis connection of the send journal's own: commands pipelined, replies in order.

The journal's marks sit between an SMTP server's 354 and the message content, so their
latency is the send path's. redis-py's client hands each reply through a reader task and
several awaits; here a command is written the moment it is made and its reply is handed
to a callback from `data_received`, with no task switch in between. It speaks just the
RESP2 replies the journal's commands get (simple, error, integer, bulk).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import TypeAlias

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from worker import queue, redis_url

Reply: TypeAlias = "bytes | int | ResponseError | RedisConnectionError | None"
OnReply: TypeAlias = Callable[[Reply], None]

# A reply later than this means the server is gone: the connection is dropped.
REPLY_TIMEOUT = 5.0


def encode(*args: str | bytes | int) -> bytes:
    """One command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[tuple[float, OnReply]] = deque()
        self.buffer = bytearray()
        self.lost: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.waiting:
            parsed = self._parse()
            if parsed is None:
                return
            reply, used = parsed
            del self.buffer[:used]
            _, on_reply = self.waiting.popleft()
            on_reply(reply)
        if self.buffer:
            self.fail("a reply nobody asked for")

    def _parse(self) -> tuple[Reply, int] | None:
        end = self.buffer.find(b"\r\n")
        if end == -1:
            return None
        kind, line = self.buffer[:1], bytes(self.buffer[1:end])
        if kind == b"+":
            return line, end + 2
        if kind == b"-":
            return ResponseError(line.decode(errors="replace")), end + 2
        if kind == b":":
            return int(line), end + 2
        if kind == b"$":
            size = int(line)
            if size < 0:
                return None, end + 2
            if len(self.buffer) < end + 2 + size + 2:
                return None
            return bytes(self.buffer[end + 2 : end + 2 + size]), end + 2 + size + 2
        self.fail("a reply of a kind the journal never asks for")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(f"connection lost: {exc}" if exc else "connection closed")

    def fail(self, reason: str) -> None:
        if self.lost is None:
            self.lost = reason
        if self.transport is not None:
            self.transport.close()
        while self.waiting:
            _, on_reply = self.waiting.popleft()
            on_reply(RedisConnectionError(reason))


class RedisPipe:
    """One connection to the Redis at `url` (redis://, rediss:// or unix://, read by
    `worker.redis_url`), opened on demand, on which `call` writes a command at once and
    hands its reply to a callback. Behind Sentinels, each connect asks them for the
    primary, so the connection made after a failover reaches the new one."""

    def __init__(self, url: str, *, name: str) -> None:
        self._target = redis_url.parse(url)
        # What `CLIENT LIST` shows for this connection.
        self._name = name
        self._protocol: _Protocol | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    @property
    def is_open(self) -> bool:
        return self._protocol is not None and self._protocol.lost is None

    async def connect(self) -> None:
        """Open the connection, log in and select the database; raises a redis-py
        `ConnectionError` or `ResponseError` (or OSError) when that fails."""
        self.close()
        loop = asyncio.get_running_loop()
        target = self._target
        if target.socket_path is not None:
            connecting = loop.create_unix_connection(_Protocol, target.socket_path)
        else:
            host, port = target.host, target.port
            if target.sentinels:
                async with asyncio.timeout(REPLY_TIMEOUT):
                    host, port = await queue.primary_address(target)
            tls = None
            if target.tls:
                cafile = None if target.ca_file is None else str(target.ca_file)
                tls = ssl.create_default_context(cafile=cafile)
                # As redis-py (and arq) check a Redis certificate: signed, any name.
                tls.check_hostname = False
            connecting = loop.create_connection(_Protocol, host, port, ssl=tls)
        async with asyncio.timeout(REPLY_TIMEOUT):
            _, self._protocol = await connecting
        if target.password:
            login = [target.username] if target.username else []
            await self.ask("AUTH", *login, target.password)
        if target.database:
            await self.ask("SELECT", target.database)
        await self.ask("CLIENT", "SETNAME", self._name)
        self._watchdog = loop.call_later(REPLY_TIMEOUT, self._check_replies)

    async def ask(self, *args: str | bytes | int) -> bytes | int | None:
        """Send one command and wait for its reply (set-up commands, not the hot path)."""
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.call(args, future.set_result)
        reply = await future
        if isinstance(reply, Exception):
            raise reply
        return reply

    def call(self, args: tuple[str | bytes | int, ...], on_reply: OnReply) -> None:
        """Write the command now; `on_reply` gets its reply, or the error that lost it."""
        protocol = self._protocol
        if protocol is None or protocol.lost is not None or protocol.transport is None:
            on_reply(RedisConnectionError("the journal's Redis connection is closed"))
            return
        protocol.waiting.append((time.monotonic(), on_reply))
        protocol.transport.write(encode(*args))

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._protocol is not None:
            self._protocol.fail("closed")
            self._protocol = None

    def _check_replies(self) -> None:
        protocol = self._protocol
        if protocol is None or protocol.lost is not None:
            return
        if protocol.waiting and time.monotonic() - protocol.waiting[0][0] > REPLY_TIMEOUT:
            protocol.fail("no reply in time")
            return
        self._watchdog = asyncio.get_running_loop().call_later(REPLY_TIMEOUT, self._check_replies)
