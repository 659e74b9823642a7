"""Parsing and redaction of the shared tier's URL (pure: no server needed)."""

from __future__ import annotations

import pytest

from atom_tier.tiers.shared_url import SharedUrlError, parse_shared_url, redact


def test_single_server_urls_keep_their_scheme() -> None:
    assert parse_shared_url("redis://h:6379/2").urls == ("redis://h:6379/2",)
    assert parse_shared_url("rediss://u:pw@h:6380").urls == ("rediss://u:pw@h:6380",)
    assert parse_shared_url("unix:///run/valkey.sock?db=1").urls == (
        "unix:///run/valkey.sock?db=1",
    )
    assert not parse_shared_url("redis://h:6379").cluster


def test_valkey_schemes_are_read_as_redis() -> None:
    assert parse_shared_url("valkey://h:1").urls == ("redis://h:1",)
    assert parse_shared_url("valkeys://h:1").urls == ("rediss://h:1",)


def test_cluster_url_and_node_list() -> None:
    target = parse_shared_url("redis+cluster://u:pw@h1:7000")
    assert target.cluster and target.urls == ("redis://u:pw@h1:7000",)
    listed = parse_shared_url("redis://u:pw@h1:7000,h2:7001,redis://h3:7002")
    assert listed.cluster
    # Later nodes inherit the first node's credentials.
    assert listed.urls == ("redis://u:pw@h1:7000", "redis://u:pw@h2:7001", "redis://u:pw@h3:7002")


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("lm://h:65432", "scheme 'lm'"),
        ("mooncakestore://h:1", "scheme 'mooncakestore'"),
        ("redis://:6379", "no host"),
        ("redis://h:port", "port is not a number"),
        ("unix://", "no socket path"),
        ("redis+cluster://", "no host"),
        ("   ", "is empty"),
    ],
)
def test_bad_urls_name_the_variable(url: str, words: str) -> None:
    with pytest.raises(SharedUrlError) as error:
        parse_shared_url(url, "LMCACHE_REMOTE_URL")
    assert "LMCACHE_REMOTE_URL" in str(error.value) and words in str(error.value)


def test_a_bad_url_error_does_not_print_the_password() -> None:
    with pytest.raises(SharedUrlError) as error:
        parse_shared_url("redis://admin:hunter2@h:port")
    assert "hunter2" not in str(error.value) and "admin:***@h" in str(error.value)


def test_redact_hides_passwords_and_secret_query_values() -> None:
    shown = redact("rediss://user:s3cret@h:6380/0?ssl_keyfile=/k.pem&ssl_ca_certs=/ca.pem&db=1")
    assert "s3cret" not in shown and "/k.pem" not in shown and "/ca.pem" not in shown
    assert shown.startswith("rediss://user:***@h:6380/0?") and "db=1" in shown
    assert redact("redis://:pw@h:1") == "redis://***@h:1"
    assert redact("redis://h:1") == "redis://h:1"
    display = parse_shared_url("redis://a:pw1@h1:1,h2:2").display
    assert "pw1" not in display and display.startswith("cluster ")
