"""A real cluster for tests and benchmarks: Redis, routers and node agents, each on its own network namespace.

Every process is a real ``fastvlm`` (or ``redis-server``) started inside a host of a
:class:`tests.helpers.netns.Network`; clients run from a separate ``client`` host so that cutting a
node's link never cuts the client off. Settings are short (TTL, heartbeats) so failures show within
seconds; nothing here asserts a duration.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.helpers.netns import NetnsHost, Network
from tests.helpers.procs import FASTVLM, Proc, http, wait_until, worker_env
from tests.helpers.redis_server import RedisServer, start_redis_on

ROUTER_PORT = 9000
ADMIN_KEY = "admin-" + "k" * 24
FAST = dict(registry_ttl_s=3, registry_heartbeat_s=0.5, heartbeat_interval_s=0.5, heartbeat_timeout_s=1.0,
            heartbeat_failures=2, worker_connect_timeout_s=1.0, shutdown_grace_s=10)
"""Failure detection in a few seconds: TTL 3 s, probes every 0.5 s, lost after 2 misses."""


@dataclass
class Node:
    name: str
    host: NetnsHost
    proc: Proc
    tags: str

    def worker_pids(self) -> list[int]:
        try:
            return [child.pid for child in psutil.Process(self.proc.pid).children()]
        except psutil.Error:
            return []


@dataclass
class Router:
    host: NetnsHost
    proc: Proc

    @property
    def base_url(self) -> str:
        return self.host.url(ROUTER_PORT)


@dataclass
class Cluster:
    net: Network
    tmp: Path
    model_dir: str
    media_root: str
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    redis_password: str = field(default_factory=lambda: secrets.token_hex(12))
    redis: RedisServer | None = None
    client: NetnsHost | None = None
    nodes: dict[str, Node] = field(default_factory=dict)
    routers: list[Router] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def start(self) -> Cluster:
        self.client = self.net.host("client")
        # A password, as any Redis reachable from a network should have (redis-server's protected mode
        # refuses non-loopback clients of a password-less server anyway); it travels in the URL only.
        self.redis = start_redis_on(self.net.host("redis"), self.tmp / "redis", password=self.redis_password)
        return self

    def _env(self, **settings: Any) -> dict[str, str]:
        base = dict(model=self.model_dir, media_roots=self.media_root, registry_url=self.redis.url,
                    cluster_secret=self.secret, log_level="INFO", **FAST)
        base.update(self.extra)  # the cluster's own choices, then this process's
        base.update(settings)
        return worker_env(**base)

    def start_node(self, name: str, tags: str = "", *, pin_cpu: int | None = None, **settings: Any) -> Node:
        """A node agent on a new host ``name`` (or the existing one, after a kill); ``pin_cpu`` runs it and
        its workers on that core only."""
        host = self.nodes[name].host if name in self.nodes else self.net.host(name)
        env = self._env(node_name=name, host_tags=tags, advertise_host=host.address, max_workers=1,
                        state_dir=self.tmp / f"state-{name}", **settings)
        pin = ["taskset", "-c", str(pin_cpu)] if pin_cpu is not None else []
        proc = host.spawn([*pin, *FASTVLM, "node"], env=env, log_path=self.tmp / f"{name}-{time.monotonic_ns()}.log")
        node = self.nodes[name] = Node(name=name, host=host, proc=proc, tags=tags)
        return node

    def start_router(self, name: str = "router", **settings: Any) -> Router:
        host = self.net.host(name)
        env = self._env(host=host.address, port=ROUTER_PORT, local_workers="false",
                        state_dir=self.tmp / f"state-{name}",
                        admin_keys=hashlib.sha256(ADMIN_KEY.encode()).hexdigest(), **settings)
        router = Router(host=host, proc=host.spawn([*FASTVLM, "serve"], env=env, log_path=self.tmp / f"{name}.log"))
        self.routers.append(router)
        return router

    # --- from the client host ----------------------------------------------------------------

    def http(self, method: str, url: str, body: Any = None, headers: dict | None = None,
             timeout: float = 60.0) -> tuple[int, dict, Any]:
        return self.client.http(method, url, body, headers, timeout)

    def health(self, router: Router) -> dict:
        status, _, body = self.http("GET", router.base_url + "/healthz", timeout=10)
        if status != 200:
            raise AssertionError(f"/healthz answered {status}: {body}")
        return body

    def ready_hosts(self, router: Router) -> dict[str, int]:
        """Ready workers per host, as this router sees them."""
        return {host["host"]: host["ready_workers"] for host in self.health(router)["hosts"]}

    def wait_ready(self, router: Router, hosts: dict[str, int], timeout: float = 180.0) -> None:
        """Until the router sees at least these many ready workers on these hosts."""
        def enough() -> bool:
            try:
                ready = self.ready_hosts(router)
            except Exception:
                return False
            return all(ready.get(host, 0) >= count for host, count in hosts.items())

        wait_until(enough, timeout, f"ready workers {hosts} behind {router.base_url}", router.proc, interval=0.25)

    def wait_gone(self, router: Router, host: str, timeout: float = 60.0) -> None:
        """Until the router has no ready worker on ``host``."""
        wait_until(lambda: self.ready_hosts(router).get(host, 0) == 0, timeout,
                   f"{host} out of rotation behind {router.base_url}", router.proc, interval=0.2)

    def predict(self, router: Router, *, tags: str | None = None, tokens: int = 4,
                image: str = "astronaut.jpg", timeout: float = 120.0) -> tuple[int, str | None, Any]:
        """(status, worker id, body) of one image request sent from the client host."""
        return self.predict_at_once(router, 1, tags=tags, tokens=tokens, image=image, timeout=timeout)[0]

    def predict_at_once(self, router: Router, count: int, *, tags: str | None = None, tokens: int = 16,
                        image: str = "astronaut.jpg", timeout: float = 120.0) -> list[tuple[int, str | None, Any]]:
        """(status, worker id, body) of ``count`` image requests sent together from the client host (an idle
        cluster sends sequential requests to its fastest worker; concurrent ones spread by load)."""
        headers = {"X-FastVLM-Tags": tags} if tags is not None else None
        body = {"image_path": image, "max_new_tokens": tokens}
        calls = [self.client.submit(http, "POST", router.base_url + "/predict_image", body, headers, timeout)
                 for _ in range(count)]
        answers = []
        for call in calls:
            status, response_headers, answer = call.result()
            worker = next((v for k, v in response_headers.items() if k.lower() == "x-fastvlm-worker"), None)
            answers.append((status, worker, answer))
        return answers

    def redis_client(self):
        """A redis-py client for the registry's Redis, to be used through ``self.redis.host.call``."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.redis.port, password=self.redis_password)

    def stop(self) -> None:
        for proc in [r.proc for r in self.routers] + [n.proc for n in self.nodes.values()]:
            proc.stop(timeout=20)
        if self.redis is not None:
            self.redis.stop()


def host_of(worker_id: str | None) -> str | None:
    """``node-a/w0`` -> ``node-a``."""
    return worker_id.split("/", 1)[0] if worker_id and "/" in worker_id else None


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
