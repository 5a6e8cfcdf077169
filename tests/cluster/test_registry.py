"""The worker registry on a real Redis: round trip, expiry, withdrawal, rogue entries, shared drains,
outage and recovery, and what may never show (passwords, secrets, unsigned network addresses)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid

import pytest
import redis

from fastvlm_engine.cluster.envelope import seal
from fastvlm_engine.cluster.registration import Registration, still_valid
from fastvlm_engine.cluster.registry import Registry
from fastvlm_engine.cluster.secret import derive_key
from fastvlm_engine.config import load_settings
from fastvlm_engine.errors import RegistryUnavailable
from tests.helpers.redis_server import start_redis

SECRET = b"registry-test-secret-0123456789"
PASSWORD = "redis-pass-w0rd-never-shown"


def worker(worker_id: str = "node-a/w0", *, url: str = "http://10.0.0.5:8101", **fields) -> Registration:
    node = worker_id.split("/")[0]
    values = dict(worker_id=worker_id, node_id=node, host=node, url=url, device="cuda:0",
                  gpu={"index": 0, "name": "H100", "memory_total_bytes": 80 << 30, "memory_free_bytes": 60 << 30},
                  tags={"gpu": "h100", "zone": "eu-1"}, slots=8, video_slots=1, state="ready", in_flight=2,
                  video_in_flight=0, latency_ms={"/predict_image": 41.5}, model={"name": "tiny", "format": "native",
                                                                                  "dtype": "float32"})
    values.update(fields)
    return Registration(**values)


@pytest.fixture
def prefix(redis_server) -> str:
    """A key prefix of this test's own on the shared session Redis."""
    return f"fastvlm-cluster-test-{uuid.uuid4().hex[:12]}:"


def open_registry(server, prefix: str, *, secret: bytes | None = SECRET, ttl_s: float = 6.0,
                  timeout_s: float = 2.0) -> Registry:
    return Registry(server.url, secret=secret, ttl_s=ttl_s, key_prefix=prefix, timeout_s=timeout_s,
                    max_clock_skew_s=30.0)


def raw_client(server) -> redis.Redis:
    return redis.Redis.from_url(server.url)


def test_publish_then_snapshot_round_trips_every_field(redis_server, prefix):
    published = [worker("node-a/w0"), worker("node-a/w1", url="http://[fd00::5]:8102", gpu=None, model=None,
                                             device="cpu", tags={})]

    async def scenario():
        async with open_registry(redis_server, prefix) as registry:
            before = time.time()
            await registry.publish(published)
            found = await registry.snapshot()
            assert [r.worker_id for r in found] == ["node-a/w0", "node-a/w1"]
            for original, read in zip(published, found, strict=True):
                assert before <= read.published_at <= time.time() and read.ttl_s == 6.0
                assert read == Registration(**{**original.__dict__, "published_at": read.published_at, "ttl_s": 6.0})
            assert registry.rejected == 0
            await registry.publish([worker("node-a/w0", in_flight=7)])  # a heartbeat refreshes one entry
            assert {r.worker_id: r.in_flight for r in await registry.snapshot()} == {"node-a/w0": 7, "node-a/w1": 2}

    asyncio.run(scenario())


def test_entries_expire_after_their_ttl_and_leave_the_index(redis_server, prefix):
    async def scenario():
        async with open_registry(redis_server, prefix, ttl_s=1.0) as registry:
            await registry.publish([worker("node-a/w0")])
            assert [r.worker_id for r in await registry.snapshot()] == ["node-a/w0"]
            client = raw_client(redis_server)
            try:
                assert 0 < client.pttl(f"{prefix}worker:node-a/w0") <= 1000
                deadline = time.monotonic() + 15
                while await registry.snapshot() and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                assert await registry.snapshot() == []
                assert client.smembers(f"{prefix}workers") == set()  # the dead id went with the entry
            finally:
                client.close()

    asyncio.run(scenario())


def test_withdraw_removes_entries_at_once(redis_server, prefix):
    async def scenario():
        async with open_registry(redis_server, prefix) as registry:
            await registry.publish([worker("node-a/w0"), worker("node-a/w1"), worker("node-b/w0")])
            await registry.withdraw(["node-a/w0", "node-a/w1", "node-a/never-registered"])
            assert [r.worker_id for r in await registry.snapshot()] == ["node-b/w0"]
            await registry.withdraw([])

    asyncio.run(scenario())


