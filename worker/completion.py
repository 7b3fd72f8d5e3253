"""Completion: the survey platform's word that an invitation was answered.

It arrives as `POST /webhooks/completion` (signed as Standard Webhooks do) or through
`survey-worker complete`, and names invitations by their survey reference: the `r=` value
of the survey link (`links.survey_ref`, a keyed HMAC of the invitation id, 16 characters
of base64url). An answered invitation gets `invitations.completed_at`, set once (the first
completion wins), and reminders skip it.

A reference cannot be decoded, and Postgres cannot compute one without the key, so the
references are kept in `survey_refs` (the first 8 bytes of each, as a bigint, by
invitation). They are computed here, a campaign at a time, the first time a reference is
not found and some campaign has not been indexed yet (`survey_ref_campaigns`): a campaign's
invitations are imported in one transaction, so once its row is visible, all of them are.
A match on the 8 bytes is confirmed with the whole reference.

The first part of this module is pure (the signature check, the body and the references);
the second reads and writes the ledger.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import orjson
import structlog

from worker import addresses, ledger, links
from worker.db import Conn
from worker.errors import Malformed, SurveyWorkerError, Unauthenticated
from worker.records import Completed

log = structlog.get_logger("worker.completion")

# Standard Webhooks: a timestamp further than this from our clock is refused (replays).
TOLERANCE_SECONDS = 300
# A completion body names a few references; 64 KiB holds over 2,000 of them.
MAX_BODY = 64 * 1024
MAX_REFS = 1000
MAX_WEBHOOK_ID = 256
# What a webhook id may hold: printable ASCII without spaces (it is stored, and Postgres
# text cannot hold NUL).
_WEBHOOK_ID = re.compile(r"[\x21-\x7e]+")
# A webhook id is kept this long, longer than Standard Webhooks senders retry a message.
WEBHOOK_ID_DAYS = 7
# `links.survey_ref`: 12 bytes of HMAC-SHA256 in base64url, 16 characters, no padding.
_REF = re.compile(r"[A-Za-z0-9_-]{16}")
_SIGNATURE_VERSION = "v1"
# Invitations read, and references written, per round trip while indexing a campaign.
_INDEX_BATCH = 10_000


# --- Pure: the webhook's signature, its body, the references -----------------------------


def signed_content(webhook_id: str, timestamp: str, body: bytes) -> bytes:
    """What Standard Webhooks sign: `id.timestamp.body`, the body as received."""
    return f"{webhook_id}.{timestamp}.".encode() + body


def verify(
    key: bytes,
    *,
    webhook_id: str | None,
    timestamp: str | None,
    signatures: str | None,
    body: bytes,
    now: float,
) -> None:
    """Return if the request is signed with `key` as Standard Webhooks sign, else raise
    Unauthenticated.

    `signatures` is the `webhook-signature` header: space-separated `v1,<base64>` entries,
    any of which may verify (the sender may sign with several keys while rotating). The
    HMAC-SHA256 of `signed_content` is compared in constant time. The timestamp (Unix
    seconds) must be within TOLERANCE_SECONDS of `now`, either way.
    """
    if not webhook_id or not timestamp or not signatures:
        raise Unauthenticated("webhook-id, webhook-timestamp or webhook-signature missing")
    if len(webhook_id) > MAX_WEBHOOK_ID or not _WEBHOOK_ID.fullmatch(webhook_id):
        raise Unauthenticated("bad webhook-id")
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        raise Unauthenticated("bad webhook-timestamp")
    expected = hmac.digest(key, signed_content(webhook_id, timestamp, body), hashlib.sha256)
    if not any(hmac.compare_digest(expected, given) for given in _signatures(signatures)):
        raise Unauthenticated("no valid signature")
    # Checked once the signature holds: a stale timestamp is then a replay, not noise.
    if abs(now - int(timestamp)) > TOLERANCE_SECONDS:
        raise Unauthenticated("timestamp too old or too far in the future")


def _signatures(header: str) -> Iterator[bytes]:
    """The decoded `v1` signatures of a `webhook-signature` header (others are skipped)."""
    for entry in header.split(" ")[:16]:
        version, comma, value = entry.partition(",")
        if not comma or version != _SIGNATURE_VERSION:
            continue
        try:
            yield base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            continue


def parse_refs(body: bytes) -> list[str]:
    """The references of a completion body, `{"ref": "..."}` or `{"refs": ["...", ...]}`;
    Malformed if it is neither. A reference of another shape is kept: it is reported
    back as unknown, like any reference naming no invitation."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Malformed("the body is not JSON") from None
    if not isinstance(data, dict):
        raise Malformed("the body is not a JSON object")
    if ("ref" in data) == ("refs" in data):
        raise Malformed('the body needs either "ref" or "refs"')
    refs = [data["ref"]] if "ref" in data else data["refs"]
    if not isinstance(refs, list):
        raise Malformed('"refs" is not a list')
    if not refs:
        raise Malformed('"refs" is empty')
    if len(refs) > MAX_REFS:
        raise Malformed(f'"refs" holds more than {MAX_REFS} references')
    if not all(isinstance(r, str) and r for r in refs):
        raise Malformed("a reference is not a non-empty string")
    return refs


