"""The randomized fault campaign (issues #21 and #29): campaigns of several clients and both
kinds, some with a reminder round, run through two real worker processes (and two relays
to the one SMTP server, which share their sessions) while a seeded schedule kills and stops
workers, stops Postgres, restarts or flushes Redis, and makes the SMTP server slow, refuse
or drop after DATA; people opt out before and during the run,
also by one-click POSTs to the real web app while Postgres is down. At the end every
invariant is checked from the ledger and from what the SMTP server accepted.

    FAULT_SEED=1234 FAULT_SECONDS=60 .venv/bin/pytest tests/faults/test_fault_campaign.py -s

replays a run (the seed is printed first, and in every failure). `make soak` runs it for
30 minutes.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

import asyncpg
import httpx
import redis.asyncio
import redis.exceptions

from tests.faults.campaign import (
    FINAL,
    OptOut,
    Scope,
    Tally,
    accepted,
    lock_due,
    max_invitation_id,
    schedule,
    sleep_until,
)
from tests.faults.harness import relays, wait_until
from tests.faults.test_crashes import DATA_DIR, SMTP, Spawn
from tests.support.pipeline import add_client, csv_of, launch, opt_out
from tests.support.smtp import RecordingHandler
from tests.support.web import serving, token_for, token_id
from worker import db, held_optouts, suppression
from worker.dev import embedded
from worker.settings import Settings

T = TypeVar("T")
CLIENTS = ("acme", "beta", "gamma")
PEOPLE = [f"p{i:03d}@example.com" for i in range(400)]
BOUNCING = PEOPLE[:20]  # the only addresses a 550 rule is put on
BASE_DELAY = 0.25  # seconds the server takes per message when it is not slowed down
DB_DOWN = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
# A scheduled launch is skipped while this many invitations are still open: a long soak on
# a slow or busy machine tests the guarantees under faults, not how large a backlog it
# can drain before its checks (a 30-minute run once left 30,000 queued).
BACKLOG_LIMIT = 2_000


class FaultRun:
    """The state of one run: workers, campaigns, opt-outs, and the faults injected."""

    def __init__(
        self, seed: int, settings: Settings, handler: RecordingHandler, spawn: Spawn
    ) -> None:
        assert settings.database_url is not None and settings.redis_url is not None
        self.seed = seed
        self.rng = random.Random(seed)
        self.settings = settings
        self.url = settings.database_url
        self.redis_url = settings.redis_url
        self.handler = handler
        self.spawn = spawn
        self.workers = [spawn(settings), spawn(settings)]
        self.background: list[asyncio.Task[object]] = []
        self.tally = Tally()
        self.kills = 0
        # campaign id -> (client, kind, addresses, reminders)
        self.campaigns: dict[int, tuple[str, str, list[str], int]] = {}
        self.opt_outs: list[OptOut] = []
        self.token_ids: dict[str, int] = {}
        self.web = ""
        self.late = 0
        self.slow_token = 0
        self.exits: list[str] = []

    def tag(self) -> str:
        return f"[FAULT_SEED={self.seed}]"

    # -- the services ----------------------------------------------------------------

    async def retry(self, action: Callable[[], Awaitable[T]], what: str) -> T:
        """Run a database action, retrying while Postgres comes back."""
        for _ in range(100):
            try:
                return await action()
            except DB_DOWN:
                await asyncio.sleep(0.3)
        raise AssertionError(f"{self.tag()} Postgres never came back for {what}")

    async def with_pool(self, action: Callable[[asyncpg.Pool], Awaitable[T]], what: str) -> T:
        async def once() -> T:
            pool = await db.create_pool(self.url, max_size=2)
            try:
                return await action(pool)
            finally:
                await pool.close()

        return await self.retry(once, what)

    async def setup(self) -> None:
        async def clients(pool: asyncpg.Pool) -> None:
            for client in CLIENTS:
                await add_client(pool, client)
                self.token_ids[client] = await token_id(pool, client)
            # Opt-outs before anything is launched: none of these may ever be mailed.
            for scope in [*map(Scope, CLIENTS), Scope(None)]:
                for address in self.rng.sample(PEOPLE, 12):
                    await opt_out(pool, self.settings, address, worker_scope(scope))
                    self.opt_outs.append(OptOut(address, scope, 0.0, "before"))

        await self.with_pool(clients, "setup")

    async def launch(self, extra: list[str] | None = None, kind: str | None = None) -> None:
        client = self.rng.choice(CLIENTS)
        kind = kind or self.rng.choices(["survey", "marketing"], [3, 2])[0]
        people = self.rng.sample(PEOPLE, self.rng.randint(50, 250)) + (extra or [])
        reminders = 1 if kind == "survey" and self.rng.random() < 0.4 else 0

        async def go(pool: asyncpg.Pool) -> int:
            report = await launch(
                pool,
                self.settings,
                csv_of(*people),
                client_id=client,
                kind=kind,
                template="marketing" if kind == "marketing" else "invitation",
                reminders=reminders,
                reminder_interval=timedelta(seconds=2) if reminders else None,
            )
            return report.campaign_id

        campaign_id = await self.with_pool(go, "a launch")
        self.campaigns[campaign_id] = (client, kind, people, reminders)
        self.tally.faults[f"launch_{kind}{'_reminders' if reminders else ''}"] += 1

    async def open_invitations(self) -> int:
        """Invitations of the campaign's launches not in a final state yet."""

        async def count(pool: asyncpg.Pool) -> int:
            n: int = await pool.fetchval(
                "SELECT count(*) FROM invitations WHERE NOT (state = ANY($1::text[]))",
                sorted(FINAL),
            )
            return n

        return await self.with_pool(count, "counting the backlog")

    # -- opt-outs ----------------------------------------------------------------------

    async def click(self, address: str, scope: Scope) -> bool:
        """A one-click POST through the web app; whether it was accepted (200 or 202)."""
        client_token = self.token_ids[scope.client_id] if scope.client_id else None
        token = token_for(self.settings, address, client_token)
        async with httpx.AsyncClient(base_url=self.web, timeout=30) as client:
            response = await client.post(
                f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"}
            )
        assert response.status_code in (200, 202, 503), (
            f"{self.tag()} click answered {response.status_code}: {response.text[:300]}"
        )
        return response.status_code != 503

    async def opt_out_now(self, how: str) -> None:
        """An opt-out (a click, or the CLI's way) while workers may be sending to them."""
        address = self.rng.choice(PEOPLE)
        scope = Scope(self.rng.choice([*CLIENTS, None]))

        async def once() -> None:
            conn = await asyncpg.connect(self.url)
            try:
                async with conn.transaction():
                    racing, seen = await lock_due(conn, address, scope)
                    if how == "click":
                        ok = await self.click(address, scope)
                    else:
                        pool = await db.create_pool(self.url, max_size=1)
                        try:
                            await opt_out(pool, self.settings, address, worker_scope(scope))
                        finally:
                            await pool.close()
                        ok = True
                    at = time.time()
                    upto = await max_invitation_id(conn)
            finally:
                await conn.close()
            if ok:
                self.opt_outs.append(OptOut(address, scope, at, how, racing, seen, upto))

        await self.retry(once, "an opt-out")
        self.tally.faults[how] += 1

    # -- faults ------------------------------------------------------------------------

    async def postgres_down(self) -> None:
        """Postgres stopped for 2-6 s; clicks while it is down (held in Redis), then a
        launch right after it is back that includes people who clicked (issue #29)."""
        down_for = self.rng.uniform(2, 6)
        # Clicks on people no campaign holds yet, and on people of running campaigns
        # without reminders, whose due rows are locked until Postgres stops.
        late = [f"late{self.late + i}@example.com" for i in range(2)]
        self.late += 2
        late_scope = Scope(self.rng.choice([*CLIENTS, None]))
        no_reminders = [
            a for a in PEOPLE if not any(a in c[2] and c[3] for c in self.campaigns.values())
        ]
        running = [
            (address, Scope(self.rng.choice([*CLIENTS, None])))
            for address in self.rng.sample(no_reminders, min(2, len(no_reminders)))
        ]
        conn = await self.retry(lambda: asyncpg.connect(self.url), "a lock before the outage")
        snapshot = []
        tx = conn.transaction()
        await tx.start()
        for address, scope in running:
            racing, seen = await lock_due(conn, address, scope)
            snapshot.append((address, scope, racing, seen))
        upto = await max_invitation_id(conn)
        server = embedded.EmbeddedPostgres(DATA_DIR)
        port = server.running_port()
        assert port is not None, self.tag()
        await asyncio.to_thread(server.stop)
        conn.terminate()
        started = time.monotonic()
        try:
            await asyncio.sleep(self.rng.uniform(0, down_for / 2))
            for address, scope, racing, seen in snapshot:
                if await self.click(address, scope):
                    self.opt_outs.append(
                        OptOut(address, scope, time.time(), "click_pg_down", racing, seen, upto)
                    )
                    self.tally.faults["click_pg_down"] += 1
            for address in late:
                if await self.click(address, late_scope):
                    self.opt_outs.append(OptOut(address, late_scope, time.time(), "click_pg_down"))
                    self.tally.faults["click_pg_down"] += 1
            await asyncio.sleep(max(0.0, down_for - (time.monotonic() - started)))
        finally:
            await asyncio.to_thread(server.start, port)
        self.tally.faults["postgres_down"] += 1
        kind = "marketing" if late_scope.client_id is None else None
        await self.launch_for(late, late_scope, kind)

    async def launch_for(self, extra: list[str], scope: Scope, kind: str | None) -> None:
        """A launch right after recovery that the late clickers' list applies to."""
        while True:
            before = set(self.campaigns)
            await self.launch(extra, kind)
            (new,) = set(self.campaigns) - before
            client, launched_kind, _, _ = self.campaigns[new]
            if scope.applies(client, launched_kind):
                return

    async def kill9(self) -> None:
        victim = self.workers.pop(self.rng.randrange(len(self.workers)))
        victim.kill()
        self.kills += 1
        await asyncio.sleep(self.rng.uniform(0, 1))
        self.workers.append(self.spawn(self.settings))

    async def sigterm(self) -> None:
        victim = self.workers.pop(self.rng.randrange(len(self.workers)))
        self.background.append(asyncio.create_task(victim.terminate()))
        self.workers.append(self.spawn(self.settings))

    async def redis_restart(self) -> None:
        server = embedded.EmbeddedRedis(DATA_DIR)
        port = server.running_port()
        assert port is not None, self.tag()
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(self.rng.uniform(0, 2))
        await asyncio.to_thread(server.start, port)
        # Accepting connections is not yet answering: the append-only file loads first.
        client = redis.asyncio.Redis.from_url(self.redis_url)
        try:
            for _ in range(100):
                try:
                    await client.ping()
                    break
                except redis.exceptions.BusyLoadingError:
                    await asyncio.sleep(0.1)
        finally:
            await client.aclose()

    async def redis_flush(self) -> bool:
        """FLUSHDB (the queue and the send journals); not while clicks are held there,
        which a flush would delete (an operator's doing, not a fault to survive)."""
        client = redis.asyncio.Redis.from_url(self.redis_url)
        try:
            if await client.scard(held_optouts.KEY):
                return False
            await client.flushdb()
            return True
        finally:
            await client.aclose()

    async def smtp_slow(self) -> None:
        self.slow_token += 1
        token = self.slow_token
        self.handler.data_delay = self.rng.uniform(0.3, 1.0)

        async def later() -> None:
            await asyncio.sleep(self.rng.uniform(3, 10))
            if self.slow_token == token:
                self.handler.data_delay = BASE_DELAY

        self.background.append(asyncio.create_task(later()))

    async def inject(self, kind: str) -> None:
        rng = self.rng
        if kind == "launch":
            if await self.open_invitations() < BACKLOG_LIMIT:
                await self.launch()
            else:
                self.tally.faults["launch_skipped_backlog"] += 1
            return
        if kind in ("click", "opt_out"):
            await self.opt_out_now(kind)
            return
        if kind == "redis_flush" and not await self.redis_flush():
            kind = "redis_restart"
        if kind == "kill9":
            await self.kill9()
        elif kind == "sigterm":
            await self.sigterm()
        elif kind == "postgres_down":
            await self.postgres_down()
            return
        elif kind == "redis_restart":
            await self.redis_restart()
        elif kind == "smtp_slow":
            await self.smtp_slow()
        elif kind == "smtp_451":
            self.handler.on(
                *rng.sample(PEOPLE, 5), reply="451 4.3.0 Try again later", times=rng.randint(1, 4)
            )
        elif kind == "smtp_550":
            self.handler.on(*rng.sample(BOUNCING, 2), reply="550 5.1.1 No such user")
        elif kind == "smtp_drop":
            self.handler.on(*rng.sample(PEOPLE, 3), stage="DATA", drop=True, times=2)
        self.tally.faults[kind] += 1

    async def run(self, seconds: float) -> None:
        events = schedule(self.rng, seconds)
        start = time.monotonic()
        for _ in range(3):
            await self.launch()
        for at, kind in events:
            await sleep_until(start, at)
            self.supervise()
            print(f"{time.strftime('%H:%M:%S')} +{at:5.1f}s {kind}", flush=True)
            await self.inject(kind)

    def supervise(self) -> None:
        """Replace a worker that exited by itself, as a supervisor would: one started while
        Redis or Postgres is down exits at once ("cannot connect")."""
        for process in list(self.workers):
            if process.process.poll() is not None:
                self.workers.remove(process)
                self.workers.append(self.spawn(self.settings))
                last = process.output().strip().splitlines()[-1:]
                self.exits.append(f"exit {process.process.returncode}: {last}")
                self.tally.faults["worker_exited_restarted"] += 1

    async def settle(self, timeout: float) -> None:
        """Faults cleared: wait for every campaign to complete."""
        self.handler.data_delay = 0.0
        self.slow_token += 1
        for task in self.background:
            await task
        self.supervise()
        ids = list(self.campaigns)

        async def done() -> bool:
            # A supervisor keeps restarting workers while the campaigns finish.
            self.supervise()
            conn = await asyncpg.connect(self.url)
            try:
                statuses = await conn.fetch(
                    "SELECT status FROM campaigns WHERE id = ANY($1::bigint[])", ids
                )
            finally:
                await conn.close()
            return all(r["status"] == "completed" for r in statuses) and len(statuses) == len(ids)

        try:
            await wait_until(done, timeout=timeout, what="every campaign to complete")
        except AssertionError:
            conn = await asyncpg.connect(self.url)
            try:
                left = await conn.fetch(
                    """SELECT c.id, c.status, i.state, count(*) FROM campaigns c
                       LEFT JOIN invitations i ON i.campaign_id = c.id
                       WHERE c.status <> 'completed' GROUP BY 1, 2, 3 ORDER BY 1"""
                )
            finally:
                await conn.close()
            raise AssertionError(
                f"{self.tag()} campaigns not completed: {[tuple(r) for r in left]}\n"
                + "\n".join(w.output()[-2000:] for w in self.workers)
            ) from None

    # -- the invariants ----------------------------------------------------------------

    async def check(self) -> str:
        conn = await asyncpg.connect(self.url)
        try:
            rows = await conn.fetch(
                """SELECT i.id, i.email, i.state, i.reason, i.round, i.next_attempt_at,
                          c.client_id, c.kind, c.id AS campaign_id
                   FROM invitations i JOIN campaigns c ON c.id = i.campaign_id"""
            )
            now = await conn.fetchval("SELECT now()")
        finally:
            await conn.close()
        ledger = {r["id"]: r for r in rows}
        sent = accepted(self.handler.messages, self.handler.arrivals)
        tag, checks = self.tag(), self.tally.invariants

        # 1. Nobody on an applicable list is mailed after the opt-out was accepted, except
        # by a send whose check may have run before it (see tests/faults/campaign.py).
        by_address: dict[str, list[OptOut]] = {}
        for o in self.opt_outs:
            by_address.setdefault(o.address, []).append(o)
        checks["1_opt_outs"] = len(self.opt_outs)
        for r in rows:
            for o in by_address.get(r["email"], []):
                if o.scope.applies(r["client_id"], r["kind"]):
                    checks["1_invitations_in_scope"] += 1
        for s in sent:
            row = ledger.get(s.invitation_id)
            assert row is not None, f"{tag} message for invitation {s.invitation_id} not in ledger"
            assert row["email"] == s.recipient, f"{tag} {s} went to another address than {row}"
            for o in by_address.get(s.recipient, []):
                if not o.scope.applies(row["client_id"], row["kind"]):
                    continue
                checks["1_messages_in_scope"] += 1
                assert s.at < o.at or o.may_race(s.invitation_id), (
                    f"{tag} invariant 1: {s.recipient} opted out of {o.scope} ({o.how}) at "
                    f"{o.at:.3f}, and the server accepted invitation {s.invitation_id} "
                    f"(campaign {row['campaign_id']}, {row['kind']} of {row['client_id']}, "
                    f"round {row['round']}, now {row['state']}) at {s.at:.3f}"
                )

        # 2. No message accepted twice, unless its invitation is `unknown` (UNKNOWN_POLICY=hold:
        # not even then).
        copies = Counter(s.invitation_id for s in sent)
        for invitation_id, n in copies.items():
            checks["2_accepted_once"] += 1
            assert n == 1, (
                f"{tag} invariant 2: invitation {invitation_id} "
                f"({dict(ledger[invitation_id])}) accepted {n} times"
            )

        # 3. `unknown` only for what was on the wire at a kill -9, or cut after DATA.
        unknown = Counter(r["reason"] for r in rows if r["state"] == "unknown")
        checks["3_unknown_bounded"] += 1
        lost_bound = self.kills * self.settings.smtp_connections
        assert unknown["worker_lost_during_smtp"] <= lost_bound, (
            f"{tag} invariant 3: {unknown['worker_lost_during_smtp']} unknown after "
            f"{self.kills} kill -9 x {self.settings.smtp_connections} connections"
        )
        assert unknown["no_reply_after_data"] <= len(self.handler.dropped), (
            f"{tag} invariant 3: {unknown['no_reply_after_data']} unknown for "
            f"{len(self.handler.dropped)} connections dropped after DATA"
        )
        assert set(unknown) <= {"worker_lost_during_smtp", "no_reply_after_data"}, (
            f"{tag} invariant 3: unknown for other reasons: {unknown}"
        )

        # 4. Every invitation final, or waiting for a retry that is still ahead.
        for r in rows:
            checks["4_final"] += 1
            waiting = r["state"] == "deferred" and r["next_attempt_at"] > now
            assert r["state"] in FINAL or waiting, f"{tag} invariant 4: {dict(r)}"

        # 5. What the ledger calls `sent` was accepted by the server.
        for r in rows:
            if r["state"] == "sent":
                checks["5_sent_accepted"] += 1
                assert copies[r["id"]] >= 1, f"{tag} invariant 5: {dict(r)} never accepted"

        states = Counter(r["state"] for r in rows)
        return (
            f"fault campaign FAULT_SEED={self.seed}: {len(self.campaigns)} campaigns, "
            f"{len(rows)} invitations {dict(states)}, {len(sent)} messages accepted, "
            f"{len(self.handler.dropped)} dropped after DATA, {len(self.opt_outs)} opt-outs; "
            f"{self.tally}" + "".join(f"\n  worker {e}" for e in self.exits)
        )


