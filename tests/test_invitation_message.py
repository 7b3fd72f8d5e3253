"""The invitation as a recipient gets it: delivered by the real pipeline (Postgres, arq,
aiosmtpd), parsed as a mail client would, and its HTML shown in the real Chromium.

It names the research firm (`FIRM_NAME`), carries a `Feedback-ID`, and its call to action
is a table-based button whose link is the survey URL, which the text part still shows.
`UPDATE_SCREENSHOTS=1` saves the browser's screenshots under docs/screenshots/.
"""

from __future__ import annotations

import os
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path

import asyncpg
from playwright.async_api import async_playwright

from tests.support.pipeline import add_client, launch, parse, run_workers
from tests.support.smtp import RecordingHandler
from tests.test_browser import CHROMIUM_ARGS, chromium  # noqa: F401  (the fixture)
from worker import links
from worker.settings import Settings

SMTP = tuple[RecordingHandler, int]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
# A firm name that needs HTML escaping, French elision and a slug.
FIRM = "Études Dupont & Fils"
FIRM_SLUG = "etudes-dupont-fils"
# How each locale's body says that the client asked the firm to invite the recipient.
ASKED = {
    "en": f"has asked {FIRM} to invite you",
    "nl": f"heeft {FIRM} gevraagd u uit te nodigen",
    "fr": f"a demandé à {FIRM} de vous inviter",
}
SIGNED = {
    "en": f"The research team at {FIRM}, on behalf of Acme Research",
    "nl": f"Het onderzoeksteam van {FIRM}, namens Acme Research",
    "fr": f"L'équipe de recherche d'{FIRM}, pour le compte d'Acme Research",
}
BUTTON = 'table[role="presentation"] td[bgcolor] > a'


class _Reader(HTMLParser):
    """What a reader sees of an HTML body (its text, outside <head>), and the links of
    the buttons: each `<a>` directly in a `<td bgcolor>` of a `<table role="presentation">`."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.buttons: list[tuple[str, str]] = []
        self._open: list[tuple[str, dict[str, str | None]]] = []
        self._button: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "a" and len(self._open) >= 3:
            td, table = (
                self._open[-1],
                next((e for e in reversed(self._open) if e[0] == "table"), ("", {})),
            )
            if td[0] == "td" and td[1].get("bgcolor") and table[1].get("role") == "presentation":
                self._button = [attributes.get("href") or ""]
        if tag not in ("br", "meta", "hr", "img"):
            self._open.append((tag, attributes))

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._button is not None:
            href, *label = self._button
            self.buttons.append((href, " ".join("".join(label).split())))
            self._button = None
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        if any(tag in ("head", "title") for tag, _ in self._open):
            return
        self.text.append(data)
        if self._button is not None:
            self._button.append(data)


def read_html(message: EmailMessage) -> _Reader:
    part = message.get_body(("html",))
    assert part is not None
    reader = _Reader()
    reader.feed(part.get_content())
    reader.close()
    return reader


def text_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def squeezed(text: str) -> str:
    return " ".join(text.split())


async def test_every_invitation_names_the_firm_and_carries_a_button_and_a_feedback_id(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP
) -> None:
    local = settings.model_copy(update={"firm_name": FIRM})
    await add_client(pg, "acme", "Acme Research")
    rows = "email,first_name,locale\nann@example.com,Ann,en\nzoe@example.com,Zoë,nl\n"
    survey = await launch(pg, local, rows + "eloise@example.com,Éloïse,fr\n")
    marketing = await launch(
        pg, local, "email\nmark@example.com\n", kind="marketing", template="marketing"
    )
    await run_workers(local)

    ids = {
        r["email"]: (r["campaign_id"], r["id"])
        for r in await pg.fetch("SELECT email, campaign_id, id FROM invitations")
    }
    messages = {m.recipients[0]: parse(m) for m in smtp[0].messages}
    assert set(messages) == set(ids)
    for address, message in messages.items():
        campaign_id, invitation_id = ids[address]
        survey_url = links.survey_link(
            "https://survey.test/s", links.survey_ref(local.hash_key(), invitation_id)
        )
        kind = "marketing" if campaign_id == marketing.campaign_id else "survey"
        assert message.get_all("Feedback-ID") == [f"{campaign_id}:acme:{kind}:{FIRM_SLUG}"]

        html, text = read_html(message), text_of(message)
        label = html.buttons[0][1] if html.buttons else None
        assert html.buttons == [(survey_url, label)], address
        assert label, address
        assert survey_url in text.split()
        assert FIRM in squeezed(text)
        assert FIRM in squeezed("".join(html.text))

    assert survey.campaign_id != marketing.campaign_id
    for locale, address in [
        ("en", "ann@example.com"),
        ("nl", "zoe@example.com"),
        ("fr", "eloise@example.com"),
    ]:
        for body in (text_of(messages[address]), "".join(read_html(messages[address]).text)):
            assert ASKED[locale] in squeezed(body), locale
            assert SIGNED[locale] in squeezed(body), locale
    assert "which Études Dupont & Fils sends on their behalf" in squeezed(
        text_of(messages["mark@example.com"])
    )


async def test_the_default_firm_is_named_and_ends_the_feedback_id(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP
) -> None:
    await add_client(pg, "acme", "Acme Research")
    report = await launch(pg, settings, "email\nann@example.com\n")
    await run_workers(settings)

    message = parse(smtp[0].messages[0])
    assert message["Feedback-ID"] == f"{report.campaign_id}:acme:survey:survey-research"
    assert "has asked Survey Research to invite you" in squeezed(text_of(message))


async def test_the_button_fits_a_desktop_and_a_phone_in_chromium(
    pg: asyncpg.Pool,
    settings: Settings,
    smtp: SMTP,
    chromium: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    await add_client(pg, "acme", "Acme Research")
    await launch(pg, settings, "email,first_name\nann@example.com,Ann\n")
    await run_workers(settings)
    message = parse(smtp[0].messages[0])
    part = message.get_body(("html",))
    assert part is not None
    html = part.get_content()
    survey_url = read_html(message).buttons[0][0]
    folder = SCREENSHOTS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS
        )
        try:
            for name, width, height in [("desktop", 1280, 900), ("phone", 390, 844)]:
                page = await browser.new_page(viewport={"width": width, "height": height})
                await page.set_content(html)
                button = page.locator(BUTTON)
                assert await button.count() == 1
                assert await button.get_attribute("href") == survey_url
                assert await button.inner_text() == "Start the survey"
                box = await button.bounding_box()
                assert box is not None
                assert box["x"] >= 0 and box["x"] + box["width"] <= width, name
                assert box["y"] >= 0 and box["y"] + box["height"] <= height, name
                assert box["height"] >= 44 and box["width"] >= 44, name
                # The whole message fits the width: nothing to scroll sideways.
                scroll_width = await page.evaluate("document.documentElement.scrollWidth")
                assert scroll_width <= width, name
                # The button is what a tap there reaches.
                hit = await page.evaluate(
                    "([x, y]) => document.elementFromPoint(x, y).closest('a')?.href",
                    [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2],
                )
                assert hit == survey_url, name
                await page.screenshot(path=folder / f"invitation-{name}.png", full_page=True)
                await page.close()
        finally:
            await browser.close()
