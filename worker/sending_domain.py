"""A client's sending domain against the relays of its route: the DNS lookups (through
DNS_RESOLVER), the stored DKIM selector, the last check (kept an hour for launches,
compared by the daily re-check), and the campaigns launched over a `fail`.

Lookups use dnspython, which tells a missing record (NXDOMAIN, no answer) from a failed
lookup (timeout, SERVFAIL): the first is an answer, the second makes the check `warn` with
its reason. checkdmarc reads the DMARC tags and evaluates SPF's includes within the limit
of 10 lookups (RFC 7208 section 4.6.4); `worker.alignment` decides (pure).
"""

from __future__ import annotations

import asyncio
import functools
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from types import ModuleType
from typing import Any

import dns.exception
import dns.nameserver
import dns.resolver
import structlog

from worker import alignment, relay_config
from worker.alignment import Dkim, Dmarc, Facts, Spf
from worker.campaigns import Client
from worker.db import Conn
from worker.errors import InvalidClient, NotFound
from worker.settings import Settings, resolver_address

log = structlog.get_logger("worker.sending_domain")

# Seconds one lookup may take (the check's lookups run side by side).
LOOKUP_SECONDS = 4.0
# A launch reuses a check this recent of the same basis.
CACHE_FOR = timedelta(hours=1)
# The daily re-check covers clients with a campaign created this recently.
RECENT_DAYS = 90
# A DKIM selector: DNS labels (RFC 6376 section 3.1).
SELECTOR_PATTERN = r"[a-z0-9][a-z0-9_-]{0,62}(\.[a-z0-9][a-z0-9_-]{0,62})*"
# DMARC's report addresses: not needed for the policy, and checkdmarc would look them up.
_REPORT_TAGS = ("rua", "ruf")


@functools.cache
def _grammar() -> tuple[ModuleType, ModuleType]:
    """checkdmarc's DMARC and SPF modules, imported when first needed: they take a third
    of a second, which the commands that check nothing need not spend."""
    with warnings.catch_warnings():
        # dnspython's DNSSEC module, which checkdmarc imports, warns that DSA is deprecated.
        warnings.simplefilter("ignore")
        from checkdmarc import dmarc, spf

    return dmarc, spf


class DnsTrouble(Exception):
    """A lookup failed (timeout, SERVFAIL, no server answered): the answer is unknown."""


@dataclass(frozen=True)
class Report:
    """One check of a client's sending domain: `client check --json`."""

    client_id: str
    domain: str
    envelope_domain: str
    selector: str | None
    dmarc: Dmarc
    relays: list[alignment.RelayVerdict]
    verdict: alignment.Verdict
    reasons: list[str]

    def as_json(self) -> dict[str, Any]:
        return {
            "client": self.client_id,
            "domain": self.domain,
            "envelope_domain": self.envelope_domain,
            "dkim_selector": self.selector,
            "dmarc": self.dmarc.as_json(),
            "relays": [r.as_json() for r in self.relays],
            "verdict": self.verdict,
            "reasons": self.reasons,
        }


def warning(result: dict[str, Any]) -> str | None:
    """What a launch prints of a `warn`, in one line; None for another verdict."""
    if result["verdict"] != "warn":
        return None
    return f"sending domain {result['domain']}: " + "; ".join(result["reasons"])


def blocker(result: dict[str, Any]) -> str | None:
    """One line for a refused launch, from a check's JSON: the domain, its policy and the
    fix; None unless the verdict is `fail`."""
    if result["verdict"] != "fail":
        return None
    fixes = "; ".join(f"{r['name']}: {r['fix']}" for r in result["relays"] if r["fix"])
    return (
        f"client {result['client']}'s sending domain {result['domain']} publishes DMARC "
        f"p={result['dmarc']['policy']} and no relay of its route aligns; fix: {fixes}"
    )


def check_selector(selector: str | None) -> str | None:
    """`selector` lower-cased, or InvalidClient when it is not a DKIM selector."""
    if selector is None:
        return None
    value = selector.strip().lower()
    if not re.fullmatch(SELECTOR_PATTERN, value) or len(value) > 200:
        raise InvalidClient(
            "--dkim-selector: DNS labels of letters, digits, '-' and '_', e.g. s1 or mail2025"
        )
    return value


