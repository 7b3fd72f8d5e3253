"""The pure parts of the sending-domain check: alignment of two domains, SPF mechanisms as
SMTP_RELAY_<NAME>_SPF takes them, a record with a relay's mechanism added, DNS_RESOLVER's
address, and the verdict's rules."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.alignment import Check, Dmarc, RelayVerdict, Spf, aligned, organizational, verdict
from worker.relay_config import spf_mechanism
from worker.settings import resolver_address

label = st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True)


@settings(deadline=None)  # the first call loads the Public Suffix List
@given(label, label, label)
def test_a_subdomain_aligns_relaxed_but_not_strict(sub: str, name: str, tld: str) -> None:
    domain = f"{name}.{tld}"
    assert organizational(f"{sub}.{domain}") == organizational(domain)
    assert aligned(f"{sub}.{domain}", domain, "r")
    assert not aligned(f"{sub}.{domain}", domain, "s")
    assert aligned(domain.upper(), domain, "s")


def test_the_public_suffix_list_is_the_bundled_one() -> None:
    assert organizational("mail.example.co.uk") == "example.co.uk"
    assert not aligned("example.co.uk", "other.co.uk", "r")


@given(st.ip_addresses(v=4), st.integers(min_value=0, max_value=32))
def test_an_ip4_network_normalises_and_is_covered_by_itself(
    address: ipaddress.IPv4Address, prefix: int
) -> None:
    mechanism = spf_mechanism(f"+IP4:{address}/{prefix}")
    assert mechanism == f"ip4:{address}/{prefix}"
    network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    spf = Spf("bounces.example", "v=spf1 -all", frozenset({f"ip4:{network.supernet(0)}"}))
    assert spf.covers(mechanism)


@given(st.sampled_from(["include amazonses.com", "include:", "ip4:300.1.1.1", "ip6:10.0.0.0/8"]))
def test_what_is_not_one_mechanism_is_refused(text: str) -> None:
    assert spf_mechanism(text) is None


@given(st.lists(st.sampled_from(["ip4:192.0.2.0/24", "include:a.example", "mx"]), max_size=4))
def test_the_relay_goes_before_all(terms: list[str]) -> None:
    record = " ".join(["v=spf1", *terms, "-all"])
    added = Spf("d.example", record).with_mechanism("include:relay.example")
    assert added.split() == ["v=spf1", *terms, "include:relay.example", "-all"]


@given(st.ip_addresses(v=4), st.integers(min_value=1, max_value=65535))
def test_a_resolver_address_and_port_round_trip(address: ipaddress.IPv4Address, port: int) -> None:
    assert resolver_address(f"{address}:{port}") == (str(address), port)
    assert resolver_address(str(address)) == (str(address), 53)


def relay(name: str, dkim: str, spf: str) -> RelayVerdict:
    d, s = Check(dkim, ""), Check(spf, "")  # type: ignore[arg-type]
    return RelayVerdict(name, d, s, "pass" in (dkim, spf), None)


def test_the_verdict_rules() -> None:
    reject, none = Dmarc("v=DMARC1; p=reject", "d.example", "reject"), Dmarc(policy="none")
    unaligned, ok, unknown = (
        relay("a", "fail", "fail"),
        relay("b", "pass", "fail"),
        relay("c", "unknown", "fail"),
    )
    assert verdict(reject, [unaligned])[0] == "fail"
    assert verdict(reject, [unaligned, ok])[0] == "warn"
    assert verdict(reject, [unaligned, unknown])[0] == "warn"
    assert verdict(reject, [ok]) == ("ok", [])
    assert verdict(none, [unaligned])[0] == "warn"
    assert verdict(none, [ok])[0] == "ok"
    assert verdict(Dmarc(), [ok])[0] == "warn"
    assert verdict(Dmarc(trouble="timeout"), [unaligned])[0] == "warn"
