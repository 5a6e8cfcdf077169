"""Hosts for multi-host tests: each one a Linux network namespace on this machine, all joined by one test-owned switch.

Layout (nothing is added to the root namespace, so parallel runs and the machine's own network never interfere):

    <base>-switch   a namespace holding only the bridge br0 and its ports p1, p2, ... (no address: a plain L2 switch)
    <base>-<name>   one per host: lo (up, so 127.0.0.1 works inside) and eth0, the far end of port pK,
                    with 10.77.0.(K+1)/24 and fd77::(K+1)/64 by default; no default route, no NAT, no way out

``<base>`` is ``<prefix>-<pid>-<n>``: the pid keeps parallel runs apart and lets a later run recognise (and delete) what
a crashed run left behind; ``n`` counts networks within one process.

Reaching services from the test process. The root namespace gets no leg on the bridge. Instead each host lends a small
pool of threads that entered its namespace (setns works per thread), and ``host.call(fn)``, ``host.http(...)`` and
``host.connect(...)`` run there; sockets made that way stay in the host's namespace whichever thread reads them. The
trade-off: client code (an HTTP call, a Redis client, an asyncio load loop) must be run through ``host.call`` or
``host.submit`` (or as a process with ``host.spawn``) instead of directly on the test's thread. In exchange the root
namespace never gains an address or a route, two runs cannot pick the same subnet and break each other's routing, and
there is nothing to forget to delete there. Give the test's client its own host (say ``net.host("client")``) so that
partitioning a node does not cut the client off too.

Clean-up (``Network.cleanup``; idempotent; also at interpreter exit and on SIGTERM): processes started with
``host.spawn`` get SIGTERM then SIGKILL by process group, anything else still running in our namespaces (a daemon that
left its group) gets SIGKILL, then the namespaces are deleted, which removes every link and the bridge with them. A
run killed with SIGKILL cannot clean up; the next ``Network.open`` with the same prefix deletes namespaces whose pid is
dead.
"""

from __future__ import annotations

import atexit
import enum
import ipaddress
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from tests.helpers.netns_ip import (
    IP,
    NetnsCommandFailed,
    NetnsUnavailable,
    delete_namespaces,
    enter_namespace,
    ip,
    kill_namespace_pids,
    list_namespaces,
)
from tests.helpers.procs import Proc, http, pid_alive, spawn

__all__ = ["Network", "NetnsHost", "State", "NetnsUnavailable", "NetnsCommandFailed", "reap_stale_namespaces",
           "cleanup_all"]

T = TypeVar("T")
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,23}$")
_PREFIX = re.compile(r"^[a-z][a-z0-9]{0,7}$")
_RESERVED = {"switch"}
_sequence = itertools.count(1)
_open_networks: set[Network] = set()
_hooks_installed = False


