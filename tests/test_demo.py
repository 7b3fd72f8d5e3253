"""`survey-worker demo`, run as a user runs it: the links in the saved messages lead to a web
app that stops with the demo, or, with `--serve`, stays up until Ctrl-C."""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import re
import signal
from pathlib import Path

import httpx

from tests.support.web import cli, start_cli
from worker.settings import Settings

DEMO_TIMEOUT = 180.0


def unsubscribe_links(output: Path) -> list[str]:
    """The List-Unsubscribe URL of every message the demo saved."""
    parser = email.parser.BytesParser(policy=email.policy.default)
    return [
        str(parser.parsebytes(path.read_bytes(), headersonly=True)["List-Unsubscribe"]).strip("<>")
        for path in sorted(output.glob("*.eml"))
    ]


async def test_the_demo_ends_by_saying_how_to_keep_its_pages_up(
    settings: Settings, tmp_path: Path
) -> None:
    output = tmp_path / "demo-mail"
    done = await cli(settings, "demo", "--output", str(output), timeout=DEMO_TIMEOUT)
    assert done.code == 0, done.stderr
    last = done.stdout.rstrip().splitlines()[-1]
    assert last == (
        f"The web app stopped with the demo: the links in {output}/ lead nowhere now. "
        "To keep its pages up, run `survey-worker demo --serve` (Ctrl-C stops it)."
    )
    link = unsubscribe_links(output)[0]
    async with httpx.AsyncClient() as client:
        try:
            await client.get(link)
        except httpx.ConnectError:
            pass
        else:
            raise AssertionError(f"{link} still answers after the demo")


async def test_demo_serve_keeps_the_links_working_until_ctrl_c(
    settings: Settings, tmp_path: Path
) -> None:
    output = tmp_path / "demo-mail"
    process = await start_cli(settings, "demo", "--serve", "--output", str(output), ctrl_c=True)
    assert process.stdout is not None
    try:
        seen = []
        async with asyncio.timeout(DEMO_TIMEOUT):
            while not (seen and "Ctrl-C stops the web app" in seen[-1]):
                line = (await process.stdout.readline()).decode()
                assert line, "the demo ended before serving: " + "".join(seen)
                seen.append(line)
        serving = re.search(r" on (http://127\.0\.0\.1:\d+);", seen[-1])
        assert serving is not None, seen[-1]
        links = unsubscribe_links(output)
        assert len(links) == 23  # 22 of the first campaign, 1 of the follow-up
        async with httpx.AsyncClient() as client:
            for link in (links[0], links[-1]):
                assert link.startswith(serving.group(1) + "/unsubscribe/")
                page = await client.get(link)
                assert page.status_code == 200
                assert "<form" in page.text
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(60):
            rest, _ = await process.communicate()
        assert process.returncode == 0, rest
        assert rest.decode().splitlines()[-1] == "stopping"
        async with httpx.AsyncClient() as client:
            try:
                await client.get(links[0])
            except httpx.ConnectError:
                pass
            else:
                raise AssertionError("the web app still answers after Ctrl-C")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
