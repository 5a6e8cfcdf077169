"""The worker registry on Redis: nodes publish their workers, routers read back only what verifies.

Keys (``P`` is ``FASTVLM_REGISTRY_KEY_PREFIX``):

    P worker:<id>   string: a sealed registration (:mod:`.envelope`), expiring ``ttl_s`` after
                    its last publish (PX), so a node that stops publishing drops out by itself
    P workers       set: the ids of P worker:* (dead ids are removed by the snapshot script)
    P drained       hash: host -> a sealed ``{"host", "drained_at"}``; a host present here gets
                    no new traffic from any router

Trust. With ``FASTVLM_CLUSTER_SECRET`` every value is HMAC-signed with a key derived from it
(one per purpose, :mod:`.secret`) and :meth:`Registry.snapshot` returns only entries whose
signature verifies, whose key matches the id inside, and whose ``published_at`` is within one TTL
(plus the clock tolerance) of now. Anything else (unsigned, signed with another secret, altered,
an old signed entry written back) is dropped, counted in :attr:`Registry.rejected` and reported
by a rate-limited warning naming the worker id and node it claims, never the secret: a process
that can write into Redis but lacks the secret cannot get client traffic sent anywhere.

Drains are signed the same way, so only secret holders (admins through a router) can drain a
host. What Redis write access still allows is denial of service: deleting entries (removing
capacity, or un-draining a host, whose workers are still genuine), writing an old drain back, or
flooding the keys. Protect Redis itself with a password or ACL (in the URL) and a private network.

Without a secret (loopback-only development) entries are unsigned, :meth:`publish` refuses to
advertise any non-loopback URL, and the snapshot ignores non-loopback entries too.

Availability. Every Redis failure is :class:`RegistryUnavailable` naming the host, never the
password. A router keeps its last good snapshot and filters it with :func:`.still_valid`, so it
routes to what it knew for at most one TTL, then to nothing. The same object recovers by itself
when Redis is back. Entry expiry uses the Redis server's clock; the freshness check compares the
publishing node's clock with the reader's, so keep the hosts' clocks in sync (NTP).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError

from ..errors import RegistryUnavailable
from .addresses import is_loopback_url, url_host
from .envelope import MAX_ENVELOPE_BYTES, open_envelope, seal
from .lograte import LogLimiter, untrusted
from .registration import HOST_NAME, Registration, still_valid
from .secret import derive_key
from .url import parse_registry_url

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["Registry"]

log = logging.getLogger(__name__)

# Every live entry with its id; ids whose entry has expired leave the index in the same atomic step,
# so a node publishing at that moment can never have its fresh entry's id removed.
_SNAPSHOT = """
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local value = redis.call('GET', ARGV[1] .. id)
  if value then
    out[#out + 1] = id
    out[#out + 1] = value
  else
    redis.call('SREM', KEYS[1], id)
  end
end
return out
"""


class Registry:
    """The cluster's worker registry in one Redis database; async, connected on first use."""

    def __init__(self, url: str, *, secret: bytes | None, ttl_s: float, key_prefix: str, timeout_s: float,
                 max_clock_skew_s: float) -> None:
        """Every value comes from the settings' cluster block (:meth:`from_settings`); ``secret`` None or empty
        means unsigned, loopback-only entries."""
        if ttl_s <= 0 or timeout_s <= 0 or max_clock_skew_s < 0:
            raise ValueError("ttl_s and timeout_s must be positive and max_clock_skew_s not negative")
        if not key_prefix:
            raise ValueError("the key prefix must not be empty")
        self.target = parse_registry_url(url)
        self.ttl_s = ttl_s
        self.max_clock_skew_s = max_clock_skew_s
        self.signed = bool(secret)
        self._entry_key = derive_key(secret, "registration") if secret else None
        self._drain_key = derive_key(secret, "drain") if secret else None
        self._prefix = key_prefix
        self._rejected = 0
        self._log_limit = LogLimiter()
        # As in the job store: a couple of quick retries reconnect a pooled connection a Redis restart broke.
        self._redis = aioredis.Redis.from_url(
            self.target.url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s,
            retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), retries=2), decode_responses=False)
        self._snapshot_script = self._redis.register_script(_SNAPSHOT)

    @classmethod
    def from_settings(cls, settings: Settings) -> Registry:
        """The registry named by ``FASTVLM_REGISTRY_URL`` (which must be set), with the cluster secret."""
        if not settings.registry_url:
            raise ValueError("FASTVLM_REGISTRY_URL is not set")
        secret = settings.cluster_secret.get_secret_value().encode()
        return cls(settings.registry_url, secret=secret or None, ttl_s=settings.registry_ttl_s,
                   key_prefix=settings.registry_key_prefix, timeout_s=settings.registry_timeout_s,
                   max_clock_skew_s=settings.cluster_replay_window_s)

    def description(self) -> str:
        """For logs: host, database and key prefix; never the password."""
        return f"{self.target.description} (keys {self._prefix}*, {'signed' if self.signed else 'unsigned'})"

    def __repr__(self) -> str:
        return f"Registry({self.description()})"

    @property
    def rejected(self) -> int:
        """Entries (registrations and drains) dropped because they did not verify, since this object was made."""
        return self._rejected

    async def __aenter__(self) -> Registry:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @asynccontextmanager
    async def _available(self) -> AsyncIterator[None]:
        try:
            yield
        except (RedisError, OSError) as exc:
            raise RegistryUnavailable(f"The worker registry ({self.target.label}) is unreachable or refused the "
                                      "request.") from exc

    def _key(self, kind: str, name: str = "") -> str:
        return f"{self._prefix}{kind}:{name}" if name else f"{self._prefix}{kind}"

    # --- nodes -----------------------------------------------------------------------------------

    async def publish(self, registrations: Sequence[Registration]) -> None:
        """Write (or refresh) these workers' entries, each stamped now and expiring after ``ttl_s``.

        Raises ValueError, before writing anything, for a non-loopback URL without a cluster secret.
        """
        now = time.time()
        stamped = [dataclasses.replace(r, published_at=now, ttl_s=self.ttl_s) for r in registrations]
        for registration in stamped:
            if not self.signed and not is_loopback_url(registration.url):
                raise ValueError(f"set FASTVLM_CLUSTER_SECRET to advertise {url_host(registration.url)}: without "
                                 "it only loopback addresses may be published")
        if not stamped:
            return
        ttl_ms = max(1, math.ceil(self.ttl_s * 1000))
        async with self._available():
            async with self._redis.pipeline(transaction=True) as pipe:
                for registration in stamped:
                    pipe.set(self._key("worker", registration.worker_id),
                             seal(self._entry_key, registration.to_json()), px=ttl_ms)
                pipe.sadd(self._key("workers"), *(r.worker_id for r in stamped))
                await pipe.execute()

    async def withdraw(self, worker_ids: Iterable[str]) -> None:
        """Remove these workers' entries now (a draining node's first step: no new work)."""
        ids = list(worker_ids)
        if not ids:
            return
        async with self._available():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(*(self._key("worker", worker_id) for worker_id in ids))
                pipe.srem(self._key("workers"), *ids)
                await pipe.execute()

    # --- routers ---------------------------------------------------------------------------------

    async def snapshot(self) -> list[Registration]:
        """Every live entry that verifies, by worker id; raises RegistryUnavailable."""
        async with self._available():
            flat = await self._snapshot_script(keys=[self._key("workers")], args=[f"{self._prefix}worker:"])
        now = time.time()
        found = []
        for raw_id, value in zip(flat[0::2], flat[1::2], strict=True):
            worker_id = raw_id.decode("utf-8", "replace")
            try:
                registration = self._verified(worker_id, value, now)
            except ValueError as exc:
                self._reject(f"worker {untrusted(worker_id)} of node {_claimed_node(value)}", str(exc))
                continue
            found.append(registration)
        return sorted(found, key=lambda r: r.worker_id)

    def _verified(self, worker_id: str, value: bytes, now: float) -> Registration:
        registration = Registration.from_json(open_envelope(self._entry_key, value))
        if registration.worker_id != worker_id:
            raise ValueError("stored under another worker's id")
        if not still_valid(registration, now, skew_s=self.max_clock_skew_s):
            raise ValueError("stale or future-dated (an old entry written back, or clocks out of sync)")
        if not self.signed and not is_loopback_url(registration.url):
            raise ValueError("a non-loopback URL, and this process has no cluster secret")
        return registration

    def _reject(self, what: str, reason: str) -> None:
        self._rejected += 1
        skipped = self._log_limit.allow()
        if skipped is not None:
            log.warning("ignored a registry entry for %s: %s", what, reason,
                        extra={"registry": self.target.label, "ignored_since_last_log": skipped,
                               "rejected_total": self._rejected})

    # --- host drain (shared by every router) ------------------------------------------------------

    async def set_host_drained(self, host: str, drained: bool) -> None:
        """Stop (or resume) new traffic to every worker of ``host``, for every router of the cluster."""
        if not HOST_NAME.fullmatch(host):
            raise ValueError(f"not a host name: {host!r}")
        async with self._available():
            if drained:
                entry = json.dumps({"host": host, "drained_at": time.time()}, sort_keys=True, separators=(",", ":"))
                await self._redis.hset(self._key("drained"), host, seal(self._drain_key, entry))
            else:
                await self._redis.hdel(self._key("drained"), host)

    async def drained_hosts(self) -> set[str]:
        """Hosts drained by a secret holder (entries that do not verify are dropped and counted)."""
        async with self._available():
            stored = await self._redis.hgetall(self._key("drained"))
        hosts = set()
        for raw_host, value in stored.items():
            host = raw_host.decode("utf-8", "replace")
            try:
                entry = json.loads(open_envelope(self._drain_key, value))
                if not isinstance(entry, dict) or entry.get("host") != host:
                    raise ValueError("stored under another host's name")
            except (ValueError, RecursionError) as exc:
                self._reject(f"the drain of host {untrusted(host)}", str(exc))
                continue
            hosts.add(host)
        return hosts

    # --- lifecycle --------------------------------------------------------------------------------

    async def ping(self) -> None:
        """Raises RegistryUnavailable unless Redis answers."""
        async with self._available():
            await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()


def _claimed_node(value: bytes) -> str:
    """The node an entry claims to come from, for the warning only (it may be forged or missing)."""
    if len(value) > MAX_ENVELOPE_BYTES:
        return "?"
    try:
        document = json.loads(value)
        node = json.loads(document["entry"]).get("node_id", "?")
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError, RecursionError):
        node = "?"
    return untrusted(node)