def write_entry(server, prefix: str, worker_id: str, value: bytes) -> None:
    """Write straight into Redis, the way the registry lays entries out (a rogue process can do the same)."""
    client = raw_client(server)
    try:
        client.set(f"{prefix}worker:{worker_id}", value, px=60_000)
        client.sadd(f"{prefix}workers", worker_id)
    finally:
        client.close()


def test_rogue_entries_get_no_traffic_and_are_counted(redis_server, prefix, caplog):
    caplog.set_level(logging.DEBUG)
    now = time.time()
    genuine_key = derive_key(SECRET, "registration")

    def entry(worker_id: str, **fields) -> str:
        return worker(worker_id, published_at=now, ttl_s=6.0, url="http://10.9.9.9:6666", **fields).to_json()

    async def scenario():
        async with open_registry(redis_server, prefix) as registry, \
                open_registry(redis_server, prefix, secret=b"another-cluster-secret-xyz") as impostor:
            await registry.publish([worker("node-a/w0")])
            await impostor.publish([worker("evil/w1")])  # signed, but with another secret
            write_entry(redis_server, prefix, "evil/w0", seal(None, entry("evil/w0")))  # unsigned
            client = raw_client(redis_server)
            try:  # a genuine entry with one field altered (its URL), signature kept
                stored = json.loads(client.get(f"{prefix}worker:node-a/w0"))
                altered = json.loads(stored["entry"]) | {"url": "http://10.9.9.9:6666"}
                stored["entry"] = json.dumps(altered, sort_keys=True, separators=(",", ":"))
                write_entry(redis_server, prefix, "node-a/w9", client.get(f"{prefix}worker:node-a/w0"))  # copied
            finally:
                client.close()
            write_entry(redis_server, prefix, "node-a/w8", json.dumps(stored).encode())
            write_entry(redis_server, prefix, "evil/w2",  # an old genuinely signed entry written back
                        seal(genuine_key, worker("evil/w2", published_at=now - 3600, ttl_s=6.0).to_json()))
            write_entry(redis_server, prefix, "evil/w3", b"not json at all")
            write_entry(redis_server, prefix, "evil/w4", b"[" * 60_000)
            write_entry(redis_server, prefix, "evil/w5", b"x" * 100_000)
            write_entry(redis_server, prefix, "evil/w6",
                        seal(genuine_key, json.dumps({"worker_id": "evil/w6", "slots": "many"})))
            found = await registry.snapshot()
            assert [r.worker_id for r in found] == ["node-a/w0"] and found[0].url == "http://10.0.0.5:8101"
            assert registry.rejected == 9
            await registry.snapshot()
            assert registry.rejected == 18  # counted on every read: they are still there
            # the impostor, with its secret, trusts none of the cluster's entries either
            assert [r.worker_id for r in await impostor.snapshot()] == ["evil/w1"]

    asyncio.run(scenario())
    warnings = [r for r in caplog.records
                if r.name == "fastvlm_engine.cluster.registry" and r.levelno == logging.WARNING]
    assert len(warnings) == 2  # one per registry object, rate-limited; the rest are counted
    message = warnings[0].getMessage()
    assert "ignored a registry entry for worker" in message and "of node" in message
    assert SECRET.decode() not in caplog.text and "another-cluster-secret-xyz" not in caplog.text


def test_each_rejection_names_the_worker_and_node_it_claims(redis_server, prefix, caplog):
    caplog.set_level(logging.WARNING, logger="fastvlm_engine.cluster.registry")

    async def scenario():
        async with open_registry(redis_server, prefix) as registry:
            write_entry(redis_server, prefix, "evil/w0", seal(None, worker("evil/w0").to_json()))
            assert await registry.snapshot() == [] and registry.rejected == 1

    asyncio.run(scenario())
    [warning] = [r for r in caplog.records if r.name == "fastvlm_engine.cluster.registry"]
    assert warning.getMessage() == "ignored a registry entry for worker evil/w0 of node evil: unsigned"
    assert warning.rejected_total == 1 and PASSWORD not in caplog.text


