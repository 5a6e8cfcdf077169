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
