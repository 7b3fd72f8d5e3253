"""Whether DMARC can pass for a client's mail through each relay of its route, from what
DNS says about its domain (pure): DKIM aligned (RFC 7489 section 3.1.1) or SPF aligned
(section 3.1.2), the verdict, and the record the client must publish when neither is.

The DNS answers come in as values (`Facts`, gathered by `worker.sending_domain`); the
organizational domain of a name is the Public Suffix List's, as publicsuffixlist bundles it
(RFC 7489 section 3.2; never fetched at run time).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from publicsuffixlist import PublicSuffixList

from worker.relay_config import DKIM_CLIENT, Relay, variable

Result = Literal["pass", "fail", "unknown"]
Verdict = Literal["ok", "warn", "fail"]
ENFORCED = ("quarantine", "reject")
# What the client pastes for a key the relay gives it.
KEY_TEXT = '"v=DKIM1; k=rsa; p=<the public key relay {relay} gives you>"'


@functools.cache
def _suffixes() -> PublicSuffixList:
    return PublicSuffixList()


def organizational(domain: str) -> str:
    """The organizational domain of `domain`: one label below its public suffix."""
    return _suffixes().privatesuffix(domain.lower().rstrip(".")) or domain.lower()


def aligned(one: str, other: str, mode: str) -> bool:
    """Whether two domains align: equal (`s`, strict) or sharing their organizational
    domain (`r`, relaxed)."""
    if mode == "s":
        return one.lower() == other.lower()
    return organizational(one) == organizational(other)


@dataclass(frozen=True)
class Dmarc:
    """The DMARC record that applies to the From: domain, or why none could be read."""

    record: str | None = None
    location: str | None = None
    policy: str | None = None  # the one for the From: domain: p, or sp from its parent
    adkim: str = "r"
    aspf: str = "r"
    trouble: str | None = None  # the lookup failed (timeout, SERVFAIL): unknown
    invalid: str | None = None  # a record that does not parse, which counts as none

    def as_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "record": self.record,
            "location": self.location,
            "adkim": self.adkim,
            "aspf": self.aspf,
            "trouble": self.trouble,
            "invalid": self.invalid,
        }


@dataclass(frozen=True)
class Spf:
    """The envelope domain's SPF record: the mechanisms that pass, reachable through its
    includes; `error` when it cannot pass (permerror: over 10 lookups, two records)."""

    domain: str
    record: str | None = None
    terms: frozenset[str] = frozenset()
    error: str | None = None
    trouble: str | None = None

    def covers(self, mechanism: str) -> bool:
        """Whether a mechanism of the record (or its includes) authorises `mechanism`: the
        same mechanism, or for ip4:/ip6: a network that holds the relay's."""
        if mechanism in self.terms:
            return True
        kind, _, value = mechanism.partition(":")
        if kind not in ("ip4", "ip6"):
            return False
        wanted = ipaddress.ip_network(value, strict=False)
        for term in self.terms:
            their_kind, _, their_value = term.partition(":")
            if their_kind != kind:
                continue
            try:
                network = ipaddress.ip_network(their_value, strict=False)
            except ValueError:
                continue
            if wanted.version == network.version and wanted.subnet_of(network):  # type: ignore[arg-type]
                return True
        return False

    def with_mechanism(self, mechanism: str) -> str:
        """The record with `mechanism` added before its `all` (or a new one)."""
        if self.record is None:
            return f"v=spf1 {mechanism} ~all"
        terms = self.record.split()
        at = next(
            (i for i, t in enumerate(terms) if t.lstrip("+-~?").lower() in ("all",)),
            len(terms),
        )
        return " ".join([*terms[:at], mechanism, *terms[at:]])


@dataclass(frozen=True)
class Dkim:
    """The client's DKIM key at SELECTOR._domainkey.DOMAIN."""

    selector: str | None
    name: str | None = None
    found: bool = False
    trouble: str | None = None


@dataclass(frozen=True)
class Facts:
    """What DNS says about a client's sending domain."""

    client_id: str
    domain: str
    envelope_domain: str
    dmarc: Dmarc
    spf: Spf
    dkim: Dkim


@dataclass(frozen=True)
class Check:
    result: Result
    detail: str

    def as_json(self) -> dict[str, str]:
        return {"result": self.result, "detail": self.detail}


@dataclass(frozen=True)
class RelayVerdict:
    """One relay of the route: its DKIM and SPF, whether DMARC can pass, the fix."""

    name: str
    dkim: Check
    spf: Check
    aligned: bool
    fix: str | None

    @property
    def unknown(self) -> bool:
        return not self.aligned and "unknown" in (self.dkim.result, self.spf.result)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dkim": self.dkim.as_json(),
            "spf": self.spf.as_json(),
            "aligned": self.aligned,
            "fix": self.fix,
        }


