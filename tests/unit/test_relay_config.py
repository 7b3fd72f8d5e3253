"""Relay configuration: SMTP_RELAYS and each relay's SMTP_RELAY_<NAME>_ variables become
`Relay`s (passwords percent-decoded), or the SMTP_HOST… settings one named `default`;
anything unusable is a ConfigError naming the variable, never quoting the URL."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from worker.errors import ConfigError
from worker.relay_config import Relay, from_url, parse_names, relay_names, relays
from worker.settings import Settings

# In every URL below, so that a message quoting the URL is caught.
PASSWORD = "s3cret-pass"


def configured(relay_variables: dict[str, str] | None = None, **values: Any) -> Settings:
    """Settings from `values` and the SMTP_RELAY_<NAME>_ variables given, no `.env`."""
    return Settings(  # type: ignore[call-arg]
        _env_file=None, smtp_relay_variables=relay_variables or {}, **values
    )


def test_without_smtp_relays_the_smtp_settings_are_one_relay_named_default() -> None:
    settings = configured(
        smtp_host="mail.example.com",
        smtp_port=587,
        smtp_tls="starttls",
        smtp_username="firm",
        smtp_password=PASSWORD,
        smtp_timeout=12,
        smtp_connections=7,
    )
    assert relays(settings) == [
        Relay(
            name="default",
            host="mail.example.com",
            port=587,
            tls="starttls",
            timeout=12,
            connections=7,
            username="firm",
            password=PASSWORD,
        )
    ]
    assert relay_names(settings) == ["default"]


def test_each_named_relay_comes_from_its_variables_in_order() -> None:
    settings = configured(
        {
            "SMTP_RELAY_SES_URL": f"smtp+starttls://AKIA:{PASSWORD}@email-smtp.example.com",
            "SMTP_RELAY_SES_RATE": "14",
            "SMTP_RELAY_SES_CONNECTIONS": "50",
            "SMTP_RELAY_OWN_2_URL": "smtps://relay.example.net:2465",
            "SMTP_RELAY_OWN_2_WEIGHT": "0",
            "SMTP_RELAY_LAN_URL": "smtp://10.0.0.5",
            "SMTP_RELAY_LAN_WEIGHT": "3",
            "SMTP_RELAY_LAN_RATE": "0",
        },
        smtp_relays="ses, own_2,lan",
        smtp_timeout=9,
        smtp_connections=4,
        smtp_host="ignored.example.com",
    )
    assert relay_names(settings) == ["ses", "own_2", "lan"]
    assert relays(settings) == [
        Relay("ses", "email-smtp.example.com", 587, "starttls", 9, 50, "AKIA", PASSWORD, 14.0),
        Relay("own_2", "relay.example.net", 2465, "tls", 9, 4, weight=0),
        Relay("lan", "10.0.0.5", 25, "none", 9, 4, weight=3),
    ]


def test_the_password_is_not_in_a_relays_repr() -> None:
    (relay,) = relays(configured({"SMTP_RELAY_A_URL": f"smtp://u:{PASSWORD}@h"}, smtp_relays="a"))
    assert relay.password == PASSWORD
    assert PASSWORD not in repr(relay)


@given(password=st.text(min_size=1), user=st.text(min_size=1))
def test_any_user_and_password_survive_percent_encoding(password: str, user: str) -> None:
    # An Azure or SES key holds '/', '+' and '='; written %2F, %2B, %3D it is the same key.
    url = f"smtp+starttls://{quote(user, safe='')}:{quote(password, safe='')}@relay.test"
    (relay,) = relays(configured({"SMTP_RELAY_KEYED_URL": url}, smtp_relays="keyed"))
    assert (relay.username, relay.password) == (user, password)


def test_a_plus_in_the_password_stays_a_plus() -> None:
    relay = from_url("a", "smtp://u:a%2Fb+c%3D@h", timeout=1, connections=1)
    assert relay.password == "a/b+c="


@given(st.lists(st.from_regex(r"[a-z0-9_]{1,12}", fullmatch=True), min_size=1, unique=True))
def test_names_of_letters_digits_and_underscores_are_accepted(names: list[str]) -> None:
    assert parse_names(" , ".join(names)) == names


@given(st.text(min_size=1).filter(lambda s: "," not in s and s.strip()))
def test_a_name_with_anything_else_is_refused(name: str) -> None:
    if all(c in "abcdefghijklmnopqrstuvwxyz0123456789_" for c in name.strip()):
        assert parse_names(name) == [name.strip()]
    else:
        with pytest.raises(ConfigError, match=r"^SMTP_RELAYS: .* is not a relay name"):
            parse_names(name)


@pytest.mark.parametrize(
    ("names", "complaint"),
    [
        ("main,back-up", "'back-up' is not a relay name (lower-case letters, digits and _)"),
        ("Main", "'Main' is not a relay name"),
        ("a,,b", "an empty name"),
        ("a,", "an empty name"),
        (" ", "an empty name"),
        ("a,b,a", "'a' is named twice"),
    ],
)
def test_bad_smtp_relays_are_refused_when_the_settings_load(names: str, complaint: str) -> None:
    urls = {f"SMTP_RELAY_{n}_URL": "smtp://h" for n in ("A", "B", "MAIN", "BACK_UP")}
    with pytest.raises(ConfigError) as refused:
        configured(urls, smtp_relays=names)
    assert str(refused.value).startswith(f"SMTP_RELAYS: {complaint}")


@pytest.mark.parametrize(
    ("variables", "complaint"),
    [
        ({}, "SMTP_RELAY_A_URL: must be set for the relay a SMTP_RELAYS names"),
        ({"A_URL": f"http://u:{PASSWORD}@h"}, "SMTP_RELAY_A_URL: not an smtp://, smtp+starttls://"),
        ({"A_URL": f"smtp:{PASSWORD}"}, "SMTP_RELAY_A_URL: names no host"),
        ({"A_URL": f"smtp://u:{PASSWORD}@:25"}, "SMTP_RELAY_A_URL: names no host"),
        ({"A_URL": f"smtp://u:{PASSWORD}@h:0"}, "SMTP_RELAY_A_URL: the port is not a number"),
        ({"A_URL": f"smtp://u:{PASSWORD}@h:99999"}, "SMTP_RELAY_A_URL: not a valid URL"),
        ({"A_URL": f"smtp://u:{PASSWORD}@h:x"}, "SMTP_RELAY_A_URL: not a valid URL"),
        ({"A_URL": f"smtp://u:{PASSWORD}@[::1"}, "SMTP_RELAY_A_URL: not a valid URL"),
        # An unescaped '/' in a password: the "port" is the password's start.
        ({"A_URL": f"smtp://u:{PASSWORD}/x=@h"}, "SMTP_RELAY_A_URL: not a valid URL"),
        ({"A_URL": f"smtp://u:123/{PASSWORD}@h"}, "SMTP_RELAY_A_URL: has a path, query"),
        ({"A_URL": f"smtp://:{PASSWORD}@h"}, "SMTP_RELAY_A_URL: has a password but no user"),
        ({"A_URL": "smtp://h", "A_WEIGHT": "-1"}, "SMTP_RELAY_A_WEIGHT: must be a whole number"),
        ({"A_URL": "smtp://h", "A_WEIGHT": "1.5"}, "SMTP_RELAY_A_WEIGHT: must be a whole number"),
        ({"A_URL": "smtp://h", "A_WEIGHT": "0"}, "SMTP_RELAY_<NAME>_WEIGHT: every relay has"),
        ({"A_URL": "smtp://h", "A_RATE": "fast"}, "SMTP_RELAY_A_RATE: must be a number, 0 or"),
        ({"A_URL": "smtp://h", "A_RATE": "-2"}, "SMTP_RELAY_A_RATE: must be a number, 0 or"),
        ({"A_URL": "smtp://h", "A_RATE": "nan"}, "SMTP_RELAY_A_RATE: must be a number, 0 or"),
        ({"A_URL": "smtp://h", "A_CONNECTIONS": "0"}, "SMTP_RELAY_A_CONNECTIONS: must be from"),
        ({"A_URL": "smtp://h", "A_CONNECTIONS": "201"}, "SMTP_RELAY_A_CONNECTIONS: must be"),
    ],
)
def test_a_bad_relay_is_refused_naming_its_variable_never_the_url(
    variables: dict[str, str], complaint: str
) -> None:
    given = {f"SMTP_RELAY_{name}": value for name, value in variables.items()}
    with pytest.raises(ConfigError) as refused:
        configured(given, smtp_relays="a")
    assert str(refused.value).startswith(complaint)
    assert PASSWORD not in str(refused.value)


def test_relay_variables_come_from_the_environment_before_the_env_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "SMTP_RELAYS=a,b\n"
        "SMTP_RELAY_A_URL=smtp://from-file-a\n"
        "SMTP_RELAY_B_URL=smtp://from-file-b\n"
        "SMTP_RELAY_B_RATE=\n"
    )
    monkeypatch.setenv("SMTP_RELAY_B_URL", "smtps://from-environment-b")
    settings = Settings(_env_file=env_file)  # type: ignore[call-arg]
    assert [(r.host, r.tls, r.rate) for r in relays(settings)] == [
        ("from-file-a", "none", None),
        ("from-environment-b", "tls", None),
    ]
    # Handed on to a child process whole.
    assert settings.as_environment()["SMTP_RELAY_B_URL"] == "smtps://from-environment-b"


def test_a_bad_relay_in_the_environment_stops_settings_from_loading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SMTP_RELAYS", "a")
    monkeypatch.setenv("SMTP_RELAY_A_URL", f"smtp+tls://u:{PASSWORD}@h")
    with pytest.raises(ConfigError, match="SMTP_RELAY_A_URL: not an smtp://"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_retry_durations_parse_as_users_write_them() -> None:
    settings = configured()
    assert (settings.retry_max_delay, settings.retry_horizon) == (
        timedelta(hours=1),
        timedelta(hours=48),
    )
    settings = configured(retry_max_delay="15m", retry_horizon="5d")
    assert (settings.retry_max_delay, settings.retry_horizon) == (
        timedelta(minutes=15),
        timedelta(days=5),
    )
    environment = settings.as_environment()
    assert (environment["RETRY_MAX_DELAY"], environment["RETRY_HORIZON"]) == ("900s", "432000s")
    with pytest.raises(ValidationError, match="is not a duration such as"):
        configured(retry_horizon="48 hours")


def test_smtp_max_attempts_is_ignored_and_named_as_such() -> None:
    assert configured().ignored_settings() == []
    assert configured(smtp_max_attempts=5).ignored_settings() == ["SMTP_MAX_ATTEMPTS"]
