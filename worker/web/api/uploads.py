"""Request bodies of `POST /v1/campaigns`, read within their limits.

A CSV upload (`multipart/form-data`, field `recipients`, within API_MAX_UPLOAD_BYTES) is
streamed into a spooled temporary file (1 MB in memory, the rest on disk) as it arrives,
never held in memory; the import then streams it into Postgres as `launch` does. A JSON
body is parsed whole (it has to be, to be JSON: about 20 times its size in memory), so it
has its own, much lower limit (API_JSON_MAX_BYTES); its recipients are written out as the
same CSV, so both go through one import with one set of rules.
"""

from __future__ import annotations

import bisect
import csv
import io
import tempfile
from dataclasses import dataclass
from typing import IO, BinaryIO

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from worker.errors import Malformed
from worker.imports import MAX_COLUMNS

# Bytes of a spooled upload kept in memory before it moves to a temporary file.
SPOOL_BYTES = 1024 * 1024


@dataclass
class Upload:
    """A multipart request: the CSV file and the other fields."""

    file: BinaryIO
    filename: str | None
    fields: dict[str, str]


async def read_upload(request: Request) -> Upload:
    """Spool a multipart/form-data body: the `recipients` file and any text fields.
    Malformed when it is malformed, lacks the file, or repeats a field."""
    try:
        form = await request.form(max_files=1, max_fields=20, max_part_size=10_000)
    except (MultiPartException, HTTPException) as e:
        detail = getattr(e, "detail", None) or getattr(e, "message", "")
        raise Malformed(f"unreadable multipart/form-data body: {detail}") from e
    recipients = form.get("recipients")
    fields: dict[str, str] = {}
    for name, value in form.multi_items():
        if name == "recipients":
            continue
        if not isinstance(value, str):
            await form.close()
            raise Malformed(f"field {name}: only `recipients` may be a file")
        if name in fields:
            await form.close()
            raise Malformed(f"field {name} is given twice")
        fields[name] = value
    if not isinstance(recipients, UploadFile):
        await form.close()
        raise Malformed("multipart/form-data needs the CSV file as the field `recipients`")
    stream: BinaryIO = recipients.file
    stream.seek(0)
    return Upload(file=stream, filename=recipients.filename, fields=fields)


@dataclass
class JsonRecipients:
    """JSON recipients written out as a recipients CSV, and where each one starts."""

    file: IO[bytes]
    # The file's line on which recipient i starts (a value holding a line break spans
    # several), to report rejected lines by the recipient's position in the array.
    starts: list[int]

    def position(self, line: int) -> int:
        """The 1-based position in `recipients` of the recipient on CSV line `line`."""
        return bisect.bisect_right(self.starts, line)


def recipients_csv(recipients: list[dict[str, str]]) -> JsonRecipients:
    """A recipients CSV of `recipients`: the header is `email` and every other key in
    the order they first appear; a recipient without a key gets an empty cell.

    Malformed, before anything is written, when a recipient has more than MAX_COLUMNS
    fields or all of them name more than MAX_COLUMNS (every row gets every column).
    """
    columns: dict[str, None] = {"email": None}
    for position, recipient in enumerate(recipients, start=1):
        if len(recipient) > MAX_COLUMNS:
            raise Malformed(
                f"recipient {position} has {len(recipient)} fields; at most {MAX_COLUMNS}"
            )
        columns.update(dict.fromkeys(recipient))
        if len(columns) > MAX_COLUMNS:
            raise Malformed(
                f"the recipients name more than {MAX_COLUMNS} distinct fields "
                f"(from recipient {position} on)"
            )
    header = list(columns)
    out: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
    writer = csv.writer(text)
    writer.writerow(header)
    line = 2
    starts = []
    for recipient in recipients:
        row = [recipient.get(column, "") for column in header]
        if not any(row):
            # A blank line would be skipped by the import: this one must be reported
            # (an email of one space is an invalid address, like a missing one).
            row[0] = " "
        starts.append(line)
        writer.writerow(row)
        line += sum(cell.count("\n") for cell in row) + 1
    text.detach()
    out.seek(0)
    return JsonRecipients(out, starts)
