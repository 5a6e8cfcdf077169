"""The rules a media URL must pass before any traffic: addresses, host shapes, patterns, URL checks, settings."""

from __future__ import annotations

from ipaddress import ip_address

import pytest
from yarl import URL

from fastvlm_engine.config import Settings, SettingsError, load_settings
from fastvlm_engine.errors import UrlNotAllowed
from fastvlm_engine.media.addresses import address_refusal, embedded_ipv4
from fastvlm_engine.media.fetch_policy import MAX_URL_CHARS, FetchPolicy, FetchRefused, check_url, describe_url
from fastvlm_engine.media.hosts import HostShapeError, host_address, parse_host_pattern


def _policy(hosts: str, *, allow_private: bool = False, ports: str = "80,443") -> FetchPolicy:
    return FetchPolicy.from_settings(Settings(fetch_url_hosts=hosts, fetch_allow_private=allow_private,
                                              fetch_allowed_ports=ports))


def _refusal(url: str, policy: FetchPolicy) -> FetchRefused:
    with pytest.raises(FetchRefused) as caught:
        check_url(url, policy)
    assert isinstance(caught.value.error, UrlNotAllowed)
    return caught.value


# --- addresses -------------------------------------------------------------------------------

NON_PUBLIC = [
    "10.1.2.3", "172.16.5.4", "172.31.255.255", "192.168.0.1", "127.0.0.1", "127.255.255.254", "169.254.169.254",
    "100.64.0.1", "100.127.255.254", "192.0.0.9", "192.0.2.1", "198.18.0.1", "198.51.100.7", "203.0.113.9",
    "240.0.0.1", "::1", "fe80::1", "fc00::1", "fd12:3456::1", "fec0::1", "2001:db8::1", "2001::1", "100::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::ffff:0:127.0.0.1",
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b:1::1", "2002:7f00:1::1", "2002:a00:1::1", "::7f00:1",
    "::808:808", "3fff::1", "5f00::1",
]
NEVER = ["0.0.0.0", "0.1.2.3", "224.0.0.1", "239.255.255.250", "255.255.255.255", "::", "ff02::1",
         "::ffff:0.0.0.0", "::ffff:224.0.0.1", "64:ff9b::e000:1"]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2001:4860:4860::8888",
          "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]


@pytest.mark.parametrize("address", NON_PUBLIC + NEVER)
def test_non_public_addresses_are_refused_by_default(address):
    assert address_refusal(ip_address(address), allow_private=False) is not None


@pytest.mark.parametrize("address", NEVER)
def test_non_unicast_addresses_are_refused_even_when_private_ones_are_allowed(address):
    assert address_refusal(ip_address(address), allow_private=True) is not None


@pytest.mark.parametrize("address", NON_PUBLIC)
def test_allow_private_lets_private_and_loopback_addresses_through(address):
    assert address_refusal(ip_address(address), allow_private=True) is None


@pytest.mark.parametrize("address", PUBLIC)
def test_public_unicast_addresses_are_allowed(address):
    assert address_refusal(ip_address(address), allow_private=False) is None


def test_the_reason_names_what_an_embedded_ipv4_address_reaches():
    assert address_refusal(ip_address("::ffff:127.0.0.1"), allow_private=False) == "loopback (IPv4 inside IPv6)"
    assert address_refusal(ip_address("169.254.169.254"), allow_private=False) == "link-local"
    assert embedded_ipv4(ip_address("64:ff9b::a9fe:a9fe")) == ip_address("169.254.169.254")
    assert embedded_ipv4(ip_address("2002:7f00:1::1")) == ip_address("127.0.0.1")
    assert embedded_ipv4(ip_address("2606:4700:4700::1111")) is None


def test_a_zone_index_does_not_hide_a_link_local_address():
    assert address_refusal(ip_address("fe80::1%eth0"), allow_private=False) == "link-local"


# --- host shapes and patterns ----------------------------------------------------------------

@pytest.mark.parametrize("host", ["2130706433", "0x7f.1", "0x7f000001", "0177.0.0.1", "127.1", "017700000001",
                                  "127.0.0.01", "1.2.3.4.5", "example.123", "0x"])