def test_drained_hosts_are_shared_by_every_registry_object_and_must_be_signed(redis_server, prefix):
    async def scenario():
        async with open_registry(redis_server, prefix) as first, open_registry(redis_server, prefix) as second:
            assert await second.drained_hosts() == set()
            await first.set_host_drained("node-a", True)
            await first.set_host_drained("node-b", True)
            assert await second.drained_hosts() == {"node-a", "node-b"}
            await second.set_host_drained("node-a", False)
            assert await first.drained_hosts() == {"node-b"}
            client = raw_client(redis_server)
            try:
                client.hset(f"{prefix}drained", "node-c", seal(None, json.dumps({"host": "node-c"})))
                client.hset(f"{prefix}drained", "node-d", client.hget(f"{prefix}drained", "node-b"))  # copied
                client.hset(f"{prefix}drained", "node-e", b"garbage")
            finally:
                client.close()
            assert await second.drained_hosts() == {"node-b"} and second.rejected == 3
            with pytest.raises(ValueError):
                await first.set_host_drained("bad host name", True)

    asyncio.run(scenario())


def test_without_a_secret_non_loopback_addresses_are_refused_and_nothing_is_written(redis_server, prefix):
    async def scenario():
        async with open_registry(redis_server, prefix, secret=None) as registry:
            for url, shown in [("http://10.0.0.5:8101", "10.0.0.5"), ("http://[fd00::2]:8101", "fd00::2"),
                               ("http://gpu-box.internal:8101", "gpu-box.internal")]:
                with pytest.raises(ValueError) as caught:
                    await registry.publish([worker("node-a/w0", url="http://127.0.0.1:8100"),
                                            worker("node-a/w1", url=url)])
                assert str(caught.value).startswith(f"set FASTVLM_CLUSTER_SECRET to advertise {shown}")
            assert await registry.snapshot() == []
            await registry.publish([worker("dev/w0", url="http://127.0.0.1:8100"),
                                    worker("dev/w1", url="http://[::1]:8101"),
                                    worker("dev/w2", url="http://localhost:8102")])
            assert [r.worker_id for r in await registry.snapshot()] == ["dev/w0", "dev/w1", "dev/w2"]
            # an unsigned non-loopback entry written straight into Redis is not used either
            write_entry(redis_server, prefix, "evil/w0", seal(None, worker("evil/w0", published_at=time.time(),
                                                                           ttl_s=6.0).to_json()))
            assert "evil/w0" not in [r.worker_id for r in await registry.snapshot()]
            assert registry.rejected == 1
        async with open_registry(redis_server, prefix) as with_secret:  # and unsigned entries mean nothing here
            assert await with_secret.snapshot() == [] and with_secret.rejected == 4
            await with_secret.publish([worker("node-a/w0")])
        async with open_registry(redis_server, prefix, secret=None) as without:  # nor signed ones there
            assert "node-a/w0" not in [r.worker_id for r in await without.snapshot()]

    asyncio.run(scenario())


