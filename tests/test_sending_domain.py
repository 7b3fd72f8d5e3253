"""Sending domains against a real authoritative DNS server on a loopback port
(tests/support/dns_server.py): `client check [--json]`, launch refused on `fail` (CLI and
API) unless overridden, `warn` printed and launched, the hour's cache, the daily re-check,
the gauge and /ops. Through the installed commands and the API only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr

from tests.support.dns_server import serving, silent
from tests.support.web import CliResult, cli, launch_args
from tests.support.web import serving as web_app
from worker import passwords, queue
from worker.settings import Settings

# A 1024-bit RSA public key as DKIM publishes it (any non-empty p= is a key to the check).
KEY = (
    "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDDmzRmJRQxLEuyYiyMg4suA2Sy"
    "MwR5MGHpP9diNT1hRiwUd/mZp1ro7kIDTKS8ttkI6z6eTRW9e9dDOxzSxNuXmume60Cjbu08gOyhPG3GfWdg"
    "7QkdN6kR4V75MFlw624VY35DaXBvnlTJTgRg/EW72O1DiYVThkyCgpSYS8nmEQIDAQAB"
)
LOOKUPS = 11
ZONE: dict[str, list[tuple[str, str]]] = {
    # Aligned by DKIM: the relay signs with the client's key, published at s1.
    "aligned.example": [("A", "192.0.2.10")],
    "_dmarc.aligned.example": [("TXT", "v=DMARC1; p=reject; rua=mailto:dmarc@aligned.example")],
    "s1._domainkey.aligned.example": [("TXT", KEY)],
    # The same without the key.
    "nokey.example": [("A", "192.0.2.11")],
    "_dmarc.nokey.example": [("TXT", "v=DMARC1; p=reject")],
    # Aligned by SPF through BOUNCE_DOMAIN (bounces.spf.example), which includes the relay.
    "spf.example": [("A", "192.0.2.12")],
    "_dmarc.spf.example": [("TXT", "v=DMARC1; p=quarantine")],
    "bounces.spf.example": [("TXT", "v=spf1 include:spf.relay.example -all")],
    "spf.relay.example": [("TXT", "v=spf1 ip4:198.51.100.0/24 -all")],
    # p=none, unaligned.
    "none.example": [("A", "192.0.2.13")],
    "_dmarc.none.example": [("TXT", "v=DMARC1; p=none")],
    # No DMARC record at all.
    "nodmarc.example": [("A", "192.0.2.14")],
    "s1._domainkey.nodmarc.example": [("TXT", KEY)],
    # SPF that needs more than 10 lookups, with the relay's include among them.
    "toomany.example": [
        ("A", "192.0.2.15"),
        (
            "TXT",
            "v=spf1 include:spf.relay.example "
            + " ".join(f"include:l{i}.toomany.example" for i in range(LOOKUPS))
            + " -all",
        ),
    ],
    "_dmarc.toomany.example": [("TXT", "v=DMARC1; p=reject")],
    **{
        f"l{i}.toomany.example": [("TXT", f"v=spf1 ip4:203.0.113.{i} -all")] for i in range(LOOKUPS)
    },
    # A subdomain sender: its policy is sp= of the organizational domain's record.
    "mail.parent.example": [("A", "192.0.2.16")],
    "parent.example": [("A", "192.0.2.17")],
    "_dmarc.parent.example": [("TXT", "v=DMARC1; p=none; sp=reject")],
    # A name whose lookups fail.
    "servfail.example": [("A", "192.0.2.18")],
}
SERVFAIL = ["_dmarc.servfail.example", "servfail.example"]

# A relay that signs with the client's domain (SMTP_RELAY_<NAME>_DKIM=client).
SIGNS_AS_CLIENT = {
    "SMTP_RELAYS": "esp",
    "SMTP_RELAY_ESP_URL": "smtp://127.0.0.1:2525",
    "SMTP_RELAY_ESP_DKIM": "client",
    "SMTP_RELAY_ESP_SPF": "include:spf.relay.example",
}
# A relay that signs with its own domain.
SIGNS_AS_ITSELF = {
    "SMTP_RELAYS": "own",
    "SMTP_RELAY_OWN_URL": "smtp://127.0.0.1:2525",
    "SMTP_RELAY_OWN_DKIM": "relay.example",
    "SMTP_RELAY_OWN_SPF": "include:spf.relay.example",
}


@pytest.fixture
def resolver() -> Iterator[str]:
    with serving(ZONE, servfail=SERVFAIL) as where:
        yield where


async def add(
    settings: Settings, client_id: str, sender: str, env: dict[str, str], *extra: str
) -> None:
    added = await cli(
        settings, "client", "add", client_id, "--name", client_id.title(), "--sender", sender,
        *extra, env=env,
    )  # fmt: skip
    assert added.code == 0, added.stderr


async def check(settings: Settings, client_id: str, env: dict[str, str]) -> tuple[int, Any]:
    done = await cli(settings, "client", "check", client_id, "--json", env=env)
    assert "Traceback" not in done.stderr, done.stderr
    return done.code, json.loads(done.stdout)


def with_dns(resolver: str, relays: dict[str, str], **more: str) -> dict[str, str]:
    return {**relays, "DNS_RESOLVER": resolver, **more}


async def test_an_aligned_client_is_ok(settings: Settings, resolver: str) -> None:
    env = with_dns(resolver, SIGNS_AS_CLIENT)
    await add(settings, "acme", "surveys@aligned.example", env, "--dkim-selector", "s1")
    code, result = await check(settings, "acme", env)
    assert code == 0
    assert result["client"] == "acme" and result["domain"] == "aligned.example"
    assert result["dmarc"]["policy"] == "reject"
    assert result["dmarc"]["record"].startswith("v=DMARC1; p=reject")
    [relay] = result["relays"]
    assert relay["name"] == "esp" and relay["aligned"] is True and relay["fix"] is None
    assert relay["dkim"]["result"] == "pass"
    assert result["verdict"] == "ok", result["reasons"]
    plain = await cli(settings, "client", "check", "acme", env=env)
    assert plain.code == 0
    assert plain.stdout.splitlines()[0] == "client acme: aligned.example, DMARC p=reject"
    assert plain.stdout.splitlines()[-1] == "verdict: ok"


async def test_without_the_key_it_fails_with_the_record_to_publish(
    settings: Settings, resolver: str
) -> None:
    env = with_dns(resolver, SIGNS_AS_CLIENT)
    await add(settings, "acme", "surveys@nokey.example", env, "--dkim-selector", "S1")
    code, result = await check(settings, "acme", env)
    assert code == 1
    assert result["verdict"] == "fail"
    [relay] = result["relays"]
    assert relay["aligned"] is False
    assert relay["dkim"] == {"result": "fail", "detail": "no key at s1._domainkey.nokey.example"}
    assert relay["fix"] == (
        'publish s1._domainkey.nokey.example TXT "v=DKIM1; k=rsa; '
        'p=<the public key relay esp gives you>"'
    )


async def test_spf_aligns_through_the_bounce_domain(settings: Settings, resolver: str) -> None:
    env = with_dns(resolver, SIGNS_AS_ITSELF, BOUNCE_DOMAIN="bounces.spf.example")
    await add(settings, "acme", "surveys@spf.example", env)
    code, result = await check(settings, "acme", env)
    assert (code, result["verdict"]) == (0, "ok"), result
    assert result["envelope_domain"] == "bounces.spf.example"
    [relay] = result["relays"]
    assert relay["spf"] == {
        "result": "pass",
        "detail": "bounces.spf.example's SPF holds include:spf.relay.example",
    }
    assert relay["dkim"]["result"] == "fail" and relay["aligned"] is True

    # Without VERP the envelope domain is the client's, which publishes no SPF record.
    code, result = await check(settings, "acme", with_dns(resolver, SIGNS_AS_ITSELF))
    assert (code, result["verdict"], result["dmarc"]["policy"]) == (1, "fail", "quarantine")
    assert result["relays"][0]["fix"] == (
        'publish spf.example TXT "v=spf1 include:spf.relay.example ~all"'
    )


async def test_p_none_unaligned_is_a_warning(settings: Settings, resolver: str) -> None:
    env = with_dns(resolver, SIGNS_AS_ITSELF)
    await add(settings, "acme", "surveys@none.example", env)
    code, result = await check(settings, "acme", env)
    assert (code, result["verdict"], result["dmarc"]["policy"]) == (0, "warn", "none")
    assert result["reasons"] == ["relay own: not aligned"]


async def test_no_dmarc_record_is_a_warning(settings: Settings, resolver: str) -> None:
    env = with_dns(resolver, SIGNS_AS_CLIENT)
    await add(settings, "acme", "surveys@nodmarc.example", env, "--dkim-selector", "s1")
    code, result = await check(settings, "acme", env)
    assert (code, result["verdict"]) == (0, "warn")
    assert result["dmarc"]["policy"] is None and result["dmarc"]["record"] is None
    assert result["relays"][0]["aligned"] is True
    assert result["reasons"][0].startswith("no DMARC record")


async def test_spf_over_ten_lookups_fails(settings: Settings, resolver: str) -> None:
    env = with_dns(resolver, SIGNS_AS_ITSELF)
    await add(settings, "acme", "surveys@toomany.example", env)
    code, result = await check(settings, "acme", env)
    assert (code, result["verdict"]) == (1, "fail")
    [relay] = result["relays"]
    assert relay["spf"]["result"] == "fail"
    assert "over the limit of 10" in relay["spf"]["detail"], relay
    assert "at most 10 lookups" in relay["fix"]


async def test_a_subdomain_takes_sp_of_its_organizational_domain(
    settings: Settings, resolver: str
) -> None:
    env = with_dns(resolver, SIGNS_AS_ITSELF)
    await add(settings, "acme", "surveys@mail.parent.example", env)
    code, result = await check(settings, "acme", env)
    assert (code, result["verdict"]) == (1, "fail")
    assert result["domain"] == "mail.parent.example"
    assert result["dmarc"]["policy"] == "reject"
    assert result["dmarc"]["location"] == "parent.example"


async def test_a_resolver_that_times_out_is_a_warning_with_the_reason(
    settings: Settings,
) -> None:
    with silent() as quiet:
        env = with_dns(quiet, SIGNS_AS_CLIENT)
        await add(settings, "acme", "surveys@aligned.example", env, "--dkim-selector", "s1")
        code, result = await check(settings, "acme", env)
    assert (code, result["verdict"]) == (0, "warn")
    assert "timeout" in result["dmarc"]["trouble"]
    assert result["reasons"][0].startswith("the DMARC lookup failed: ")
    assert result["relays"][0]["dkim"]["result"] == "unknown"


async def test_servfail_is_a_warning_with_the_reason(settings: Settings, resolver: str) -> None:
    env = with_dns(resolver, SIGNS_AS_ITSELF)
    await add(settings, "acme", "surveys@servfail.example", env)
    code, result = await check(settings, "acme", env)
    assert (code, result["verdict"]) == (0, "warn")
    assert "SERVFAIL" in result["dmarc"]["trouble"]
    assert "SERVFAIL" in result["relays"][0]["spf"]["detail"]


async def test_a_relay_that_says_nothing_is_unknown(settings: Settings, resolver: str) -> None:
    env = {"DNS_RESOLVER": resolver}
    await add(settings, "acme", "surveys@nokey.example", env)
    code, result = await check(settings, "acme", env)
    assert (code, result["verdict"]) == (0, "warn")
    [relay] = result["relays"]
    assert relay["name"] == "default"
    assert relay["dkim"] == {"result": "unknown", "detail": "SMTP_RELAY_DEFAULT_DKIM is not set"}
    assert "SMTP_RELAY_DEFAULT_SPF" in relay["fix"]


async def test_bad_settings_and_selectors_are_one_line(settings: Settings, resolver: str) -> None:
    for env, where in (
        ({"DNS_RESOLVER": "resolver.example:53"}, "DNS_RESOLVER"),
        ({**SIGNS_AS_CLIENT, "SMTP_RELAY_ESP_SPF": "include amazonses.com"}, "SMTP_RELAY_ESP_SPF"),
        ({**SIGNS_AS_CLIENT, "SMTP_RELAY_ESP_DKIM": "yes please"}, "SMTP_RELAY_ESP_DKIM"),
    ):
        done = await cli(settings, "client", "check", "acme", env=env)
        assert done.code == 1 and done.stderr.startswith(f"Error: {where}: "), done.stderr
        assert len(done.stderr.splitlines()) == 1
    refused = await cli(
        settings, "client", "add", "acme", "--name", "A", "--sender", "a@nokey.example",
        "--dkim-selector", "no/slash", env={"DNS_RESOLVER": resolver},
    )  # fmt: skip
    assert refused.code == 1 and "--dkim-selector" in refused.stderr


def done_lines(done: CliResult) -> list[str]:
    return [line for line in done.stderr.splitlines() if not line.startswith("{")]


def recipients(tmp_path: Path) -> Path:
    path = tmp_path / "people.csv"
    path.write_text("email\nann@example.com\nbob@example.com\n")
    return path


def settings_with(settings: Settings, env: dict[str, str]) -> Settings:
    """`settings` with the relays and the resolver of `env`, for the web app run here."""
    relay_variables = {k: v for k, v in env.items() if k.startswith("SMTP_RELAY_")}
    fields = {
        **settings.model_dump(),
        "smtp_relays": env.get("SMTP_RELAYS"),
        "dns_resolver": env.get("DNS_RESOLVER"),
    }
    return Settings(_env_file=None, smtp_relay_variables=relay_variables, **fields)  # type: ignore[call-arg]


async def campaign_list(settings: Settings, env: dict[str, str]) -> list[dict[str, Any]]:
    listed = await cli(settings, "campaigns", "--json", env=env)
    assert listed.code == 0, listed.stderr
    found: list[dict[str, Any]] = json.loads(listed.stdout)
    return found


async def test_a_failing_domain_is_not_launched_unless_overridden(
    settings: Settings, resolver: str, tmp_path: Path
) -> None:
    env = with_dns(resolver, SIGNS_AS_CLIENT)
    await add(settings, "acme", "surveys@nokey.example", env, "--dkim-selector", "s1")
    people = recipients(tmp_path)
    refused = await cli(settings, *launch_args(people), env=env)
    assert refused.code == 1
    [line] = done_lines(refused)
    assert line.startswith(
        "Error: client acme's sending domain nokey.example publishes DMARC p=reject and no "
        "relay of its route aligns; fix: esp: publish s1._domainkey.nokey.example TXT "
    ), line
    assert line.endswith("(or launch with --allow-unaligned)")
    assert await campaign_list(settings, env) == []

    launched = await cli(settings, *launch_args(people), "--allow-unaligned", "--json", env=env)
    assert launched.code == 0, launched.stderr
    campaign_id = json.loads(launched.stdout)["campaign_id"]
    [logged] = [e for e in launched.log_lines() if e["event"] == "campaign.domain_override"]
    assert logged["campaign_id"] == campaign_id and logged["policy"] == "reject"
    status = await cli(settings, "status", str(campaign_id), env=env)
    assert status.stdout.splitlines()[1] == (
        "  launched with --allow-unaligned: sending domain nokey.example (DMARC p=reject) "
        "failed the check"
    )
    answer = json.loads((await cli(settings, "status", str(campaign_id), "--json")).stdout)
    assert answer["domain_override"]["domain"] == "nokey.example"
    assert answer["domain_override"]["fix"].startswith("publish s1._domainkey.nokey.example")


async def test_a_warning_is_printed_and_the_campaign_launched(
    settings: Settings, resolver: str, tmp_path: Path
) -> None:
    env = with_dns(resolver, SIGNS_AS_ITSELF)
    await add(settings, "acme", "surveys@none.example", env)
    launched = await cli(settings, *launch_args(recipients(tmp_path)), "--json", env=env)
    assert launched.code == 0, launched.stderr
    assert done_lines(launched) == ["warning: sending domain none.example: relay own: not aligned"]
    assert json.loads(launched.stdout)["imported"] == 2


async def test_a_launch_uses_the_check_of_the_last_hour(
    settings: Settings, resolver: str, tmp_path: Path
) -> None:
    env = with_dns(resolver, SIGNS_AS_CLIENT)
    await add(settings, "acme", "surveys@nokey.example", env, "--dkim-selector", "s1")
    assert (await check(settings, "acme", env))[0] == 1
    people = recipients(tmp_path)
    with silent() as quiet:
        offline = with_dns(quiet, SIGNS_AS_CLIENT)
        # The DNS does not answer: the hour-old `fail` still refuses, with no lookup.
        refused = await cli(settings, *launch_args(people), env=offline)
        assert refused.code == 1 and "publishes DMARC p=reject" in refused.stderr
        # A new selector is another check: it times out, which is a warning.
        updated = await cli(
            settings, "client", "update", "acme", "--dkim-selector", "s2", env=offline
        )
        assert updated.stdout.strip().endswith("DKIM selector s2"), updated.stderr
        launched = await cli(settings, *launch_args(people), env=offline)
    assert launched.code == 0, launched.stderr
    [warned] = done_lines(launched)
    assert warned.startswith("warning: sending domain nokey.example: the DMARC lookup failed")


async def test_the_api_refuses_a_failing_domain_with_422_unless_allowed(
    settings: Settings, resolver: str
) -> None:
    env = with_dns(resolver, SIGNS_AS_CLIENT)
    await add(settings, "acme", "surveys@nokey.example", env, "--dkim-selector", "s1")
    made = await cli(settings, "client", "key", "create", "acme", "--json", env=env)
    headers = {"Authorization": f"Bearer {json.loads(made.stdout)['key']}"}
    body = {
        "template": "invitation",
        "survey_url": "https://survey.test/s",
        "recipients": [{"email": "ann@example.com"}],
    }
    async with (
        web_app(settings_with(settings, env)) as base,
        httpx.AsyncClient(base_url=base) as http,
    ):
        refused = await http.post("/v1/campaigns", json=body, headers=headers)
        assert refused.status_code == 422
        assert refused.json()["error"].startswith(
            "client acme's sending domain nokey.example publishes DMARC p=reject"
        )
        assert await campaign_list(settings, env) == []
        allowed = await http.post(
            "/v1/campaigns", json={**body, "allow_unaligned": True}, headers=headers
        )
        assert allowed.status_code == 201, allowed.text
        assert allowed.json()["sending_domain"]["verdict"] == "fail"
        campaign_id = allowed.json()["campaign_id"]
        status = await http.get(f"/v1/campaigns/{campaign_id}", headers=headers)
    assert status.json()["domain_override"]["policy"] == "reject"


async def test_the_daily_recheck_logs_a_change_sets_the_gauge_and_ops_shows_it(
    settings: Settings, resolver: str, tmp_path: Path
) -> None:
    env = with_dns(resolver, SIGNS_AS_CLIENT)
    await add(settings, "acme", "surveys@aligned.example", env, "--dkim-selector", "s1")
    launched = await cli(settings, *launch_args(recipients(tmp_path)), "--json", env=env)
    assert launched.code == 0 and done_lines(launched) == [], launched.stderr
    campaign_id = json.loads(launched.stdout)["campaign_id"]
    # Nothing to send for the worker below (its relay is not there).
    cancelled = await cli(settings, "cancel", str(campaign_id), env=env)
    assert cancelled.code == 0, cancelled.stderr

    # The client took its key down. The daily cron job, enqueued as a platform would,
    # runs on a worker that asks a DNS server without it.
    keyless = {k: v for k, v in ZONE.items() if k != "s1._domainkey.aligned.example"}
    assert settings.redis_url is not None
    jobs = await queue.connect(settings.redis_url)
    try:
        with serving(keyless) as changed:
            await jobs.enqueue_job("check_sending_domains")
            ran = await cli(settings, "worker", "--burst", env=with_dns(changed, SIGNS_AS_CLIENT))
    finally:
        await jobs.aclose()
    assert ran.code == 0, ran.stderr
    events = [orjson.loads(x) for x in ran.stdout.splitlines() if x.startswith("{")]
    [changed_line] = [e for e in events if e["event"] == "client.domain_changed"]
    assert changed_line["client_id"] == "acme" and changed_line["domain"] == "aligned.example"
    assert (changed_line["previous"], changed_line["verdict"]) == ("ok", "fail")

    users = f"anna:{passwords.hash_password('correct horse battery staple', n=2**10)}"
    web = settings_with(settings, env).model_copy(update={"ops_users": SecretStr(users)})
    async with web_app(web) as base, httpx.AsyncClient(base_url=base) as http:
        scraped = await http.get("/metrics")
        page = await http.get("/ops", auth=("anna", "correct horse battery staple"))
    assert 'survey_worker_client_domain_ok{client="acme"} 0.0' in scraped.text
    assert page.status_code == 200
    assert f'id="campaign-{campaign_id}"' in page.text
    assert "sending domain aligned.example (DMARC p=reject) fails DMARC" in page.text
