"""A person unsubscribes in a real browser: Debian's Chromium, driven by Playwright.

The link comes out of a message the test SMTP server received; the page is served by the
real app on uvicorn. Nothing is downloaded at run time: Playwright drives the system
Chromium (`.ci/run` installs it with apt when it is missing).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from playwright.async_api import async_playwright

from tests.support.pipeline import add_client, csv_of, launch, received_by, run_workers
from tests.support.smtp import RecordingHandler
from tests.support.system import missing
from tests.support.web import private_logs, serving, unsubscribe_link
from worker.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")
# As root and on a machine without network: no sandbox, nothing fetched in the background.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(autouse=True)
def logs() -> Iterator[list[dict[str, Any]]]:
    with private_logs() as captured:
        yield captured


@pytest.fixture
def chromium() -> Path:
    """The system Chromium; missing, it fails the test in CI and skips it elsewhere."""
    if CHROMIUM.exists():
        return CHROMIUM
    missing(f"{CHROMIUM} is missing: apt-get install chromium chromium-driver")


async def test_a_person_unsubscribes_in_a_real_browser_and_is_suppressed_next_time(
    pg: asyncpg.Pool,
    settings: Settings,
    smtp: tuple[RecordingHandler, int],
    chromium: Path,
    tmp_path: Path,
) -> None:
    await add_client(pg, "acme", "Acme Research")
    async with serving(settings) as base:
        local = settings.model_copy(update={"public_base_url": base})
        rows = "email,first_name,locale\nann@example.com,Ann,nl\nbob@example.com,Bob,en\n"
        await launch(pg, local, rows)
        await run_workers(local)
        message = next(m for m in smtp[0].messages if m.recipients == ("ann@example.com",))
        link = unsubscribe_link(message)
        assert link.startswith(f"{base}/unsubscribe/")

        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=str(chromium), args=CHROMIUM_ARGS
            )
            try:
                page = await browser.new_page()
                response = await page.goto(link)
                assert response is not None and response.status == 200
                assert await page.get_attribute("html", "lang") == "nl"
                assert await page.text_content("h1") == "Afmelden"
                assert "Acme Research" in (await page.text_content("main") or "")
                await page.screenshot(path=tmp_path / "confirm.png")
                assert await pg.fetchval("SELECT count(*) FROM client_opt_outs") == 0

                async with page.expect_navigation() as navigation:
                    await page.get_by_role("button", name="Afmelden").click()
                result = await navigation.value
                assert result is not None and result.status == 200
                assert result.request.method == "POST"
                assert result.request.redirected_from is None
                assert page.url == link
                assert await page.text_content("h1") == "U bent afgemeld"
                assert "Acme Research" in (await page.text_content("main") or "")
                assert await page.context.cookies() == []
                await page.screenshot(path=tmp_path / "done.png")
            finally:
                await browser.close()

    row = await pg.fetchrow("SELECT email, source FROM client_opt_outs WHERE client_id = 'acme'")
    assert tuple(row) == ("ann@example.com", "web")
    smtp[0].messages.clear()
    again = await launch(pg, settings, csv_of("ann@example.com", "carol@example.com"))
    await run_workers(settings)
    states = await pg.fetch(
        "SELECT email, state, reason FROM invitations WHERE campaign_id = $1", again.campaign_id
    )
    assert {(r["email"], r["state"], r["reason"]) for r in states} == {
        ("ann@example.com", "suppressed", "client_opt_out"),
        ("carol@example.com", "sent", None),
    }
    assert received_by(smtp[0].messages) == {"carol@example.com": 1}