def make_resolver(settings: Settings) -> dns.resolver.Resolver:
    """The resolver DNS_RESOLVER names, or the system's."""
    if settings.dns_resolver is None:
        resolver = dns.resolver.Resolver()
    else:
        address, port = resolver_address(settings.dns_resolver)
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(address, port)]
    resolver.lifetime = LOOKUP_SECONDS
    resolver.timeout = LOOKUP_SECONDS
    return resolver


def _texts(resolver: dns.resolver.Resolver, name: str) -> list[str]:
    """The TXT records at `name` (none for NXDOMAIN or no answer); DnsTrouble when the
    lookup fails."""
    try:
        answer = resolver.resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.Timeout:
        raise DnsTrouble(f"no answer within {LOOKUP_SECONDS:g} s (timeout)") from None
    except dns.resolver.NoNameservers:
        raise DnsTrouble("the resolver failed (SERVFAIL)") from None
    except dns.exception.DNSException as e:
        raise DnsTrouble(type(e).__name__) from None
    return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]


def _dmarc(resolver: dns.resolver.Resolver, domain: str) -> Dmarc:
    """The DMARC record for `domain`: its own, else its organizational domain's (RFC 7489
    section 6.6.3), whose `sp` applies to a subdomain."""
    org = alignment.organizational(domain)
    try:
        for where in dict.fromkeys([domain, org]):
            found = [t for t in _texts(resolver, f"_dmarc.{where}") if _is_dmarc(t)]
            if len(found) == 1:
                return _parsed_dmarc(found[0], where, subdomain=where != domain)
    except DnsTrouble as e:
        return Dmarc(trouble=str(e))
    return Dmarc()


def _is_dmarc(text: str) -> bool:
    return text.replace(" ", "").lower().startswith("v=dmarc1;") or text.strip() == "v=DMARC1"


def _parsed_dmarc(record: str, location: str, *, subdomain: bool) -> Dmarc:
    """`record`'s policy for the From: domain, read by checkdmarc (report tags aside);
    an invalid record is no record (RFC 7489 section 6.6.3)."""
    tags = [
        t
        for t in record.split(";")
        if t.strip() and t.split("=")[0].strip().lower() not in _REPORT_TAGS
    ]
    dmarc_grammar = _grammar()[0]
    try:
        parsed = dmarc_grammar.parse_dmarc_record("; ".join(t.strip() for t in tags), location)
    except dmarc_grammar.DMARCError as e:
        return Dmarc(record=record, location=location, invalid=str(e))
    values = {tag: v["value"] for tag, v in parsed["tags"].items()}
    explicit_sp = parsed["tags"].get("sp", {}).get("explicit", False)
    policy = values["sp"] if subdomain and explicit_sp else values["p"]
    return Dmarc(
        record=record,
        location=location,
        policy=policy,
        adkim=values.get("adkim", "r"),
        aspf=values.get("aspf", "r"),
    )


def _spf(resolver: dns.resolver.Resolver, domain: str) -> Spf:
    """The envelope domain's SPF record and the mechanisms that pass through it."""
    try:
        records = [t for t in _texts(resolver, domain) if t.lower().split(" ")[0] == "v=spf1"]
    except DnsTrouble as e:
        return Spf(domain, trouble=str(e))
    if not records:
        return Spf(domain)
    if len(records) > 1:
        return Spf(domain, records[0], error="two SPF records (permerror)")
    spf_grammar = _grammar()[1]
    try:
        parsed = spf_grammar.parse_spf_record(
            records[0], domain, resolver=resolver, timeout=LOOKUP_SECONDS, retries=0
        )
    except spf_grammar.SPFTooManyDNSLookups as e:
        lookups = (getattr(e, "data", None) or {}).get("dns_lookups", "over 10")
        return Spf(domain, records[0], error=f"needs {lookups} DNS lookups, over the limit of 10")
    except spf_grammar.SPFError as e:
        cause = e.__cause__ or e.__context__
        if isinstance(cause, dns.exception.Timeout | dns.resolver.NoNameservers):
            return Spf(domain, records[0], trouble=str(e))
        return Spf(domain, records[0], error=str(e))
    return Spf(domain, records[0], frozenset(_terms(parsed["parsed"])))


