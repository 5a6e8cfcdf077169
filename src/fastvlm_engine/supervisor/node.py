"""``fastvlm node``: a worker host with no client-facing API.

It runs this host's supervisor exactly as ``fastvlm serve`` does (memory-aware placement per
GPU, heartbeats, respawn, quarantine) and publishes its workers in the registry, where every
router of the cluster finds them. Routers call the workers directly, signing each request with
the cluster secret; the node itself answers nothing.

On SIGTERM/SIGINT it leaves without cutting anything: its entries say ``draining`` at once (no
router sends new work), it waits one registry heartbeat for routers to notice, its workers
finish what they hold (they drain on SIGTERM themselves, within ``shutdown_grace_s``), and its
entries are withdrawn. Killed outright, its workers die with it (PR_SET_PDEATHSIG) and its
entries expire after ``registry_ttl_s``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

from ..cluster.addresses import is_loopback_host
from ..cluster.publisher import Publisher
from ..cluster.registry import Registry
from ..config import Settings
from ..errors import RegistryUnavailable
from ..web.upstream import Upstream
from .inventory import make_inventory
from .pool import Supervisor

__all__ = ["NodeRefused", "bind_host", "check_node_settings", "node_name", "run_node"]

log = logging.getLogger(__name__)


class NodeRefused(ValueError):
    """The node's settings cannot form a safe cluster member; the message says what to set."""


def node_name(settings: Settings) -> str:
    return settings.node_name or socket.gethostname()


def bind_host(settings: Settings) -> str:
    """Where the workers listen: the configured worker_host, unless that is loopback and an
    address to advertise was given (then that address, which must be this host's)."""
    if settings.advertise_host and is_loopback_host(settings.worker_host):
        return settings.advertise_host
    return settings.worker_host


def check_node_settings(settings: Settings) -> str:
    """The address this node advertises, after refusing what would be unsafe or useless."""
    if not settings.registry_url:
        raise NodeRefused("set FASTVLM_REGISTRY_URL (redis://host:port/db): a node publishes its workers there")
    advertised = settings.advertise_host or settings.worker_host
    if not settings.cluster_secret.get_secret_value() and not is_loopback_host(advertised):
        raise NodeRefused(f"set FASTVLM_CLUSTER_SECRET to advertise {advertised}: without it a node may only "
                          "advertise a loopback address (its workers would answer anyone on the network)")
    return advertised


async def serve_node(settings: Settings, stop: asyncio.Event) -> None:
    """Run until ``stop`` is set, then leave the cluster gracefully."""
    advertised = check_node_settings(settings)
    name = node_name(settings)
    secret = settings.cluster_secret.get_secret_value()
    if not secret:
        log.warning("no cluster secret: this node's workers answer any process on this host (loopback only)")
    inventory = make_inventory(settings.simulate_gpus, settings.simulate_gpu_worker_mib)
    upstream = Upstream(connect_timeout_s=settings.worker_connect_timeout_s)
    supervisor = Supervisor(settings.model_copy(update={"worker_host": bind_host(settings)}), inventory, upstream,
                            host_name=name, tags=settings.host_tags, advertise_host=advertised,
                            local_tokens=bool(secret))
    registry = Registry.from_settings(settings)
    publisher = Publisher(registry, node_id=name, endpoints=supervisor.endpoints,
                          gpus=lambda: {g.index: {"index": g.index, "name": g.name,
                                                  "memory_total_bytes": g.total_bytes,
                                                  "memory_free_bytes": g.free_bytes} for g in inventory.gpus()},
                          interval_s=settings.registry_heartbeat_s, video_slots=settings.max_video_concurrent)
    supervisor.on_change = lambda worker: publisher.poke()
    try:
        await registry.ping()
    except RegistryUnavailable as exc:
        log.warning("%s The node starts anyway and publishes once it is reachable.", exc)
    log.info("node %s: workers advertised at %s, tags %s, registry %s", name, advertised,
             settings.host_tags or "{}", registry.description())
    await upstream.start()
    publishing = asyncio.get_running_loop().create_task(publisher.run(), name="publisher")
    try:
        await supervisor.start()
        await stop.wait()
        log.info("node %s leaving: no new work, in-flight requests get up to %.0fs", name, settings.shutdown_grace_s)
        supervisor.start_draining()
        await publisher.start_draining()
        await asyncio.sleep(settings.registry_heartbeat_s)  # every router reads the registry once more
        await supervisor.stop(grace=settings.shutdown_grace_s)
    finally:
        publishing.cancel()
        await asyncio.gather(publishing, return_exceptions=True)
        await publisher.leave()
        await supervisor.stop(grace=2.0)
        await upstream.close()
        await registry.close()
        inventory.close()


def run_node(settings: Settings) -> int:
    """Serve until a signal; returns the exit status."""
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve_node(settings, stop)

    try:
        asyncio.run(main())
    except NodeRefused as exc:
        log.error("fastvlm node: %s", exc)
        return 2
    return 0