class State(enum.Enum):
    """A network's life: made, open (namespaces may exist), being cleaned up, gone."""

    NEW = "new"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class NetnsHost:
    """One "machine": a network namespace with one link to the switch. Made by ``Network.host``."""

    def __init__(self, network: Network, name: str, namespace: str, address: str, address6: str, port: str) -> None:
        self.name = name
        self.namespace = namespace
        self.address = address
        self.address6 = address6
        self.port = port  # its port on the switch: the one partition() takes down
        self._network = network
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"NetnsHost({self.name!r}, namespace={self.namespace!r}, address={self.address!r})"

    def url(self, port: int, path: str = "", *, ipv6: bool = False) -> str:
        """``http://<address>:<port><path>`` for a service on this host, over IPv4 or (bracketed) IPv6."""
        host = f"[{self.address6}]" if ipv6 else self.address
        return f"http://{host}:{port}{path}"

    def spawn(self, args: list[str], *, env: dict[str, str], log_path: Path) -> Proc:
        """Start ``args`` inside this host (``ip netns exec``) in its own session, output to ``log_path``.

        ``ip netns exec`` execs the command, so the returned pid is the command's; the network stops its process group
        in clean-up. ``env`` is the whole environment of the process: nothing is inherited.
        """
        self._network._require_open()
        proc = spawn([IP, "netns", "exec", self.namespace, *args], env, log_path)
        self._network._adopt(proc)
        return proc

    def run(self, args: list[str], *, env: dict[str, str] | None = None,
            timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run a short command inside this host and capture its output (it is not tracked: it must end by itself).

        ``env`` defaults to just PATH.
        """
        self._network._require_open()
        return subprocess.run([IP, "netns", "exec", self.namespace, *args], capture_output=True, text=True,
                              env=env if env is not None else {"PATH": os.environ.get("PATH", os.defpath)},
                              timeout=timeout, check=False)

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` on one of this host's threads (inside its namespace); returns its future."""
        return self._executor().submit(fn, *args, **kwargs)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` run inside this host; returns its result or raises its exception."""
        return self.submit(fn, *args, **kwargs).result()

    def http(self, method: str, url: str, body: object | bytes | None = None, headers: dict | None = None,
             timeout: float = 60.0) -> tuple[int, dict, dict | str]:
        """One HTTP request sent from this host (see ``procs.http``); connection failures raise ``URLError``."""
        return self.call(http, method, url, body, headers, timeout)

    def connect(self, address: str, port: int, timeout: float = 5.0) -> socket.socket:
        """A TCP connection opened from this host; the caller closes it."""
        return self.call(socket.create_connection, (address, port), timeout)

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            self._network._require_open()
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self._network.threads_per_host,
                                                thread_name_prefix=f"netns-{self.name}",
                                                initializer=enter_namespace, initargs=(self.namespace,))
            return self._pool

    def _release_threads(self) -> None:
        """Stop taking calls. A call still blocked (on a partitioned peer) ends at its own timeout; the kernel frees
        the namespace when that thread exits, after its name is already gone."""
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None


class Network:
    """A set of hosts on one switch, all of it removed by ``cleanup`` (or on leaving the ``with`` block).

        with Network(prefix="fvt") as net:
            redis, a = net.host("redis"), net.host("node-a")
            proc = a.spawn([...], env=env, log_path=tmp_path / "a.log")
            status, _, body = a.http("GET", redis.url(8000, "/healthz"))
            with net.partitioned(a):
                ...

    Arguments:
        prefix: first part of every namespace name (lower-case letters and digits, at most 8); a later ``open`` with
            the same prefix deletes namespaces of runs whose pid is dead.
        subnet, subnet6: the private ranges host addresses come from (host K gets the (K+1)-th address).
        threads_per_host: how many calls ``host.submit`` runs at once per host.
        stop_timeout: how long spawned processes get between SIGTERM and SIGKILL in clean-up.
    """

    def __init__(self, prefix: str = "fvt", *, subnet: str = "10.77.0.0/24", subnet6: str = "fd77::/64",
                 threads_per_host: int = 8, stop_timeout: float = 10.0) -> None:
        if not _PREFIX.match(prefix):
            raise ValueError(f"prefix must be 1-8 lower-case letters or digits starting with a letter, got {prefix!r}")
        self.subnet = ipaddress.IPv4Network(subnet)
        self.subnet6 = ipaddress.IPv6Network(subnet6)
        if threads_per_host < 1:
            raise ValueError(f"threads_per_host must be at least 1, got {threads_per_host}")
        if stop_timeout < 0:
            raise ValueError(f"stop_timeout must not be negative, got {stop_timeout}")
        self.prefix = prefix
        self.threads_per_host = threads_per_host
        self.stop_timeout = stop_timeout
        self.owner_pid = os.getpid()
        self.base = f"{prefix}-{self.owner_pid}-{next(_sequence)}"
        self.switch = f"{self.base}-switch"
        self._state = State.NEW
        self._hosts: dict[str, NetnsHost] = {}
        self._procs: list[Proc] = []
        self._partitioned: set[str] = set()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Network({self.base!r}, state={self._state.value}, hosts={list(self._hosts)})"

    def __enter__(self) -> Network:
        return self.open() if self._state is State.NEW else self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    @property
    def state(self) -> State:
        return self._state

    @property
    def hosts(self) -> tuple[NetnsHost, ...]:
        return tuple(self._hosts.values())

    @property
    def namespaces(self) -> list[str]:
        """Every namespace this network made (or is about to make), the switch first."""
        return [self.switch, *(host.namespace for host in self._hosts.values())]

    def open(self) -> Network:
        """Make the switch; raises NetnsUnavailable (with the exact reason) when namespaces cannot be made here."""
        if self._state is not State.NEW:
            raise RuntimeError(f"{self!r} was already opened")
        if not IP:
            raise NetnsUnavailable("iproute2's `ip` is not installed (apt-get install iproute2)")
        _install_exit_hooks()
        self._state = State.OPEN
        _open_networks.add(self)  # before anything exists, so that a SIGTERM during set-up still cleans up
        try:
            reap_stale_namespaces(self.prefix)
            ip("netns", "add", self.switch)
            ip(namespace=self.switch, batch=["link add br0 type bridge", "link set br0 up",
                                             "link add probe0 type veth peer name probe1", "link del probe0"])
            _enter_in_a_thread(self.switch)
        except (NetnsCommandFailed, OSError) as exc:
            self.cleanup()
            raise NetnsUnavailable(f"network namespaces are unavailable here: {exc}") from exc
        return self

    def host(self, name: str) -> NetnsHost:
        """A new host ``name`` linked to the switch, with loopback and its link up."""
        if not _NAME.match(name) or name in _RESERVED:
            raise ValueError(f"host name must be 1-24 of [a-z0-9-] starting with a letter, not {sorted(_RESERVED)}, "
                             f"got {name!r}")
        with self._lock:
            self._require_open()
            if name in self._hosts:
                raise ValueError(f"{self!r} already has a host {name!r}")
            index = len(self._hosts) + 1
            if index + 1 >= min(self.subnet.num_addresses - 1, self.subnet6.num_addresses):
                raise ValueError(f"{self.subnet} has no address left for host {name!r}")
            address = str(self.subnet.network_address + index + 1)
            address6 = str(self.subnet6.network_address + index + 1)
            host = NetnsHost(self, name, f"{self.base}-{name}", address, address6, port=f"p{index}")
            self._hosts[name] = host  # before it exists, so that clean-up removes a half-made one
            ip("netns", "add", host.namespace)
            ip(namespace=self.switch, batch=[f"link add {host.port} type veth peer name eth0 netns {host.namespace}",
                                             f"link set {host.port} master br0", f"link set {host.port} up"])
            ip(namespace=host.namespace, batch=[
                "link set lo up",
                f"addr add {address}/{self.subnet.prefixlen} dev eth0",
                f"addr add {address6}/{self.subnet6.prefixlen} dev eth0 nodad",  # usable at once, no DAD wait
                "link set eth0 up"])
        return host

    def partition(self, host: NetnsHost) -> None:
        """Cut ``host`` off from every other host (its switch port goes down; packets vanish, as with a pulled
        cable). Its own addresses and loopback stay; connections in progress stall rather than being reset."""
        self._own(host)
        ip("link", "set", host.port, "down", namespace=self.switch)
        self._partitioned.add(host.name)

    def heal(self, host: NetnsHost) -> None:
        """Reconnect ``host`` (its switch port comes back up)."""
        self._own(host)
        ip("link", "set", host.port, "up", namespace=self.switch)
        self._partitioned.discard(host.name)

    def is_partitioned(self, host: NetnsHost) -> bool:
        return host.name in self._partitioned

    @contextmanager
    def partitioned(self, host: NetnsHost) -> Iterator[NetnsHost]:
        """``host`` is cut off inside the block and reconnected after it (unless the network is gone by then)."""
        self.partition(host)
        try:
            yield host
        finally:
            if self._state is State.OPEN:
                self.heal(host)

    def cleanup(self) -> None:
        """Stop our processes, kill anything left in our namespaces, delete them all. Safe to call again, and from
        the SIGTERM handler in the middle of an earlier clean-up (every step tolerates work already done)."""
        if self._state is State.NEW:
            self._state = State.CLOSED
        if self._state is State.CLOSED:
            return
        self._state = State.CLOSING
        try:
            self._stop_processes()
            for host in self.hosts:
                host._release_threads()
            for namespace in self.namespaces:
                kill_namespace_pids(namespace)
            delete_namespaces(self.namespaces)
        finally:
            _open_networks.discard(self)
            self._state = State.CLOSED
        leftovers = sorted(set(self.namespaces) & set(list_namespaces()))
        if leftovers:
            raise NetnsCommandFailed(f"namespaces still present after clean-up: {leftovers}")

    def _stop_processes(self) -> None:
        """SIGTERM every group at once, give them ``stop_timeout`` together, then SIGKILL the groups."""
        procs = list(self._procs)
        for proc in procs:
            if proc.popen.poll() is None:
                proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for proc in procs:
            try:
                proc.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in procs:
            proc.signal(signal.SIGKILL)  # also members of a group whose leader already exited
            try:
                proc.popen.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def _require_open(self) -> None:
        if self._state is not State.OPEN:
            raise RuntimeError(f"{self!r} is not open")

    def _own(self, host: NetnsHost) -> None:
        self._require_open()
        if self._hosts.get(host.name) is not host:
            raise ValueError(f"{host!r} does not belong to {self!r}")

    def _adopt(self, proc: Proc) -> None:
        with self._lock:
            self._procs.append(proc)


def reap_stale_namespaces(prefix: str) -> list[str]:
    """Delete namespaces named ``<prefix>-<pid>-...`` whose pid is dead (a run killed before it could clean up),
    killing what still runs inside them; returns their names. Live runs' namespaces are never touched."""
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)-\d+-")
    stale = [name for name in list_namespaces()
             if (match := pattern.match(name)) and int(match[1]) != os.getpid() and not pid_alive(int(match[1]))]
    for name in stale:
        kill_namespace_pids(name)
    delete_namespaces(stale)
    return stale


def cleanup_all() -> None:
    """Clean up every network this process still has open (at exit, or on SIGTERM)."""
    for network in list(_open_networks):
        if network.owner_pid != os.getpid():
            continue  # a forked child must not tear down its parent's network
        try:
            network.cleanup()
        except Exception as exc:  # noqa: BLE001 - the others must still be cleaned up
            print(f"netns clean-up of {network!r} failed: {exc}", file=sys.stderr)


def _enter_in_a_thread(namespace: str) -> None:
    """Check that a thread can enter ``namespace`` (what host.call relies on), without moving the caller."""
    failure: list[BaseException] = []

    def probe() -> None:
        try:
            enter_namespace(namespace)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller below
            failure.append(exc)

    thread = threading.Thread(target=probe, name="netns-probe")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def _install_exit_hooks() -> None:
    """Clean up at interpreter exit and on SIGTERM, then let SIGTERM do what it did before (default: terminate)."""
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(cleanup_all)
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread; atexit still covers a normal exit
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: object) -> None:
        cleanup_all()
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)
