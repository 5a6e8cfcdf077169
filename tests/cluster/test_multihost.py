"""Several hosts for real: a router, two node agents and Redis, each in its own network namespace.

Node A offers ``gpu=big,zone=a``, node B ``gpu=small,zone=b``; every request is sent from a
separate client host. The shared cluster serves the tests that leave it as they found it; the
ones that partition or kill something build their own.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.cluster.cluster_kit import ADMIN_KEY, Cluster, host_of, wait_for
from tests.helpers.netns import NetnsUnavailable, Network
from tests.helpers.procs import pid_alive

A_TAGS, B_TAGS = "gpu=big,zone=a", "gpu=small,zone=b"


def _network(prefix: str) -> Network:
    try:
        return Network(prefix=prefix).open()
    except NetnsUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def shared(tmp_path_factory, tiny_model_dir, media_root) -> Iterator[Cluster]:
    net = _network("fvmh")
    cluster = Cluster(net, tmp_path_factory.mktemp("cluster"), tiny_model_dir, str(media_root))
    try:
        cluster.start()
        cluster.start_node("node-a", A_TAGS)
        cluster.start_node("node-b", B_TAGS)
        router = cluster.start_router()
        cluster.wait_ready(router, {"node-a": 1, "node-b": 1})
        yield cluster
    finally:
        cluster.stop()
        net.cleanup()


@pytest.fixture
def fresh(tmp_path, tiny_model_dir, media_root) -> Iterator[Cluster]:
    net = _network("fvmx")
    cluster = Cluster(net, tmp_path, tiny_model_dir, str(media_root))
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        net.cleanup()


def test_both_nodes_serve_and_health_groups_workers_by_host_with_tags(shared):
    router = shared.routers[0]
    answers = shared.predict_at_once(router, 8)
    hosts = Counter(host_of(worker) for status, worker, _ in answers if status == 200)
    assert set(hosts) == {"node-a", "node-b"} and sum(hosts.values()) == 8, answers
    health = shared.health(router)
    by_host = {h["host"]: h for h in health["hosts"]}
    assert by_host["node-a"]["tags"] == {"gpu": "big", "zone": "a"}
    assert by_host["node-b"]["tags"] == {"gpu": "small", "zone": "b"}
    assert all(w["remote"] and w["url"].startswith(f"http://{shared.nodes[h].host.address}:")
               for h in ("node-a", "node-b") for w in by_host[h]["workers"])
    assert health["registry"]["rejected_entries"] == 0
    logs = "".join(p.log() for p in [router.proc, *(n.proc for n in shared.nodes.values())])
    assert shared.redis_password not in logs and shared.secret not in logs
    assert shared.redis_password not in str(health)


def test_tags_route_only_to_matching_hosts_and_nothing_matching_is_its_own_503(shared):
    router = shared.routers[0]
    for tags, host in (("gpu=big", "node-a"), ("zone=b", "node-b"), ("gpu=small,zone=b", "node-b")):
        answers = [shared.predict(router, tags=tags) for _ in range(4)]
        assert all(status == 200 for status, _, _ in answers), answers
        assert {host_of(worker) for _, worker, _ in answers} == {host}, (tags, answers)
    status, _, body = shared.predict(router, tags="gpu=big,zone=b")  # each tag exists, never together
    assert status == 503 and body["error"]["code"] == "no_matching_workers", body
    assert body["error"]["retry_after_sec"] > 0 and body["error"]["required_tags"] == {"gpu": "big", "zone": "b"}
    status, _, body = shared.predict(router, tags="gpu=Big!")
    assert status == 400 and body["error"]["code"] == "invalid_tags", body


def test_a_direct_call_to_a_nodes_worker_without_the_cluster_credential_is_refused(shared):
    url = next(w["url"] for h in shared.health(shared.routers[0])["hosts"] if h["host"] == "node-a"
               for w in h["workers"])
    for method, path, body in (("GET", "/worker_health", None), ("GET", "/metrics", None),
                               ("POST", "/predict_image", {"image_path": "astronaut.jpg"})):
        status, _, answer = shared.http(method, url + path, body)
        assert status == 401 and answer["error"]["code"] == "unauthorized", (path, status, answer)
    forged = {"X-FastVLM-Cluster-Time": "1", "X-FastVLM-Cluster-Nonce": "n" * 16,
              "X-FastVLM-Cluster-Signature": "0" * 64}
    assert shared.http("GET", url + "/worker_health", headers=forged)[0] == 401


def test_a_rogue_registration_gets_no_client_traffic(shared):
    """A process that can write into Redis but lacks the secret registers a fake worker on its own
    host: the router never sends it anything."""
    rogue = shared.net.host("rogue")
    listener = rogue.call(socket.create_server, (rogue.address, 8123))
    connections: list[socket.socket] = []
    accepting = threading.Thread(target=lambda: _accept_all(listener, connections), daemon=True)
    accepting.start()
    entry = ('{"device":"cpu","gpu":null,"host":"rogue","in_flight":0,"latency_ms":{},"model":null,'
             '"node_id":"rogue","published_at":%f,"slots":64,"state":"ready","tags":{},"ttl_s":60,'
             '"url":"http://%s:8123","video_in_flight":0,"video_slots":1,"worker_id":"rogue/w0"}')
    client = shared.redis.host.call(shared.redis_client)
    try:
        def write_rogue() -> None:
            import time
            client.set("fastvlm:cluster:worker:rogue/w0", entry % (time.time(), rogue.address), px=60_000)
            client.sadd("fastvlm:cluster:workers", "rogue/w0")

        shared.redis.host.call(write_rogue)
        router = shared.routers[0]
        wait_for(lambda: shared.health(router)["registry"]["rejected_entries"] > 0, 20, "the rogue entry refused")
        answers = [shared.predict(router) for _ in range(8)]
        assert all(status == 200 for status, _, _ in answers)
        assert {host_of(worker) for _, worker, _ in answers} <= {"node-a", "node-b"}
        assert "rogue" not in {h["host"] for h in shared.health(router)["hosts"]}
        assert connections == []
    finally:
        shared.redis.host.call(client.delete, "fastvlm:cluster:worker:rogue/w0")
        shared.redis.host.call(client.srem, "fastvlm:cluster:workers", "rogue/w0")
        shared.redis.host.call(client.close)
        listener.close()


def _accept_all(listener: socket.socket, into: list) -> None:
    while True:
        try:
            into.append(listener.accept()[0])
        except OSError:
            return


def test_two_routers_share_the_registry_and_an_admin_drain_reaches_both(shared):
    first = shared.routers[0]
    second = shared.routers[1] if len(shared.routers) > 1 else shared.start_router("router-2")
    shared.wait_ready(second, {"node-a": 1, "node-b": 1})
    answers = shared.predict_at_once(second, 8)
    assert {host_of(worker) for status, worker, _ in answers if status == 200} == {"node-a", "node-b"}, answers
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    status, _, body = shared.http("POST", first.base_url + "/admin/hosts/node-b/drain", headers={"X-API-Key": "x"})
    assert status == 401, body
    status, _, body = shared.http("POST", first.base_url + "/admin/hosts/nowhere/drain", headers=auth)
    assert status == 404 and body["error"]["code"] == "host_not_found", body
    status, _, body = shared.http("POST", first.base_url + "/admin/hosts/node-b/drain", headers=auth)
    assert status == 200 and body == {"host": "node-b", "drained": True}, body
    try:
        shared.wait_gone(second, "node-b")  # the other router follows through the registry
        assert {host_of(shared.predict(r)[1]) for r in (first, second) for _ in range(4)} == {"node-a"}
        drained = {h["host"]: h["drained"] for h in shared.health(second)["hosts"]}
        assert drained == {"node-a": False, "node-b": True}
    finally:
        status, _, body = shared.http("DELETE", first.base_url + "/admin/hosts/node-b/drain", headers=auth)
        assert status == 200, body
    shared.wait_ready(second, {"node-b": 1})


def _load(cluster: Cluster, router, stop: threading.Event, results: Counter, failures: list, clients: int = 3,
          limit: int = 2000) -> list[threading.Thread]:
    """Closed-loop image clients on the client host until ``stop`` (each bounded to ``limit`` requests)."""
    def loop() -> None:
        for _ in range(limit):
            if stop.is_set():
                return
            try:
                status, worker, body = cluster.predict(router, timeout=60)
            except Exception as exc:  # a connection-level failure counts as a failed request
                status, worker, body = None, None, repr(exc)
            results[host_of(worker) if status == 200 else "failed"] += 1
            if status != 200:
                failures.append((status, body))

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    return threads


def test_a_partition_fails_no_image_request_and_the_host_rejoins(fresh):
    a = fresh.start_node("node-a", A_TAGS)
    fresh.start_node("node-b", B_TAGS)
    router = fresh.start_router()
    fresh.wait_ready(router, {"node-a": 1, "node-b": 1})
    stop, results, failures = threading.Event(), Counter(), []
    threads = _load(fresh, router, stop, results, failures)
    try:
        wait_for(lambda: results["node-a"] >= 5 and results["node-b"] >= 5, 60, "traffic on both nodes")
        fresh.net.partition(a.host)
        fresh.wait_gone(router, "node-a", timeout=30)  # within the TTL plus a probe round
        after_cut = Counter(results)
        wait_for(lambda: results["node-b"] >= after_cut["node-b"] + 10, 60, "node B absorbing the load")
        assert results["node-a"] == after_cut["node-a"]  # nothing more went to (or came back from) A
        fresh.net.heal(a.host)
        fresh.wait_ready(router, {"node-a": 1}, timeout=60)
        healed = Counter(results)
        wait_for(lambda: results["node-a"] > healed["node-a"], 60, "node A taking traffic again")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=90)
    assert failures == [] and results["failed"] == 0, failures[:5]


def test_sigkill_of_a_node_agent_kills_its_workers_and_its_entries_expire(fresh):
    fresh.start_node("node-a", A_TAGS)
    b = fresh.start_node("node-b", B_TAGS)
    router = fresh.start_router()
    fresh.wait_ready(router, {"node-a": 1, "node-b": 1})
    workers = b.worker_pids()
    assert workers, "node B's workers are its children"
    b.proc.signal(9)
    wait_for(lambda: not any(pid_alive(pid) for pid in workers), 30, "node B's workers to die with it")
    wait_for(lambda: "node-b" not in {h["host"] for h in fresh.health(router)["hosts"]}, 30,
             "node B's entries to expire")
    # The router may drop B first (its probes fail faster than the TTL); the entry then expires in Redis.
    wait_for(lambda: fresh.redis.host.call(lambda: fresh.redis_client().keys("*worker:node-b*")) == [], 30,
             "node B's registry entry to expire in Redis")
    assert all(status == 200 and host_of(worker) == "node-a"
               for status, worker, _ in (fresh.predict(router) for _ in range(4)))


def test_sigterm_drains_a_node_without_cutting_its_requests(fresh):
    a = fresh.start_node("node-a", A_TAGS)
    router = fresh.start_router()
    fresh.wait_ready(router, {"node-a": 1})
    pending = fresh.client.submit(fresh.predict, router, tokens=200)
    wait_for(lambda: any(w["in_flight"] for h in fresh.health(router)["hosts"] for w in h["workers"]), 30,
             "the long request in flight")
    a.proc.signal(15)
    status, worker, body = pending.result(timeout=120)
    assert status == 200 and host_of(worker) == "node-a", body
    assert a.proc.popen.wait(timeout=60) == 0
    assert "node-a" not in {h["host"] for h in fresh.health(router)["hosts"]}
    status, _, body = fresh.predict(router)
    assert status == 503 and body["error"]["code"] == "no_ready_workers", body


def test_queue_mode_spans_hosts_a_router_without_workers_takes_jobs(fresh):
    fresh.extra = {"queue_url": fresh.redis.url, "mode": "queue"}
    fresh.start_node("node-a", A_TAGS)
    router = fresh.start_router()
    wait_for(lambda: _answers(fresh, router.base_url + "/readyz"), 60, "the router (no workers of its own) ready")
    statuses = []
    for _ in range(4):
        status, _, body = fresh.http("POST", router.base_url + "/predict_image",
                                     {"image_path": "astronaut.jpg", "max_new_tokens": 4})
        assert status == 202, body
        statuses.append(body["job_id"])
    for job_id in statuses:
        url = f"{router.base_url}/job/{job_id}"
        wait_for(lambda url=url: fresh.http("GET", url + "?wait=5")[2]["status"] == "succeeded", 120, f"job {job_id}")
        job = fresh.http("GET", f"{router.base_url}/job/{job_id}")[2]
        assert isinstance(job["result"]["output"], str) and job["attempts"] == 1, job


def _answers(cluster: Cluster, url: str) -> bool:
    try:
        return cluster.http("GET", url, timeout=5)[0] == 200
    except OSError:
        return False