def worker_scope(scope: Scope) -> suppression.Scope:
    if scope.client_id is None:
        return suppression.Scope("marketing", "")
    return suppression.Scope("survey", scope.client_id)


async def test_a_seeded_random_fault_campaign_keeps_every_guarantee(
    pg: asyncpg.Pool, fast: Settings, smtp: SMTP, spawn: Spawn
) -> None:
    seed = int(os.environ.get("FAULT_SEED") or random.randrange(2**32))
    seconds = float(os.environ.get("FAULT_SECONDS") or 90)
    print(f"\nfault campaign: FAULT_SEED={seed} FAULT_SECONDS={seconds:g}", flush=True)
    # Two relays to the one server, SMTP_CONNECTIONS shared between them: each message
    # may leave through either's sessions (the bound of invariant 3 is unchanged).
    half = str(fast.smtp_connections // 2)
    url = f"smtp://{fast.smtp_host}:{fast.smtp_port}"
    settings = relays(
        fast.model_copy(update={"unknown_policy": "hold", "pause_min_sent": 1_000_000}),
        {"east": url, "west": url},
        SMTP_RELAY_EAST_CONNECTIONS=half,
        SMTP_RELAY_WEST_CONNECTIONS=half,
    )
    handler = smtp[0]
    handler.data_delay = BASE_DELAY
    await pg.close()  # the run stops Postgres: its own connections only
    run = FaultRun(seed, settings, handler, spawn)
    await run.setup()
    async with serving(settings) as base:
        run.web = base
        await run.run(seconds)
        # A long run leaves a long backlog of retries and reminders to drain.
        await run.settle(timeout=max(180, seconds / 2))
    summary = await run.check()
    print(summary, flush=True)
