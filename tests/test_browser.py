"""A person unsubscribes in a real browser: Debian's Chromium, driven by Playwright.

The link comes out of a message the test SMTP server received; the page is served by the
real app on uvicorn. Nothing is downloaded at run time: Playwright drives the system
Chromium (`.ci/run` installs it with apt when it is missing). The pages are looked at on a
desktop and on a 390-px phone; `UPDATE_SCREENSHOTS=1` saves what the browser sees under
docs/screenshots/ (else under the test's temporary folder).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from playwright.async_api import async_playwright

from tests.support.pipeline import add_client, csv_of, launch, received_by, run_workers
from tests.support.smtp import RecordingHandler
from tests.support.system import missing
from tests.support.web import private_logs, serving, token_for, token_id, unsubscribe_link
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


SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
# The widths pages are looked at: a desktop, and a 390-px phone (an iPhone 12 to 15's).
VIEWPORTS = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}


def screenshots(tmp_path: Path) -> Path:
    """Where screenshots go: docs/screenshots/ with UPDATE_SCREENSHOTS=1, else `tmp_path`."""
    folder = SCREENSHOTS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder


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


async def test_the_pages_keep_a_margin_on_a_phone_and_the_invalid_link_page_offers_a_contact(
    pg: asyncpg.Pool, settings: Settings, chromium: Path, tmp_path: Path
) -> None:
    await add_client(pg, "acme", "Acme Research")
    local = settings.model_copy(update={"privacy_contact": "mailto:privacy@acme.example"})
    token = token_for(local, "ann@example.com", await token_id(pg, "acme"))
    folder = screenshots(tmp_path)
    async with serving(local) as base, async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS
        )
        try:
            for name, viewport in VIEWPORTS.items():
                width = viewport["width"]
                page = await browser.new_page(viewport=viewport)
                for shot, path in (("unsubscribe", token), ("invalid-link", "not-a-token")):
                    await page.goto(f"{base}/unsubscribe/{path}")
                    card = await page.locator("main").bounding_box()
                    assert card is not None
                    # The card never touches the screen's edges: a margin on both sides.
                    left, right = card["x"], width - (card["x"] + card["width"])
                    assert left >= 12 and right >= 12, (name, shot, left, right)
                    scroll_width = await page.evaluate("document.documentElement.scrollWidth")
                    assert scroll_width <= width, (name, shot)
                    await page.screenshot(path=folder / f"{shot}-{name}.png", full_page=True)
                # The invalid-link page's way out, in each of its three languages.
                contact = page.get_by_role("link", name="privacy@acme.example")
                assert await contact.count() == 3
                assert await contact.first.get_attribute("href") == "mailto:privacy@acme.example"
                box = await contact.first.bounding_box()
                assert box is not None and box["x"] + box["width"] <= width
                assert "contact" in (await page.locator("p.contact").first.inner_text()).lower()
                await page.close()
        finally:
            await browser.close()
