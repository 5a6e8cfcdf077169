"""The cluster pieces on one host's loopback: node refusals, an unsigned loopback cluster, IPv6 worker URLs."""

from __future__ import annotations

import hashlib
import subprocess

import psutil
import pytest

from tests.helpers.procs import FASTVLM, http, spawn, start_router, wait_until, wait_workers_ready, worker_env
from tests.helpers.redis_server import start_redis


@pytest.mark.parametrize(("settings", "says"), [
    ({}, "set FASTVLM_REGISTRY_URL"),
    ({"registry_url": "redis://127.0.0.1:1/0", "advertise_host": "10.1.2.3"},
     "set FASTVLM_CLUSTER_SECRET to advertise 10.1.2.3"),
])
def test_a_node_refuses_to_start_unsafe_or_useless(tmp_path, settings, says):
    result = subprocess.run([*FASTVLM, "node"], env=worker_env(state_dir=tmp_path, **settings),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr


def test_an_unsigned_loopback_cluster_routes_to_a_node_and_leaves_cleanly(tmp_path, tiny_model_dir, media_root):
    redis = start_redis(tmp_path / "redis")
    common = dict(model=tiny_model_dir, media_roots=media_root, registry_url=redis.url, registry_ttl_s=3,
                  registry_heartbeat_s=0.5, heartbeat_interval_s=0.5, max_workers=1)
    node = router = None
    try:
        node = spawn([*FASTVLM, "node"], worker_env(**common, node_name="solo", host_tags="zone=here",
                                                    state_dir=tmp_path / "node"), tmp_path / "node.log")
        router = start_router(tmp_path, tiny_model_dir, local_workers="false",
                              **{k: v for k, v in common.items() if k != "model"})
        health = wait_workers_ready(router, 1)
        assert [h["host"] for h in health["hosts"]] == ["solo"]
        status, headers, body = http("POST", router.base_url + "/predict_image",
                                     {"image_path": "astronaut.jpg", "max_new_tokens": 3},
                                     headers={"X-FastVLM-Tags": "zone=here"})
        assert status == 200 and headers["x-fastvlm-worker"] == "solo/w0", body
        node.signal(15)
        assert node.popen.wait(timeout=60) == 0
        wait_until(lambda: http("GET", router.base_url + "/healthz")[2]["hosts"] == [], 20, "the node withdrawn")
        assert "without it only loopback" not in node.log()
    finally:
        for proc in (node, router):
            if proc is not None:
                proc.stop()
        redis.stop()


def test_workers_on_ipv6_addresses_are_routed_to(tmp_path, tiny_model_dir, media_root):
    router = start_router(tmp_path, tiny_model_dir, media_roots=media_root, worker_host="::1", max_workers=1)
    try:
        health = wait_workers_ready(router, 1)
        assert health["workers"][0]["port"]
        status, _, body = http("POST", router.base_url + "/predict_image",
                               {"image_path": "astronaut.jpg", "max_new_tokens": 3})
        assert status == 200, body
        worker = psutil.Process(health["workers"][0]["pid"])
        listening = [c.laddr for c in worker.net_connections(kind="tcp6") if c.status == psutil.CONN_LISTEN]
        assert [address.ip for address in listening] == ["::1"]
    finally:
        router.stop()


def test_a_router_with_its_own_workers_and_a_registry_tags_them_and_will_not_pretend_to_drain_them(
        tmp_path, tiny_model_dir, media_root):
    redis = start_redis(tmp_path / "redis")
    admin_key = "admin-" + "a" * 24
    router = start_router(tmp_path, tiny_model_dir, media_roots=media_root, registry_url=redis.url, max_workers=1,
                          host_tags="zone=here", admin_keys=hashlib.sha256(admin_key.encode()).hexdigest())
    try:
        health = wait_workers_ready(router, 1)
        local = health["hosts"][0]
        assert local["tags"] == {"zone": "here"}, health["hosts"]
        status, headers, body = http("POST", router.base_url + "/predict_image",
                                     {"image_path": "astronaut.jpg", "max_new_tokens": 3},
                                     headers={"X-FastVLM-Tags": "zone=here"})
        assert status == 200 and headers["x-fastvlm-worker"] == health["workers"][0]["id"], body
        status, _, body = http("POST", router.base_url + f"/admin/hosts/{local['host']}/drain",
                               headers={"Authorization": f"Bearer {admin_key}"})
        assert status == 404 and body["error"]["code"] == "host_not_found", body
        assert "own workers" in body["error"]["message"]
        assert http("GET", router.base_url + "/healthz")[2]["hosts"][0]["drained"] is False
    finally:
        router.stop()
        redis.stop()
