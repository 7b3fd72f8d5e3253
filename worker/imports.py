"""Reading a recipients CSV as a stream of accepted rows and rejected lines.

Pure apart from reading the file: no database here. The header row must name an `email`
column; `locale` and `timezone` (an IANA name, the recipient's time zone for the
campaign's send window) are optional; every other column becomes a template variable (its name
lower-cased, other characters than letters, digits and `_` turned into `_`); a
`survey_url` column gives each recipient their own survey link.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from worker import addresses, links, locales, schedule
from worker.errors import CsvProblem, InvalidAddress, InvalidUrl

MAX_VALUE_LENGTH = 1000
# Columns of a file (email and locale included), and fields of a JSON recipient: every one
# is kept for every row, so the width of a row is bounded as its values are.
MAX_COLUMNS = 100
# Control characters but tab (C0, DEL, C1 such as NEL U+0085) and the line and paragraph
# separators U+2028 and U+2029: no message can carry NUL, the others would break a header
# (the send would then fail that invitation), and no value needs them.
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
RESERVED = frozenset({"client_name", "unsubscribe_url"})


@dataclass(frozen=True)
class Row:
    """One accepted recipient."""

    line: int
    email: str
    email_hash: bytes
    locale: str | None
    vars: dict[str, str]
    # The recipient's time zone (None: the client's).
    timezone: str | None = None


@dataclass(frozen=True)
class Rejected:
    """One rejected line, with why (never the address itself)."""

    line: int
    reason: str


def column_name(header: str) -> str:
    """The template-variable name of a CSV column."""
    return re.sub(r"[^a-z0-9_]", "_", header.strip().lower().lstrip("\ufeff"))


def _lines(
    stream: Iterable[bytes], bad: list[int], progress: Callable[[int], object]
) -> Iterator[str]:
    for number, raw in enumerate(stream, start=1):
        progress(len(raw))
        try:
            yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            bad.append(number)
            # Keep the line count of the csv reader aligned with the file.
            yield "\n"


def read_recipients(
    stream: Iterable[bytes],
    *,
    hash_key: bytes,
    progress: Callable[[int], object] = lambda _n: None,
    has_default_survey_url: bool = True,
) -> tuple[list[str], Iterator[Row | Rejected]]:
    """The template columns of the file, and its rows in order.

    Without `has_default_survey_url` (the launch gives no --survey-url) an empty
    `survey_url` cell rejects its line. Raises CsvProblem if the header is missing or has
    no `email` column.
    """
    undecodable: list[int] = []
    reader = csv.reader(_lines(stream, undecodable, progress), strict=True)
    try:
        header = [column_name(h) for h in next(reader)]
    except StopIteration:
        raise CsvProblem(
            "the file is empty: a header row with an `email` column is required"
        ) from None
    except (csv.Error, UnicodeDecodeError) as e:
        raise CsvProblem(f"the header row cannot be read: {e}") from e
    if undecodable:
        raise CsvProblem("the header row is not valid UTF-8")
    if "email" not in header:
        raise CsvProblem("the header row has no `email` column")
    if len(header) > MAX_COLUMNS:
        raise CsvProblem(f"the header row has {len(header)} columns; at most {MAX_COLUMNS}")
    if len(set(header)) != len(header):
        raise CsvProblem("two columns have the same name")
    columns = [h for h in header if h not in ("email", "locale", "timezone")]
    clash = RESERVED.intersection(columns)
    if clash:
        raise CsvProblem(f"column {sorted(clash)[0]} is reserved for the worker")
    return columns, _rows(reader, header, undecodable, hash_key, has_default_survey_url)


def _rows(
    reader: Iterator[list[str]],
    header: list[str],
    undecodable: list[int],
    hash_key: bytes,
    has_default_survey_url: bool,
) -> Iterator[Row | Rejected]:
    previous_end = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            line = previous_end + 1
            previous_end = reader.line_num  # type: ignore[attr-defined]
            yield Rejected(line, f"unreadable CSV: {e}")
            continue
        line = previous_end + 1
        previous_end = reader.line_num  # type: ignore[attr-defined]
        if undecodable and undecodable[0] <= previous_end:
            while undecodable and undecodable[0] <= previous_end:
                yield Rejected(undecodable.pop(0), "not valid UTF-8")
            continue
        if not fields or fields == [""]:
            continue
        yield check_row(
            line, header, fields, hash_key, has_default_survey_url=has_default_survey_url
        )


def check_row(
    line: int,
    header: list[str],
    fields: list[str],
    hash_key: bytes,
    *,
    has_default_survey_url: bool = True,
) -> Row | Rejected:
    """Validate one CSV record."""
    if len(fields) != len(header):
        return Rejected(line, f"expected {len(header)} fields, found {len(fields)}")
    record = dict(zip(header, fields, strict=True))
    for value in fields:
        if CONTROL.search(value):
            return Rejected(line, "a value contains a line break or control character")
        if len(value) > MAX_VALUE_LENGTH:
            return Rejected(line, f"a value is longer than {MAX_VALUE_LENGTH} characters")
    survey_url = record.get("survey_url")
    if survey_url:
        try:
            links.check_survey_url(survey_url)
        except InvalidUrl as e:
            return Rejected(line, f"survey_url {e.reason}")
    elif survey_url is not None and not has_default_survey_url:
        return Rejected(line, "survey_url is empty and no --survey-url was given")
    try:
        email = addresses.normalise(record.pop("email"))
    except InvalidAddress as e:
        return Rejected(line, f"invalid address: {e.reason}")
    given = record.pop("locale", "")
    locale = locales.parse(given)
    if given.strip() and locale is None:
        return Rejected(line, "locale must be two letters, e.g. en")
    timezone = record.pop("timezone", "").strip() or None
    if timezone is not None:
        try:
            schedule.zone(timezone)
        except schedule.ScheduleError as e:
            return Rejected(line, f"timezone: {e}")
    return Row(line, email, addresses.address_hash(hash_key, email), locale, record, timezone)