def ref_digest(ref: str) -> bytes | None:
    """The 12 bytes a reference of `links.survey_ref`'s shape stands for, else None."""
    if not _REF.fullmatch(ref):
        return None
    return base64.urlsafe_b64decode(ref)


@dataclass(frozen=True)
class RefLines:
    """The references of a file, one a line, and the lines that hold none."""

    refs: list[str]
    rejected: list[tuple[int, str]]  # (line number, reason)


def read_ref_lines(lines: Iterable[bytes]) -> RefLines:
    """The references of `lines` (a file opened in binary), around white space; blank
    lines are skipped, and a line that is not UTF-8 or not a reference is rejected with
    its number (from 1)."""
    refs: list[str] = []
    rejected: list[tuple[int, str]] = []
    for number, raw in enumerate(lines, 1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            rejected.append((number, "not UTF-8"))
            continue
        if not line:
            continue
        if ref_digest(line) is None:
            rejected.append((number, "not a survey reference"))
        else:
            refs.append(line)
    return RefLines(refs, rejected)


class NoReference(SurveyWorkerError):
    """A `complete` command that was given no reference to record; nothing is recorded."""


def command_refs(args: Sequence[str], lines: RefLines | None, source: str | None) -> list[str]:
    """The references a `complete` command records: its arguments, then those of the file
    `source` (`lines`), each once. NoReference for an empty argument (an unset shell
    variable, say), and when there is none at all (an empty file, or one whose every line
    was rejected, the first of which it names)."""
    if any(not arg.strip() for arg in args):
        raise NoReference("a REF is empty; nothing was recorded")
    refs = list(dict.fromkeys([*args, *(lines.refs if lines else [])]))
    if refs:
        return refs
    rejected = lines.rejected if lines else []
    shown = "".join(f"; line {n}: {reason}" for n, reason in rejected[:3])
    more = f"; {len(rejected) - 3} more rejected" if len(rejected) > 3 else ""
    raise NoReference(f"no survey reference in {source or 'the command'}{shown}{more}")


def ref_prefix(digest: bytes) -> int:
    """The signed bigint `survey_refs` stores for a reference: its first 8 bytes."""
    return int.from_bytes(digest[:8], "big", signed=True)


def ref_of(key: bytes, invitation_id: int) -> bytes:
    """The 12 bytes of the invitation's survey reference under ADDRESS_HASH_KEY."""
    return base64.urlsafe_b64decode(links.survey_ref(key, invitation_id))


# --- The ledger --------------------------------------------------------------------------


@dataclass
class CompletionReport:
    """What became of a request's references.

    Each reference counts once, however often it is given. `completed` were completed
    now; `already_completed` had been before; `unknown` (in the order given) name no
    invitation: never ours, of another shape, or purged by retention. `duplicate`: the
    webhook id was seen before, so nothing was done.
    """

    completed: list[Completed] = field(default_factory=list)
    already_completed: int = 0
    unknown: list[str] = field(default_factory=list)
    duplicate: bool = False

    def add(self, other: CompletionReport) -> None:
        """Fold in the report of another batch of the same request."""
        self.completed += other.completed
        self.already_completed += other.already_completed
        self.unknown += other.unknown

    def as_json(self) -> dict[str, object]:
        """The webhook's answer and `complete --json`'s."""
        answer: dict[str, object] = {
            "completed": len(self.completed),
            "already_completed": self.already_completed,
            "unknown": self.unknown,
        }
        if self.duplicate:
            answer["duplicate"] = True
        return answer


async def complete(
    conn: Conn, refs: Sequence[str], *, hash_key: bytes, webhook_id: str | None = None
) -> CompletionReport:
    """Set `completed_at` on the invitations `refs` name, where it is not set yet.

    With a `webhook_id` seen before (within WEBHOOK_ID_DAYS), nothing is done and the
    report says `duplicate`; a new one is recorded in the same transaction as the
    completions, so a request that failed half-way is not taken for a replay. Safe to run
    twice: the first completion wins, later ones count as already completed.
    """
    wanted = list(dict.fromkeys(refs))
    found = await _find(conn, wanted, hash_key)
    if any(ref not in found and ref_digest(ref) for ref in wanted):
        # Looked up again even when this call indexed nothing: a concurrent call may have
        # indexed the campaign between the lookup and now, or while this one waited for it.
        await index_refs(conn, hash_key=hash_key)
        found = await _find(conn, wanted, hash_key)
    ids = sorted(set(found.values()))
    async with conn.transaction():
        if webhook_id is not None and not await _first_delivery(conn, webhook_id):
            return CompletionReport(duplicate=True)
        existing, completed = await ledger.mark_completed(conn, ids)
    # Those purged by retention since the lookup (their references went with them) too.
    known = {ref for ref, invitation_id in found.items() if invitation_id in existing}
    return CompletionReport(
        completed=completed,
        already_completed=len(existing) - len(completed),
        unknown=[ref for ref in wanted if ref not in known],
    )


async def _first_delivery(conn: Conn, webhook_id: str) -> bool:
    """Record `webhook_id`; False if it was recorded before (a replay or a retry)."""
    await conn.execute(
        "DELETE FROM completion_webhooks WHERE received_at < now() - make_interval(days => $1)",
        WEBHOOK_ID_DAYS,
    )
    inserted = await conn.fetchval(
        """INSERT INTO completion_webhooks (webhook_id) VALUES ($1)
           ON CONFLICT DO NOTHING RETURNING true""",
        webhook_id,
    )
    return bool(inserted)


async def _find(conn: Conn, refs: Iterable[str], hash_key: bytes) -> dict[str, int]:
    """The invitation id of each reference found in `survey_refs`."""
    digests = {ref: d for ref in refs if (d := ref_digest(ref)) is not None}
    if not digests:
        return {}
    rows = await conn.fetch(
        "SELECT invitation_id, ref_prefix FROM survey_refs WHERE ref_prefix = ANY($1::bigint[])",
        sorted({ref_prefix(d) for d in digests.values()}),
    )
    candidates: dict[int, list[int]] = {}
    for r in rows:
        candidates.setdefault(r["ref_prefix"], []).append(r["invitation_id"])
    found = {}
    for ref, digest in digests.items():
        for invitation_id in candidates.get(ref_prefix(digest), []):
            # 8 bytes matched; the other 4 tell the rare collision apart.
            if hmac.compare_digest(ref_of(hash_key, invitation_id), digest):
                found[ref] = invitation_id
    return found


async def index_refs(conn: Conn, *, hash_key: bytes) -> None:
    """Store the survey references of every campaign not indexed yet.

    Each campaign is indexed in a transaction of its own that first claims it in
    `survey_ref_campaigns`: a concurrent call waits for that claim, then skips the
    campaign. Campaigns without a common survey link (each recipient brought their own)
    are claimed with no references.
    """
    pending = await conn.fetch(
        """SELECT c.id, c.survey_url <> '' AS has_refs FROM campaigns c
           WHERE NOT EXISTS (SELECT FROM survey_ref_campaigns s WHERE s.campaign_id = c.id)
           ORDER BY c.id"""
    )
    indexed = refs = 0
    for campaign in pending:
        async with conn.transaction():
            claimed = await conn.fetchval(
                """INSERT INTO survey_ref_campaigns (campaign_id) VALUES ($1)
                   ON CONFLICT DO NOTHING RETURNING true""",
                campaign["id"],
            )
            if not claimed:
                continue
            if campaign["has_refs"]:
                refs += await _index_campaign(conn, campaign["id"], hash_key)
            indexed += 1
    if indexed:
        log.info("completion.indexed", campaigns=indexed, refs=refs)


async def _index_campaign(conn: Conn, campaign_id: int, hash_key: bytes) -> int:
    # Reminders carry their first message's reference, and invitations with a survey_url
    # of their own show none: only first messages with the campaign's link are stored.
    cursor = await conn.cursor(
        """SELECT id FROM invitations
           WHERE campaign_id = $1 AND round = 0 AND coalesce(vars->>'survey_url', '') = ''""",
        campaign_id,
    )
    count = 0
    while rows := await cursor.fetch(_INDEX_BATCH):
        await conn.copy_records_to_table(
            "survey_refs",
            records=[(r["id"], ref_prefix(ref_of(hash_key, r["id"]))) for r in rows],
            columns=["invitation_id", "ref_prefix"],
        )
        count += len(rows)
    return count


async def completed_count(conn: Conn, campaign_id: int) -> int:
    """How many of the campaign's invitations were reported answered."""
    count: int = await conn.fetchval(
        "SELECT count(*) FROM invitations WHERE campaign_id = $1 AND completed_at IS NOT NULL",
        campaign_id,
    )
    return count


def log_completed(report: CompletionReport, *, source: str) -> None:
    """One `invitation.completed` line per invitation completed now (keyed recipient id;
    never the address or the reference), and a summary line."""
    for done in report.completed:
        log.info(
            "invitation.completed",
            campaign_id=done.campaign_id,
            client_id=done.client_id,
            invitation_id=done.invitation_id,
            recipient=addresses.recipient_id(done.email_hash),
            source=source,
        )
    log.info(
        "completion.recorded",
        source=source,
        completed=len(report.completed),
        already_completed=report.already_completed,
        unknown=len(report.unknown),
        duplicate=report.duplicate,
    )
