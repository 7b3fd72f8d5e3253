"""Log lines: what a process writes through the standard library or leaves uncaught is
one JSON line like ours, with no address or token in it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from hypothesis import given
from hypothesis import strategies as st

from tests.support.web import ADDRESS_PATTERN, TOKEN_PATTERN
from worker.logs import redact


def run_logging(code: str) -> tuple[list[dict[str, object]], str]:
    """Run `code` after `logs.configure(fmt="json")` in a fresh interpreter: its stdout as
    JSON lines, and its stderr."""
    program = "from worker import logs\nlogs.configure(fmt='json', level='info')\n"
    done = subprocess.run(
        [sys.executable, "-c", program + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return [json.loads(line) for line in done.stdout.splitlines()], done.stderr


def test_an_uncaught_exception_is_one_json_line_without_the_address() -> None:
    lines, stderr = run_logging("raise RuntimeError('cannot mail ann@example.com')")
    assert stderr == ""
    (line,) = lines
    assert line["event"] == "process.uncaught_exception"
    assert line["level"] == "critical"
    assert line["error_type"] == "RuntimeError"
    assert line["error"] == "cannot mail <address>"
    assert "Traceback" in str(line["exception"])
    assert "ann@example.com" not in json.dumps(line)


def test_a_librarys_exception_is_one_json_line_named_by_its_logger() -> None:
    lines, stderr = run_logging(
        """
        import logging, warnings
        logging.getLogger("arq.worker").info("not shown: below WARNING")
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError:
            logging.getLogger("arq.worker").exception("job %s failed", "j1")
        warnings.warn("a warning " + "b" * 88)
        """
    )
    assert stderr == ""
    failed, warned = lines
    assert (failed["event"], failed["logger"], failed["level"]) == (
        "job j1 failed",
        "arq.worker",
        "error",
    )
    assert failed["error_type"] == "ConnectionRefusedError"
    assert "Traceback" in str(failed["exception"])
    assert warned["logger"] == "py.warnings" and "<token>" in str(warned["event"])


@given(
    st.from_regex(r"[a-z0-9._+-]{1,20}", fullmatch=True),
    st.from_regex(r"[a-zä0-9-]{1,10}(\.[a-z0-9-]{1,10}){1,3}", fullmatch=True),
    st.text(max_size=20),
    st.text(max_size=20),
)
def test_no_address_survives_redaction(local: str, domain: str, before: str, after: str) -> None:
    text = redact(f"{before} {local}@{domain} {after}")
    assert f"{local}@{domain}" not in text
    assert ADDRESS_PATTERN.search(redact(f"<{local}@{domain}>")) is None


@given(st.from_regex(r"[A-Za-z0-9_-]{88}", fullmatch=True))
def test_no_token_survives_redaction(token: str) -> None:
    assert TOKEN_PATTERN.search(redact(f"job record_opt_out('{token}', 'web')")) is None
