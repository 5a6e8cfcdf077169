import hashlib

import pytest

from fastvlm_engine.auth import KeyRing, hash_key, key_id, new_key, presented_key
from fastvlm_engine.config import SettingsError, load_settings, parse_faults


def test_keys_are_stored_as_sha256_and_verified():
    key, digest = new_key()
    assert digest == hashlib.sha256(key.encode()).hexdigest() and key.startswith("fvk_")
    ring = KeyRing([hash_key("other"), digest])
    assert ring.verify(key) == key_id(digest) == digest[:12]
    assert ring.verify("nope") is None and ring.verify(None) is None and ring.verify("") is None
    assert not KeyRing([]) and KeyRing([digest])


def test_presented_key_from_bearer_or_x_api_key():
    assert presented_key({"authorization": "Bearer abc"}) == "abc"
    assert presented_key({"authorization": "bearer  abc "}) == "abc"
    assert presented_key({"x-api-key": "xyz"}) == "xyz"
    assert presented_key({"authorization": "Basic abc"}) is None
    assert presented_key({}) is None


def test_admin_keys_setting_accepts_only_hashes(monkeypatch):
    monkeypatch.setenv("FASTVLM_ADMIN_KEYS", f"{hash_key('a')}, {hash_key('b').upper()}")
    assert load_settings().admin_keys == [hash_key("a"), hash_key("b")]
    monkeypatch.setenv("FASTVLM_ADMIN_KEYS", "plain-text-key")
    with pytest.raises(SettingsError, match="SHA-256"):
        load_settings()


def test_fault_specs():
    assert parse_faults("crash_after=5@w0, exit_at_startup, hang_after=2@w1:once") == [
        ("crash_after", 5, "w0", False), ("exit_at_startup", 0, None, False), ("hang_after", 2, "w1", True)]
    for bad in ("crash_after", "explode=1", "crash_after=x", "hang_after=0"):
        with pytest.raises(ValueError):
            parse_faults(bad)


def test_key_file_with_rates_and_comments(tmp_path):
    from fastvlm_engine.auth import load_key_file

    path = tmp_path / "keys"
    path.write_text(f"# comment\n{hash_key('a')}\n{hash_key('b').upper()} 30  # thirty a minute\n\n")
    assert load_key_file(path) == {hash_key("a"): None, hash_key("b"): 30.0}
    ring = KeyRing(load_key_file(path))
    assert ring.rate_for(ring.verify("b"), 5.0) == 30.0 and ring.rate_for(ring.verify("a"), 5.0) == 5.0
    for bad in ("nothex 3", f"{hash_key('a')} fast", f"{hash_key('a')} -1", f"{hash_key('a')} 1 2"):
        path.write_text(bad + "\n")
        with pytest.raises(ValueError, match=":1:"):
            load_key_file(path)


def test_rate_limiter_token_bucket():
    from fastvlm_engine.auth import RateLimiter

    now = [100.0]
    limiter = RateLimiter(clock=lambda: now[0])
    assert [limiter.take("k", 2) for _ in range(2)] == [0.0, 0.0]  # a minute's worth of burst
    wait = limiter.take("k", 2)
    assert wait == pytest.approx(30.0)  # 2 per minute: one token every 30 s
    now[0] += 30.0
    assert limiter.take("k", 2) == 0.0
    assert limiter.take("other", 2) == 0.0  # per key
    assert limiter.take("k", 0) == 0.0  # 0 = unlimited


@pytest.mark.parametrize(("peer", "forwarded", "trusted", "expected"), [
    ("127.0.0.1", None, [], "127.0.0.1"),
    ("127.0.0.1", "203.0.113.5", [], "127.0.0.1"),  # not a trusted proxy: header ignored
    ("127.0.0.1", "203.0.113.5", ["127.0.0.0/8"], "203.0.113.5"),
    ("127.0.0.1", "198.51.100.1, 203.0.113.5", ["127.0.0.0/8"], "203.0.113.5"),
    ("127.0.0.1", "203.0.113.5, 10.0.0.2", ["127.0.0.0/8", "10.0.0.0/8"], "203.0.113.5"),
    ("127.0.0.1", "garbage", ["127.0.0.0/8"], None),
    ("::ffff:127.0.0.1", None, [], "127.0.0.1"),
    ("::1", "[2001:db8::1]", ["::1/128"], "2001:db8::1"),
    # Every hop claims to be a trusted proxy: nobody trusted vouched for a client, so the peer it is,
    # never the left-most hop a client (or a pass-through TLS terminator) could have written.
    ("127.0.0.1", "10.1.2.3", ["127.0.0.0/8", "10.0.0.0/8"], "127.0.0.1"),
    ("127.0.0.1", "10.1.2.3, 10.9.9.9", ["127.0.0.0/8", "10.0.0.0/8"], "127.0.0.1"),
    ("127.0.0.1", "::ffff:10.1.2.3", ["127.0.0.0/8", "10.0.0.0/8"], "127.0.0.1"),
])
def test_client_address(peer, forwarded, trusted, expected):
    import ipaddress

    from fastvlm_engine.guards import client_address

    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
    scope = {"client": (peer, 1234), "headers": headers}
    networks = [ipaddress.ip_network(n) for n in trusted]
    result = client_address(scope, networks)
    assert (str(result) if result else None) == expected


def test_network_settings_are_validated(monkeypatch):
    monkeypatch.setenv("FASTVLM_IP_ALLOWLIST", "10.0.0.0/8, ::1/128")
    assert load_settings().ip_allowlist == ["10.0.0.0/8", "::1/128"]
    monkeypatch.setenv("FASTVLM_IP_ALLOWLIST", "10.0.0.0/33")
    with pytest.raises(SettingsError, match="FASTVLM_IP_ALLOWLIST"):
        load_settings()