def test_an_unreachable_registry_raises_registry_unavailable_and_the_same_object_recovers(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    server = start_redis(tmp_path / "redis", password=PASSWORD)
    try:
        async def scenario():
            async with open_registry(server, "fastvlm-outage:", timeout_s=1.0) as registry:
                assert PASSWORD not in registry.description() and PASSWORD not in repr(registry)
                assert f"127.0.0.1:{server.port}" in registry.description()
                await registry.publish([worker("node-a/w0")])
                assert len(await registry.snapshot()) == 1
                server.stop()
                calls = [registry.ping, registry.snapshot, registry.drained_hosts,
                         lambda: registry.publish([worker("node-a/w0")]), lambda: registry.withdraw(["node-a/w0"]),
                         lambda: registry.set_host_drained("node-a", True)]
                for attempt in calls:
                    with pytest.raises(RegistryUnavailable) as caught:
                        await attempt()
                    error = caught.value
                    assert error.code == "registry_unavailable" and error.http_status == 503 and error.retryable
                    assert f"redis at 127.0.0.1:{server.port}" in error.message
                    assert PASSWORD not in error.message and PASSWORD not in str(error.to_body())
                server.start()  # same port, empty (no persistence)
                await registry.ping()
                assert await registry.snapshot() == []
                await registry.publish([worker("node-a/w0")])
                assert [r.worker_id for r in await registry.snapshot()] == ["node-a/w0"]

        asyncio.run(scenario())
    finally:
        server.stop()
    assert PASSWORD not in caplog.text


def test_a_wrong_redis_password_is_unavailable_without_showing_either_password(tmp_path):
    server = start_redis(tmp_path / "redis", password=PASSWORD)
    try:
        wrong = server.url.replace(PASSWORD, "the-wrong-password")

        async def scenario():
            async with Registry(wrong, secret=SECRET, ttl_s=6, key_prefix="fastvlm-wrong-password:", timeout_s=1.0,
                                max_clock_skew_s=30) as registry:
                with pytest.raises(RegistryUnavailable) as caught:
                    await registry.ping()
                assert "the-wrong-password" not in str(caught.value) and PASSWORD not in str(caught.value)

        asyncio.run(scenario())
    finally:
        server.stop()


def test_from_settings_takes_the_cluster_block(redis_server, prefix):
    settings = load_settings(registry_url=redis_server.url, cluster_secret=SECRET.decode(), registry_ttl_s=4,
                             registry_heartbeat_s=1, registry_key_prefix=prefix, cluster_replay_window_s=10)

    async def scenario():
        async with Registry.from_settings(settings) as registry:
            assert registry.signed and registry.ttl_s == 4 and registry.max_clock_skew_s == 10
            await registry.publish([worker()])
            [found] = await registry.snapshot()
            assert found.ttl_s == 4
        async with open_registry(redis_server, prefix) as same_secret:  # the settings' secret is the one used
            assert [r.worker_id for r in await same_secret.snapshot()] == ["node-a/w0"]

    asyncio.run(scenario())
    with pytest.raises(ValueError, match="FASTVLM_REGISTRY_URL"):
        Registry.from_settings(load_settings())


def test_still_valid_allows_one_ttl_and_the_given_clock_skew():
    entry = worker(published_at=1000.0, ttl_s=6.0)
    assert still_valid(entry, 1000.0) and still_valid(entry, 1006.0)
    assert not still_valid(entry, 1006.1) and not still_valid(entry, 999.0)
    assert still_valid(entry, 1010.0, skew_s=5) and still_valid(entry, 996.0, skew_s=5)
    assert not still_valid(entry, 1012.0, skew_s=5)


@pytest.mark.parametrize("change", [
    {"worker_id": ""}, {"worker_id": "a b"}, {"node_id": "x/y"}, {"host": "h o"}, {"url": "ftp://h:1"},
    {"url": "http://10.0.0.5"}, {"url": "http://u:p@10.0.0.5:80"}, {"url": "http://10.0.0.5:80/path"},
    {"device": ""}, {"tags": {"GPU": "x"}}, {"slots": -1}, {"slots": 1.5}, {"slots": True}, {"state": "Ready!"},
    {"latency_ms": {"/p": float("nan")}}, {"gpu": {"index": 0, "extra": 1}}, {"gpu": {"name": 5}},
    {"model": {"name": "x", "weights": "/secret/path"}}, {"ttl_s": float("inf")},
])
def test_a_registration_checks_every_field(change):
    with pytest.raises(ValueError):
        worker(**change)


def test_a_registration_decodes_only_well_formed_entries():
    entry = worker()
    assert Registration.from_json(entry.to_json()) == entry
    with_newer_field = json.dumps(json.loads(entry.to_json()) | {"added_later": 1})
    assert Registration.from_json(with_newer_field) == entry
    for bad in ["", "[]", "{}", '{"worker_id": "a"}', "[" * 100_000]:
        with pytest.raises(ValueError):
            Registration.from_json(bad)


def test_the_settings_never_print_the_cluster_secret(monkeypatch, capsys, redis_server):
    from fastvlm_engine.cli import main

    secret = "printed-nowhere-" + uuid.uuid4().hex
    url = redis_server.url.replace("redis://", f"redis://user:{PASSWORD}@")
    monkeypatch.setenv("FASTVLM_CLUSTER_SECRET", secret)
    monkeypatch.setenv("FASTVLM_REGISTRY_URL", url)
    assert main(["settings"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert secret not in json.dumps(shown) and shown["cluster_secret"] == "**********"