def test_numeric_hosts_that_are_not_dotted_decimal_ipv4_are_refused(host):
    with pytest.raises(HostShapeError):
        host_address(host)


@pytest.mark.parametrize(("host", "expected"), [("127.0.0.1", "127.0.0.1"), ("::1", "::1"),
                                                ("::ffff:7f00:1", "::ffff:127.0.0.1"), ("example.com", None),
                                                ("a-b_c.example", None), ("v6.example.", None)])
def test_standard_hosts_are_read_as_addresses_or_names(host, expected):
    result = host_address(host)
    assert (str(result) if result is not None else None) == (str(ip_address(expected)) if expected else None)


@pytest.mark.parametrize("host", ["exa mple.com", "ex%41mple.com", "-bad.example", "a..b", "x" * 64 + ".com"])
def test_invalid_host_names_are_refused(host):
    with pytest.raises(HostShapeError):
        host_address(host)


@pytest.mark.parametrize(("pattern", "name", "allowed"), [
    ("example.com", "example.com", True),
    ("example.com", "a.example.com", False),
    ("*.example.com", "a.example.com", True),
    ("*.example.com", "a.b.example.com", True),
    ("*.example.com", "example.com", False),
    ("*.example.com", "badexample.com", False),
    ("*", "anything.example", True),
    ("Bücher.DE", "xn--bcher-kva.de", True),
    ("example.com.", "example.com", True),
])
def test_name_patterns(pattern, name, allowed):
    assert parse_host_pattern(pattern).allows_name(name) is allowed


def test_ip_literals_are_allowed_only_by_the_same_literal():
    loopback = ip_address("127.0.0.1")
    assert parse_host_pattern("127.0.0.1").allows_address(loopback)
    assert parse_host_pattern("[::1]").allows_address(ip_address("::1"))
    assert not parse_host_pattern("*").allows_address(loopback)
    assert not parse_host_pattern("127.0.0.1").allows_address(ip_address("::ffff:127.0.0.1"))
    assert not parse_host_pattern("localhost").allows_address(loopback)


@pytest.mark.parametrize("pattern", ["a*.example.com", "*example.com", "*.127.0.0.1", "0x7f.1", "bad host", "**"])
def test_bad_patterns_are_refused(pattern):
    with pytest.raises(ValueError):
        parse_host_pattern(pattern)


# --- URL checks ------------------------------------------------------------------------------

def test_every_url_is_refused_when_no_host_is_listed_and_the_message_says_how_to_allow_hosts():
    refused = _refusal("https://images.example.com/cat.png", FetchPolicy.from_settings(Settings()))
    assert refused.reason == "fetching_off"
    assert "FASTVLM_FETCH_URL_HOSTS" in refused.error.message and refused.error.http_status == 400


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://images.example.com/a.png",
                                 "gopher://images.example.com:70/_x", "data:image/png;base64,iVBORw0KGgo=",
                                 "javascript:alert(1)", "//images.example.com/a.png", "/a.png", "", "http:///a.png",
                                 "http:images.example.com/a.png"])
def test_only_absolute_http_and_https_urls_pass(url):
    assert _refusal(url, _policy("*")).reason in ("scheme", "unparseable")


@pytest.mark.parametrize("url", ["http://user:secret@images.example.com/a.png", "http://:secret@images.example.com/",
                                 "http://user@images.example.com/", "http://@images.example.com/a.png",
                                 "https://a@b@images.example.com/"])
def test_urls_with_user_info_are_refused_without_echoing_it(url):
    refused = _refusal(url, _policy("*"))
    assert refused.reason == "userinfo"
    assert "secret" not in refused.error.message and "user:" not in refused.error.message


def test_ports_follow_the_policy():
    policy = _policy("images.example.com", ports="443,8443")
    assert check_url("https://images.example.com/a.png", policy).port == 443
    assert check_url("https://images.example.com:8443/a.png", policy).port == 8443
    assert _refusal("http://images.example.com/a.png", policy).reason == "port"
    assert _refusal("https://images.example.com:22/a.png", policy).reason == "port"


