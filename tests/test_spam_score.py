"""The default templates' messages look legitimate to a mailbox provider: SpamAssassin's
local rules (`spamassassin -L -t`, Debian package `spamassassin`) score each of them 0.

The messages are the ones the real pipeline delivered to the test SMTP server: every
locale of the survey template and the marketing template.
"""

from __future__ import annotations

import asyncio
import re
import shutil

import asyncpg
import pytest

from tests.support.pipeline import add_client, launch, run_workers
from tests.support.smtp import RecordingHandler
from tests.support.system import missing
from worker.settings import Settings

SMTP = tuple[RecordingHandler, int]
SCORE = re.compile(rb"^X-Spam-Status: \w+, score=(-?[\d.]+)", re.MULTILINE)


@pytest.fixture
def spamassassin() -> str:
    """The system SpamAssassin; missing, it fails the test in CI and skips it elsewhere."""
    path = shutil.which("spamassassin")
    if path is not None:
        return path
    missing("spamassassin is missing: apt-get install spamassassin")


async def spam_score(spamassassin: str, message: bytes) -> float:
    """SpamAssassin's score for `message` with local rules only (no network tests)."""
    process = await asyncio.create_subprocess_exec(
        spamassassin,
        "-L",
        "-t",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    report, _ = await process.communicate(message)
    match = SCORE.search(report)
    assert match is not None, report[-2000:]
    return float(match.group(1))


async def test_default_templates_score_zero_in_every_locale(
    pg: asyncpg.Pool, settings: Settings, smtp: SMTP, spamassassin: str
) -> None:
    await add_client(pg, "acme", "Acme Research")
    survey = (
        "email,first_name,locale\n"
        "ann@example.com,Ann,en\n"
        "zoe@example.com,Zoë,nl\n"
        "eloise@example.com,Éloïse,fr\n"
    )
    await launch(pg, settings, survey)
    await launch(
        pg,
        settings,
        "email,first_name\nmark@example.com,Mark\n",
        kind="marketing",
        template="marketing",
    )
    await run_workers(settings)

    messages = {m.recipients[0]: m.data for m in smtp[0].messages}
    assert set(messages) == {
        "ann@example.com",
        "zoe@example.com",
        "eloise@example.com",
        "mark@example.com",
    }
    scores = await asyncio.gather(*(spam_score(spamassassin, m) for m in messages.values()))
    assert dict(zip(messages, scores, strict=True)) == dict.fromkeys(messages, 0.0)