def dkim_check(relay: Relay, facts: Facts) -> Check:
    """Whether `relay`'s DKIM signature aligns with the From: domain."""
    if relay.dkim is None:
        return Check("unknown", f"{variable(relay.name, 'DKIM')} is not set")
    if relay.dkim != DKIM_CLIENT:
        if aligned(relay.dkim, facts.domain, facts.dmarc.adkim):
            return Check("pass", f"signs as {relay.dkim}, aligned with {facts.domain}")
        return Check("fail", f"signs as {relay.dkim}, not aligned with {facts.domain}")
    key = facts.dkim
    if key.selector is None:
        return Check("fail", "signs with the client's key, but the client has no DKIM selector")
    if key.trouble is not None:
        return Check("unknown", f"{key.name}: DNS lookup failed: {key.trouble}")
    if key.found:
        return Check("pass", f"key at {key.name}")
    return Check("fail", f"no key at {key.name}")


def spf_check(relay: Relay, facts: Facts) -> Check:
    """Whether `relay` passes the envelope domain's SPF, aligned with the From: domain."""
    spf = facts.spf
    if relay.spf is None:
        return Check("unknown", f"{variable(relay.name, 'SPF')} is not set")
    if not aligned(spf.domain, facts.domain, facts.dmarc.aspf):
        return Check("fail", f"the envelope domain {spf.domain} is not aligned with {facts.domain}")
    if spf.trouble is not None:
        return Check("unknown", f"{spf.domain}: DNS lookup failed: {spf.trouble}")
    if spf.error is not None:
        return Check("fail", f"{spf.domain}'s SPF: {spf.error}")
    if spf.record is None:
        return Check("fail", f"{spf.domain} publishes no SPF record")
    if spf.covers(relay.spf):
        return Check("pass", f"{spf.domain}'s SPF holds {relay.spf}")
    return Check("fail", f"{spf.domain}'s SPF does not hold {relay.spf}")


def fix_for(relay: Relay, facts: Facts, client_id: str) -> str:
    """The DNS record (or setting) that would let DMARC pass through `relay`."""
    key = KEY_TEXT.format(relay=relay.name)
    if relay.dkim == DKIM_CLIENT:
        if facts.dkim.selector is None:
            return (
                f"survey-worker client update {client_id} --dkim-selector SELECTOR, then "
                f"publish SELECTOR._domainkey.{facts.domain} TXT {key}"
            )
        return f"publish {facts.dkim.name} TXT {key}"
    spf = facts.spf
    if relay.spf is not None and aligned(spf.domain, facts.domain, facts.dmarc.aspf):
        if spf.error is not None:
            return (
                f"{spf.domain}'s SPF fails ({spf.error}): publish one record of at most 10 "
                f"lookups that holds {relay.spf}"
            )
        return f'publish {spf.domain} TXT "{spf.with_mechanism(relay.spf)}"'
    if relay.dkim is None or relay.spf is None:
        return (
            f"set {variable(relay.name, 'DKIM')} and {variable(relay.name, 'SPF')} to say "
            f"how relay {relay.name} authenticates mail, then check again"
        )
    return (
        f"relay {relay.name} signs as {relay.dkim} and the envelope domain {spf.domain} is "
        f"not aligned with {facts.domain}: have it sign with {facts.domain}'s key "
        f"({variable(relay.name, 'DKIM')}=client, a selector with --dkim-selector) and "
        f"publish SELECTOR._domainkey.{facts.domain} TXT {key}"
    )


def judge_relay(relay: Relay, facts: Facts) -> RelayVerdict:
    """DMARC passes for `relay` when its DKIM or its SPF passes aligned."""
    dkim, spf = dkim_check(relay, facts), spf_check(relay, facts)
    passes = "pass" in (dkim.result, spf.result)
    troubled = (
        not passes
        and "unknown" in (dkim.result, spf.result)
        and (facts.dkim.trouble is not None or facts.spf.trouble is not None)
    )
    fix = None if passes or troubled else fix_for(relay, facts, facts.client_id)
    return RelayVerdict(relay.name, dkim, spf, passes, fix)


def verdict(dmarc: Dmarc, relays: Sequence[RelayVerdict]) -> tuple[Verdict, list[str]]:
    """`fail`: DMARC is enforced (quarantine or reject) and no relay of the route aligns,
    none being unknown; `warn`: the DMARC lookup failed, no DMARC record, p=none with a
    relay unaligned, a relay unknown, or some relays of an enforced policy unaligned;
    else `ok`. With the reasons, one a line."""
    reasons = []
    if dmarc.trouble is not None:
        reasons.append(f"the DMARC lookup failed: {dmarc.trouble}")
    elif dmarc.invalid is not None:
        reasons.append(f"the DMARC record is invalid: {dmarc.invalid}")
    elif dmarc.policy is None:
        reasons.append("no DMARC record: Gmail, Yahoo and Microsoft require one of bulk senders")
    unknown = [r for r in relays if r.unknown]
    unaligned = [r for r in relays if not r.aligned and not r.unknown]
    reasons += [f"relay {r.name}: unknown ({r.dkim.detail}; {r.spf.detail})" for r in unknown]
    reasons += [f"relay {r.name}: not aligned" for r in unaligned]
    enforced = dmarc.trouble is None and dmarc.policy in ENFORCED
    if enforced and unaligned and not unknown and len(unaligned) == len(relays):
        return "fail", reasons
    return ("warn" if reasons else "ok"), reasons