def _terms(parsed: dict[str, Any] | None) -> set[str]:
    """The mechanisms that pass in a record checkdmarc parsed, its includes' and its
    redirect's included."""
    found: set[str] = set()
    if not parsed:
        return found
    for m in parsed.get("mechanisms", []):
        if m.get("action") != "pass":
            continue
        value = str(m.get("value") or "").lower()
        found.add(f"{m['mechanism']}:{value}" if value else str(m["mechanism"]))
        found |= _terms(m.get("parsed"))
    redirect = parsed.get("redirect")
    if redirect:
        found |= _terms(redirect.get("parsed"))
    return found


def _dkim(resolver: dns.resolver.Resolver, domain: str, selector: str | None) -> Dkim:
    """The client's DKIM key at SELECTOR._domainkey.DOMAIN: found when a record there
    carries a public key (a non-empty p=, RFC 6376 section 3.6.1)."""
    if selector is None:
        return Dkim(None)
    name = f"{selector}._domainkey.{domain}"
    try:
        texts = _texts(resolver, name)
    except DnsTrouble as e:
        return Dkim(selector, name, trouble=str(e))
    for text in texts:
        tags = dict(t.strip().partition("=")[::2] for t in text.split(";") if "=" in t)
        if tags.get("p", "").strip():
            return Dkim(selector, name, found=True)
    return Dkim(selector, name)


def route_relays(settings: Settings, route: Sequence[str] | None) -> list[relay_config.Relay]:
    """The configured relays a client's route names (every relay when None)."""
    configured = relay_config.relays(settings)
    return [r for r in configured if route is None or r.name in route]


def envelope_domain(settings: Settings, domain: str) -> str:
    """The domain of the envelope sender: BOUNCE_DOMAIN with VERP on, else the From:'s."""
    return settings.bounce_domain or domain


def basis(settings: Settings, client: Client, selector: str | None) -> str:
    """What a check is of: a stored result of another basis is not reused."""
    domain = client.sender.rpartition("@")[2].lower()
    relays = ",".join(f"{r.name}:{r.spf}:{r.dkim}" for r in route_relays(settings, client.relays))
    return f"{domain}|{selector}|{envelope_domain(settings, domain)}|{relays}"


async def check(settings: Settings, client: Client, selector: str | None) -> Report:
    """Look up the client's sending domain and judge each relay of its route. The
    lookups run side by side, in threads (dnspython and checkdmarc block)."""
    domain = client.sender.rpartition("@")[2].lower().rstrip(".")
    envelope = envelope_domain(settings, domain)
    resolver = make_resolver(settings)
    dmarc, spf, dkim = await asyncio.gather(
        asyncio.to_thread(_dmarc, resolver, domain),
        asyncio.to_thread(_spf, resolver, envelope),
        asyncio.to_thread(_dkim, resolver, domain, selector),
    )
    facts = Facts(client.id, domain, envelope, dmarc, spf, dkim)
    relays = [alignment.judge_relay(r, facts) for r in route_relays(settings, client.relays)]
    verdict, reasons = alignment.verdict(dmarc, relays)
    return Report(client.id, domain, envelope, selector, dmarc, relays, verdict, reasons)


async def client_of(conn: Conn, client_id: str) -> tuple[Client, str | None]:
    """The client and its DKIM selector; NotFound when there is no such client."""
    row = await conn.fetchrow(
        """SELECT c.id, c.name, c.sender_email AS sender, c.relays, c.timezone,
                  d.dkim_selector
           FROM clients c LEFT JOIN client_domains d ON d.client_id = c.id
           WHERE c.id = $1""",
        client_id,
    )
    if row is None:
        raise NotFound(f"no client {client_id!r}; add it with `client add`")
    found = dict(row)
    selector = found.pop("dkim_selector")
    return Client(**found), selector


