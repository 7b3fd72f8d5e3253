"""`/ops` in a real browser: Debian's Chromium, driven by Playwright, signs in with an
OPS_USERS user, sees the campaigns a real worker sent with the send-rate chart and each
campaign's sparkline drawn (their pixels counted in screenshots), pauses and resumes a
campaign with the buttons (each a POST answered 303 See Other to /ops, its result shown
once) and cancels one through the confirmation step, which needs no script; and sees what
a campaign waits for while a real worker's relay is down."""

from __future__ import annotations

import asyncio
import signal
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from playwright.async_api import async_playwright
from pydantic import SecretStr

from tests.support.pipeline import add_client, csv_of, launch, run_workers
from tests.support.smtp import RecordingHandler
from tests.support.web import private_logs, serving, start_cli
from tests.test_browser import (  # noqa: F401 (the fixture)
    CHROMIUM_ARGS,
    VIEWPORTS,
    chromium,
    screenshots,
)
from worker import passwords
from worker.dev import embedded
from worker.settings import Settings

USER, PASSWORD = "anna", "correct horse battery staple"


@pytest.fixture(autouse=True)
def logs() -> Iterator[list[dict[str, Any]]]:
    with private_logs() as captured:
        yield captured


def pixels(png: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Width, height and RGB pixels of an 8-bit, non-interlaced RGB or RGBA PNG (what
    Chromium's screenshots are), per the PNG specification's filters."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    position, data, header = 8, b"", b""
    while position < len(png):
        (length,) = struct.unpack(">I", png[position : position + 4])
        kind = png[position + 4 : position + 8]
        body = png[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            data += body
        position += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0
    size = 3 if colour == 2 else 4
    raw = zlib.decompress(data)
    stride = width * size
    previous = bytearray(stride)
    result: list[tuple[int, int, int]] = []
    for row in range(height):
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - size] if i >= size else 0
            up = previous[i]
            corner = previous[i - size] if i >= size else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                guess = left + up - corner
                pa, pb, pc = abs(guess - left), abs(guess - up), abs(guess - corner)
                nearest = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + nearest) & 0xFF
        result += [tuple(line[i : i + 3]) for i in range(0, stride, size)]  # type: ignore[misc]
        previous = line
    return width, height, result


def bar_pixels(png: bytes) -> tuple[int, int]:
    """How many pixels of a screenshot are the chart's blue (#1f6fb2, anti-aliased), and
    how many there are."""
    _, _, found = pixels(png)
    blue = sum(1 for r, g, b in found if b > 140 and b - r > 60 and b - g > 20)
    return blue, len(found)


async def test_an_operator_watches_and_pauses_campaigns_in_a_real_browser(
    pg: asyncpg.Pool,
    settings: Settings,
    smtp: tuple[RecordingHandler, int],
    chromium: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    hashed = passwords.hash_password(PASSWORD, n=2**10)
    local = settings.model_copy(update={"ops_users": SecretStr(f"{USER}:{hashed}")})
    await add_client(pg, "acme", "Acme Research")
    sent = await launch(pg, local, csv_of(*(f"p{i}@example.com" for i in range(60))))
    await run_workers(local)
    waiting = await launch(pg, local, csv_of("ann@example.com", "bob@example.com"), enqueue=False)
    async with serving(local) as base, async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS
        )
        try:
            # Without credentials: the challenge (headless Chromium cannot show its dialog).
            stranger = await browser.new_context()
            refused = await stranger.request.get(f"{base}/ops")
            assert refused.status == 401
            assert refused.headers["www-authenticate"].startswith("Basic ")

            context = await browser.new_context(
                http_credentials={"username": USER, "password": PASSWORD},
                viewport={"width": 1200, "height": 900},
            )
            page = await context.new_page()
            console: list[str] = []
            page.on("console", lambda message: console.append(message.text))
            response = await page.goto(f"{base}/ops")
            assert response is not None and response.status == 200
            assert await page.text_content("h1") == "Campaigns"
            # The style sheet applied: the policy allows exactly it.
            background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
            assert background == "rgb(244, 244, 242)"
            assert not [m for m in console if "Content Security Policy" in m]

            done = page.locator(f"#campaign-{sent.campaign_id}")
            assert "completed" in (await done.locator(".meta").text_content() or "")
            assert "sent 60" in (await done.locator(".counts").text_content() or "")
            assert await page.locator("#rate-chart rect").count() >= 1

            chart = await page.locator("#rate-chart").screenshot(path=tmp_path / "chart.png")
            blue, total = bar_pixels(chart)
            assert blue > 0.01 * total, (blue, total)  # bars drawn, not an empty box

            # Each campaign's rate is a framed sparkline over the whole window with its time
            # axis and label: a short campaign's burst is a peak on a line, not a lone bar.
            spark = done.locator("svg.spark")
            assert await done.locator(".spark rect").count() == 0
            assert await spark.locator("polyline").count() == 1
            caption = await done.locator("figcaption").text_content() or ""
            assert caption.startswith("Send rate, last 10 minutes: now ")
            axis = await done.locator(".axis span").all_text_contents()
            assert axis == ["\u221210 min", "\u22125 min", "now"]
            border = await spark.evaluate("e => getComputedStyle(e).borderTopWidth")
            assert border == "1px"
            box = await spark.bounding_box()
            section = await done.bounding_box()
            assert box is not None and section is not None
            assert box["width"] > 0.8 * section["width"]  # no longer a third of the width
            _, _, found = pixels(await spark.screenshot())
            width = int(box["width"])
            columns = {i % width for i, (r, g, b) in enumerate(found) if b - r > 60 and b > 140}
            # The line runs from the window's start to now.
            assert min(columns) < 0.05 * width and max(columns) > 0.95 * width, sorted(columns)
            idle = page.locator(f"#campaign-{waiting.campaign_id} .spark")
            assert bar_pixels(await idle.screenshot())[0] == 0  # nothing sent: no line
            assert "nothing sent" in (
                await page.locator(f"#campaign-{waiting.campaign_id} figcaption").text_content()
                or ""
            )
            await page.screenshot(path=tmp_path / "ops.png", full_page=True)

            row = page.locator(f"#campaign-{waiting.campaign_id}")
            async with page.expect_navigation() as navigation:
                await row.get_by_role("button", name="Pause").click()
            result = await navigation.value
            # Post/redirect/get: the browser ends on GET /ops, with the result shown once.
            assert result is not None and result.status == 200
            assert result.request.method == "GET"
            posted = result.request.redirected_from
            assert posted is not None and posted.method == "POST"
            assert page.url == f"{base}/ops"
            assert f"campaign {waiting.campaign_id}: paused" in (
                await page.text_content("[role=status]") or ""
            )
            status = "SELECT status FROM campaigns WHERE id = $1"
            assert await pg.fetchval(status, waiting.campaign_id) == "paused"
            # What the docs show: the page with the result, on a desktop and a phone.
            folder = screenshots(tmp_path)
            for name, viewport in VIEWPORTS.items():
                await page.set_viewport_size(viewport)
                scroll_width = await page.evaluate("document.documentElement.scrollWidth")
                assert scroll_width <= viewport["width"], name
                await page.screenshot(path=folder / f"ops-{name}.png", full_page=True)
            await page.set_viewport_size(VIEWPORTS["desktop"])
            reloaded = await page.reload()
            assert reloaded is not None and reloaded.request.method == "GET"
            assert await page.locator("[role=status]").count() == 0
            assert await pg.fetchval(status, waiting.campaign_id) == "paused"

            row = page.locator(f"#campaign-{waiting.campaign_id}")
            async with page.expect_navigation():
                await row.get_by_role("button", name="Resume").click()
            assert await pg.fetchval(status, waiting.campaign_id) == "running"

            # Cancel asks first, without script; "No, keep it" leaves it running.
            states = "SELECT array_agg(state ORDER BY id) FROM invitations WHERE campaign_id = $1"
            before = await pg.fetchval(states, waiting.campaign_id)
            row = page.locator(f"#campaign-{waiting.campaign_id}")
            async with page.expect_navigation():
                await row.get_by_role("button", name="Cancel").click()
            dialog = page.get_by_role("alertdialog")
            assert f"Cancel campaign #{waiting.campaign_id}" in (await dialog.text_content() or "")
            assert await pg.fetchval(status, waiting.campaign_id) == "running"
            assert await pg.fetchval(states, waiting.campaign_id) == before
            await page.screenshot(path=folder / "ops-cancel-desktop.png", full_page=True)
            async with page.expect_navigation():
                await dialog.get_by_role("link", name="No, keep it").click()
            assert page.url == f"{base}/ops"
            assert await pg.fetchval(status, waiting.campaign_id) == "running"

            row = page.locator(f"#campaign-{waiting.campaign_id}")
            async with page.expect_navigation():
                await row.get_by_role("button", name="Cancel").click()
            async with page.expect_navigation():
                await page.get_by_role(
                    "button", name=f"Yes, cancel campaign #{waiting.campaign_id}"
                ).click()
            assert page.url == f"{base}/ops"
            assert await pg.fetchval(status, waiting.campaign_id) == "cancelled"
            assert f"campaign {waiting.campaign_id}: cancelled" in (
                await page.text_content("[role=status]") or ""
            )
            # The flash cookie lived from the redirect to the page that showed it.
            assert await context.cookies() == []
        finally:
            await browser.close()


async def test_an_operator_sees_the_relay_a_campaign_waits_for_in_a_real_browser(
    pg: asyncpg.Pool,
    settings: Settings,
    chromium: Path,  # noqa: F811
) -> None:
    hashed = passwords.hash_password(PASSWORD, n=2**10)
    # No relay listens on this port: the worker finds it unreachable at start and says so
    # in Redis, where the page reads it.
    local = settings.model_copy(
        update={"ops_users": SecretStr(f"{USER}:{hashed}"), "smtp_port": embedded.free_port()}
    )
    await add_client(pg, "acme", "Acme Research")
    report = await launch(pg, local, csv_of("ann@example.com", "bob@example.com"))
    worker = await start_cli(local, "worker")
    try:
        async with serving(local) as base, async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=str(chromium), args=CHROMIUM_ARGS
            )
            try:
                context = await browser.new_context(
                    http_credentials={"username": USER, "password": PASSWORD},
                    viewport={"width": 390, "height": 844},
                )
                page = await context.new_page()
                line = page.locator(f"#campaign-{report.campaign_id} .waiting")
                deadline = time.monotonic() + 60
                while await line.count() == 0:
                    assert time.monotonic() < deadline, "no waiting line on /ops"
                    await asyncio.sleep(0.5)
                    response = await page.goto(f"{base}/ops")
                    assert response is not None and response.status == 200
                text = await line.text_content() or ""
                assert text.startswith("waiting for relay default: unreachable (")
                assert "since 20" in text
                assert await line.is_visible()
                # Styled under the page's policy, and a long reply wraps on a phone.
                colour = await line.evaluate("e => getComputedStyle(e).backgroundColor")
                assert colour == "rgb(255, 244, 224)"
                width = await page.evaluate("document.documentElement.scrollWidth")
                assert width <= 390
            finally:
                await browser.close()
    finally:
        if worker.returncode is None:
            worker.send_signal(signal.SIGTERM)
            await asyncio.wait_for(worker.communicate(), 30)
