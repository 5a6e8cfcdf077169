"""The cluster settings block and worker addresses: defaults, validation, and errors that never show a secret."""

from __future__ import annotations

import pytest

from fastvlm_engine.cluster.addresses import endpoint_url, is_loopback_host, is_loopback_url, url_host
from fastvlm_engine.cluster.url import parse_registry_url
from fastvlm_engine.config import SettingsError, load_settings


def test_the_defaults_are_a_single_host_without_a_registry():
    settings = load_settings()
    assert settings.registry_url == "" and settings.cluster_secret.get_secret_value() == ""
    assert settings.local_workers is True and settings.advertise_host == ""
    assert settings.registry_heartbeat_s < settings.registry_ttl_s
    assert settings.cluster_replay_window_s == 30.0 and settings.registry_key_prefix == "fastvlm:cluster:"


def test_the_registry_url_follows_the_queue_url_rules_but_must_be_redis():
    assert parse_registry_url("redis://u:p@10.0.0.1:6380/2").label == "redis at 10.0.0.1:6380"
    assert parse_registry_url("rediss://[fd00::1]:6379/0").label == "redis (TLS) at [fd00::1]:6379"
    for bad in ["", "sqlite:///jobs.db", "http://10.0.0.1:6379", "redis://:6379/0", "redis://h:1/x"]:
        with pytest.raises(ValueError):
            parse_registry_url(bad)


def test_a_bad_registry_url_is_refused_without_showing_its_password():
    with pytest.raises(SettingsError) as caught:
        load_settings(registry_url="redis://user:hunter2-password@10.0.0.1:6379/not-a-db")
    assert "FASTVLM_REGISTRY_URL" in str(caught.value) and "hunter2-password" not in str(caught.value)


def test_a_short_cluster_secret_is_refused_without_being_shown():
    with pytest.raises(SettingsError) as caught:
        load_settings(cluster_secret="tooshort-secret")
    assert "FASTVLM_CLUSTER_SECRET" in str(caught.value) and "at least 16" in str(caught.value)
    assert "tooshort-secret" not in str(caught.value)
    assert load_settings(cluster_secret="x" * 16).cluster_secret.get_secret_value() == "x" * 16


def test_the_heartbeat_must_be_shorter_than_the_ttl():
    with pytest.raises(SettingsError, match="FASTVLM_REGISTRY_HEARTBEAT_S must be shorter"):
        load_settings(registry_ttl_s=2, registry_heartbeat_s=2)
    assert load_settings(registry_ttl_s=3, registry_heartbeat_s=1).registry_ttl_s == 3


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "bad host", "fe80::1%eth0", "-x.example"])
def test_an_unusable_advertise_host_stops_start_up(host):
    with pytest.raises(SettingsError, match="FASTVLM_ADVERTISE_HOST"):
        load_settings(advertise_host=host)


def test_endpoint_urls_bracket_ipv6_and_normalise():
    assert endpoint_url("10.0.0.5", 8101) == "http://10.0.0.5:8101"
    assert endpoint_url("fd00:0::2", 8101) == "http://[fd00::2]:8101"
    assert endpoint_url("[::1]", 80) == "http://[::1]:80"
    assert endpoint_url("GPU-Box.internal", 8101) == "http://gpu-box.internal:8101"
    for host, port in [("10.0.0.5", 0), ("10.0.0.5", 70000), ("a b", 1), ("0.0.0.0", 1), ("", 1)]:
        with pytest.raises(ValueError):
            endpoint_url(host, port)
    assert url_host("http://[fd00::2]:8101") == "fd00::2" and url_host("http://h:1/") == "h"


@pytest.mark.parametrize(("url", "loopback"), [
    ("http://127.0.0.1:8100", True), ("http://127.9.0.1:8100", True), ("http://[::1]:8100", True),
    ("http://localhost:8100", True), ("http://[::ffff:127.0.0.1]:8100", True),
    ("http://10.0.0.5:8100", False), ("http://[fd00::2]:8100", False), ("http://localhost.evil.com:1", False),
    ("http://0.0.0.0:8100", False), ("not a url", False), ("http://127.0.0.1", False),
])
def test_loopback_is_recognised_only_for_this_host(url, loopback):
    assert is_loopback_url(url) is loopback


def test_loopback_hosts():
    assert is_loopback_host("LOCALHOST") and is_loopback_host("127.0.0.1") and not is_loopback_host("example.com")