async def set_selector(conn: Conn, client_id: str, selector: str) -> None:
    """Set the client's DKIM selector (checked with `check_selector`); its last check no
    longer holds."""
    await conn.execute(
        """INSERT INTO client_domains (client_id, dkim_selector) VALUES ($1, $2)
           ON CONFLICT (client_id) DO UPDATE
           SET dkim_selector = excluded.dkim_selector, basis = NULL""",
        client_id,
        check_selector(selector),
    )


async def refresh(conn: Conn, settings: Settings, client_id: str) -> dict[str, Any]:
    """Check the client's sending domain now and keep the result; a verdict other than the
    last one is logged (`client.domain_changed`). The check's JSON."""
    client, selector = await client_of(conn, client_id)
    result = (await check(settings, client, selector)).as_json()
    previous = await conn.fetchval(
        """INSERT INTO client_domains (client_id, basis, verdict, result, checked_at)
           VALUES ($1, $2, $3, $4::jsonb, now())
           ON CONFLICT (client_id) DO UPDATE
           SET basis = excluded.basis, verdict = excluded.verdict,
               result = excluded.result, checked_at = excluded.checked_at
           RETURNING (SELECT verdict FROM client_domains WHERE client_id = $1)""",
        client_id,
        basis(settings, client, selector),
        result["verdict"],
        result,
    )
    if previous != result["verdict"]:
        log.warning(
            "client.domain_changed",
            client_id=client_id,
            domain=result["domain"],
            verdict=result["verdict"],
            previous=previous,
            reasons=result["reasons"],
        )
    return result


async def for_launch(conn: Conn, settings: Settings, client_id: str) -> dict[str, Any] | None:
    """The client's check for a launch: the last one when it is under an hour old and of
    the same basis (domain, selector, route, relays), else a new one. None, with no
    lookup, when there is nothing to check: no such client (the launch says so), or no
    relay of its route says how it authenticates (the check could only say `unknown`)."""
    try:
        client, selector = await client_of(conn, client_id)
    except NotFound:
        return None
    if not any(r.spf or r.dkim for r in route_relays(settings, client.relays)):
        return None
    cached = await conn.fetchval(
        """SELECT result FROM client_domains
           WHERE client_id = $1 AND basis = $2 AND checked_at > now() - $3::interval""",
        client_id,
        basis(settings, client, selector),
        CACHE_FOR,
    )
    if cached is not None:
        found: dict[str, Any] = cached
        return found
    return await refresh(conn, settings, client_id)


async def record_override(
    conn: Conn, campaign_id: int, result: dict[str, Any], **where: Any
) -> None:
    """Note, and log (`campaign.domain_override`, with `where` it came from), that campaign
    `campaign_id` was launched over its client's `fail` (noted once)."""
    await conn.execute(
        """INSERT INTO campaign_domain_overrides (campaign_id, domain, policy, fix)
           VALUES ($1, $2, $3, $4) ON CONFLICT (campaign_id) DO NOTHING""",
        campaign_id,
        result["domain"],
        result["dmarc"]["policy"],
        "; ".join(r["fix"] for r in result["relays"] if r["fix"]) or None,
    )
    log.warning(
        "campaign.domain_override",
        campaign_id=campaign_id,
        client_id=result["client"],
        domain=result["domain"],
        policy=result["dmarc"]["policy"],
        **where,
    )


async def override_of(conn: Conn, campaign_id: int) -> dict[str, Any] | None:
    """What `status` shows of a campaign launched over a `fail`, or None."""
    row = await conn.fetchrow(
        """SELECT domain, policy, fix, created_at FROM campaign_domain_overrides
           WHERE campaign_id = $1""",
        campaign_id,
    )
    if row is None:
        return None
    return {
        "domain": row["domain"],
        "policy": row["policy"],
        "fix": row["fix"],
        "at": row["created_at"].isoformat(),
    }


async def recent_clients(conn: Conn) -> list[str]:
    """The clients with a campaign created in the last RECENT_DAYS days."""
    rows = await conn.fetch(
        """SELECT DISTINCT client_id FROM campaigns
           WHERE created_at > now() - make_interval(days => $1) ORDER BY client_id""",
        RECENT_DAYS,
    )
    return [r["client_id"] for r in rows]