def test_hosts_must_be_listed():
    policy = _policy("images.example.com,*.cdn.example.net")
    assert check_url("https://IMAGES.example.com./a.png", policy).host == "images.example.com"
    assert check_url("https://eu.cdn.example.net/a.png", policy).host == "eu.cdn.example.net"
    refused = _refusal("https://internal.example.com/a.png", policy)
    assert refused.reason == "host_not_listed" and "'internal.example.com'" in refused.error.message


def test_ip_literal_urls_need_the_literal_listed():
    policy = _policy("*,203.0.113.7")
    assert check_url("http://203.0.113.7/a.png", policy).address == ip_address("203.0.113.7")
    assert _refusal("http://198.51.100.1/a.png", policy).reason == "host_not_listed"
    assert _refusal("http://[::ffff:203.0.113.7]/a.png", policy).reason == "host_not_listed"


@pytest.mark.parametrize("url", ["http://2130706433/", "http://0x7f.1/", "http://0177.0.0.1/", "http://127.1/",
                                 "http://017700000001/"])
def test_decimal_octal_and_hex_ipv4_forms_are_refused_even_with_a_wildcard(url):
    assert _refusal(url, _policy("*,127.0.0.1", allow_private=True)).reason == "host_shape"


def test_overlong_and_unparseable_urls_are_refused():
    assert _refusal("https://images.example.com/" + "a" * MAX_URL_CHARS, _policy("*")).reason == "url_too_long"
    assert _refusal("http://images.example.com:99999/", _policy("*")).reason == "unparseable"
    assert _refusal("http://evil.example\\@images.example.com/", _policy("*")).reason == "unparseable"


def test_the_fragment_is_never_requested_and_logs_never_show_the_query():
    target = check_url("https://images.example.com/a.png?sig=TOKEN#part", _policy("images.example.com"))
    assert str(target.url) == "https://images.example.com/a.png?sig=TOKEN"
    assert target.describe() == "https://images.example.com/a.png"
    assert describe_url("http://user:pw@[::1]:8080/p?q=TOKEN") == "http://[::1]:8080/p"
    assert describe_url("file:///etc/shadow") == "(file URL)"


@pytest.mark.parametrize("location", ["https://internal.corp/x", "https://0x7f.1/", "file:///etc/passwd",
                                      "https://images.example.com:8443/"])
def test_a_refused_redirect_names_the_clients_host_not_the_redirects(location):
    with pytest.raises(FetchRefused) as caught:
        check_url(URL(location), _policy("images.example.com"), redirected_from="images.example.com")
    message = caught.value.error.message
    assert "internal.corp" not in message and "0x7f" not in message and "/etc/passwd" not in message
    assert message.startswith("'images.example.com' redirected")


# --- settings --------------------------------------------------------------------------------

def test_fetch_settings_are_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("FASTVLM_FETCH_URL_HOSTS", "images.example.com, *.cdn.example.net,[::1]")
    monkeypatch.setenv("FASTVLM_FETCH_ALLOWED_PORTS", "443,8443,443")
    monkeypatch.setenv("FASTVLM_FETCH_ALLOW_PRIVATE", "true")
    settings = load_settings()
    policy = FetchPolicy.from_settings(settings)
    assert [str(pattern) for pattern in policy.hosts] == ["images.example.com", "*.cdn.example.net", "::1"]
    assert policy.allowed_ports == frozenset({443, 8443}) and policy.allow_private
    assert settings.fetch_allowed_ports == [443, 8443]


def test_fetching_is_off_and_strict_by_default():
    policy = FetchPolicy.from_settings(Settings())
    assert not policy.enabled and not policy.allow_private
    assert policy.allowed_ports == frozenset({80, 443}) and policy.max_redirects >= 0


@pytest.mark.parametrize(("name", "value"), [("FASTVLM_FETCH_URL_HOSTS", "0x7f.1"),
                                             ("FASTVLM_FETCH_URL_HOSTS", "a*.example.com"),
                                             ("FASTVLM_FETCH_ALLOWED_PORTS", "0"),
                                             ("FASTVLM_FETCH_ALLOWED_PORTS", "http"),
                                             ("FASTVLM_FETCH_TIMEOUT_S", "0"),
                                             ("FASTVLM_FETCH_MAX_REDIRECTS", "-1")])
def test_bad_fetch_settings_stop_start_up_naming_the_setting(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        load_settings()
