"""The multi-host test network itself: real namespaces, real links, real servers and clients, real clean-up."""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from tests.helpers.netns import NetnsHost, NetnsUnavailable, Network, State, reap_stale_namespaces
from tests.helpers.netns_ip import NETNS_RUN_DIR, ip, list_namespaces
from tests.helpers.procs import Proc, pid_alive, wait_until
from tests.helpers.redis_server import start_redis_on

REPO = Path(__file__).resolve().parents[2]
ENV = {"PATH": os.environ.get("PATH", os.defpath), "PYTHONUNBUFFERED": "1"}
SETPRIV = shutil.which("setpriv")
CLOSED_PORT = 9  # nothing listens there in a fresh namespace: a reachable host answers with a reset


def serve_directory(host: NetnsHost, directory: Path, log_path: Path, bind: str, port: int = 8000) -> Proc:
    """Python's http.server serving ``directory`` inside ``host``; waits until it answers from inside."""
    proc = host.spawn([sys.executable, "-m", "http.server", "--bind", bind, "--directory", str(directory), str(port)],
                      env=ENV, log_path=log_path)
    probe = {"::": f"http://[::1]:{port}/", "127.0.0.1": f"http://127.0.0.1:{port}/"}.get(bind, host.url(port, "/"))
    wait_until(lambda: host.http("GET", probe, timeout=2)[0] == 200, 30, f"http.server in {host.name}", proc)
    return proc


def site(tmp_path: Path, text: str) -> Path:
    directory = tmp_path / f"site-{text}"
    directory.mkdir()
    (directory / "who").write_text(text)
    return directory


def namespace_inode(namespace: str) -> int:
    return os.stat(NETNS_RUN_DIR / namespace).st_ino


def reachable(source: NetnsHost, target: NetnsHost, timeout: float = 2.0) -> bool:
    """Does ``target``'s kernel answer ``source``? A reset from a closed port counts as an answer; silence does not."""
    try:
        source.connect(target.address, CLOSED_PORT, timeout=timeout).close()
    except ConnectionRefusedError:
        return True
    except TimeoutError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return False
        raise
    return True


def root_network_config() -> dict[str, str]:
    """The root namespace's links, addresses and routes, without the lifetimes that count down by themselves."""
    lifetimes = re.compile(r"(valid_lft|preferred_lft|expires)\s+\S+")
    return {command: lifetimes.sub("", ip(*command.split()))
            for command in ("-o link", "-o addr", "-4 route", "-6 route")}


@contextmanager
def child_run(mode: str, prefix: str, tmp_path: Path, *extra: str, wrapper: list[str] = (),
              **popen: object) -> Iterator[subprocess.Popen]:
    """tests/cluster/_netns_child.py in its own process; on the way out it is stopped if still running (SIGTERM: its
    network cleans up; SIGKILL if it hangs) and whatever a dead run with ``prefix`` left is reaped."""
    command = [*wrapper, sys.executable, "-m", "tests.cluster._netns_child", mode, prefix, str(tmp_path), *extra]
    child = subprocess.Popen(command, cwd=REPO, env={**ENV, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, **popen)
    try:
        yield child
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.communicate()
        reap_stale_namespaces(prefix)


def first_line(child: subprocess.Popen) -> dict:
    line = child.stdout.readline()
    if not line:
        raise AssertionError(f"child printed nothing; stderr:\n{child.stderr.read()}")
    return json.loads(line)


def assert_gone(state: dict) -> None:
    left = set(state["namespaces"]) & set(list_namespaces())
    assert not left, f"namespaces left behind: {sorted(left)}"
    assert not pid_alive(state["sleeper"]), f"sleeper {state['sleeper']} still runs"


def test_two_hosts_talk_over_the_bridge_on_ipv4_and_ipv6(network, tmp_path):
    server, client = network.host("server"), network.host("client")
    assert (server.address, client.address) == ("10.77.0.2", "10.77.0.3")
    proc = serve_directory(server, site(tmp_path, "server"), tmp_path / "server.log", bind="::")
    assert os.stat(f"/proc/{proc.pid}/ns/net").st_ino == namespace_inode(server.namespace)

    for ipv6 in (False, True):
        status, _, body = client.http("GET", server.url(8000, "/who", ipv6=ipv6), timeout=10)
        assert (status, body) == (200, "server")
    log = proc.log()
    assert f"::ffff:{client.address} - -" in log and f"{client.address6} - -" in log, log  # it came over the link

    # host.call runs in a thread inside the host's namespace, and leaves the caller's thread where it was
    assert client.call(os.stat, "/proc/thread-self/ns/net").st_ino == namespace_inode(client.namespace)
    assert os.stat("/proc/thread-self/ns/net").st_ino != namespace_inode(client.namespace)
    with pytest.raises(FileNotFoundError):
        client.call(os.stat, str(tmp_path / "missing"))


def test_each_host_has_its_own_loopback(network, tmp_path):
    a, b = network.host("node-a"), network.host("node-b")
    serve_directory(a, site(tmp_path, "a-loopback"), tmp_path / "a.log", bind="127.0.0.1", port=8001)
    assert a.http("GET", "http://127.0.0.1:8001/who", timeout=10)[2] == "a-loopback"
    with pytest.raises(urllib.error.URLError) as refused:
        b.http("GET", "http://127.0.0.1:8001/who", timeout=10)
    assert isinstance(refused.value.reason, ConnectionRefusedError)
    with pytest.raises(urllib.error.URLError):  # bound to loopback only: not reachable over the link
        b.http("GET", a.url(8001, "/who"), timeout=10)


def test_no_route_leads_out_of_the_test_network(network):
    a = network.host("node-a")
    routes = a.run(["ip", "route"]).stdout + a.run(["ip", "-6", "route"]).stdout
    assert "default" not in routes, routes
    assert f"{a.address}/24" in a.run(["ip", "-o", "addr"]).stdout
    root_addresses = re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", ip("-o", "-4", "addr"))
    outside = [a for a in map(ipaddress.IPv4Address, root_addresses) if not a.is_loopback and a not in network.subnet]
    for address in [*map(str, outside), "203.0.113.1"]:
        with pytest.raises(OSError) as unreachable:
            a.connect(address, 80, timeout=2).close()
        assert unreachable.value.errno == errno.ENETUNREACH, (address, unreachable.value)


def test_partition_stops_traffic_and_heal_restores_it(network, tmp_path):
    a, b, c = network.host("node-a"), network.host("node-b"), network.host("node-c")
    proc = serve_directory(a, site(tmp_path, "a"), tmp_path / "a.log", bind=a.address)
    assert b.http("GET", a.url(8000, "/who"), timeout=10)[2] == "a"
    assert reachable(a, b) and reachable(c, b)
    served = proc.log().count("GET /who")

    network.partition(a)
    assert network.is_partitioned(a)
    with pytest.raises(urllib.error.URLError) as failed:
        b.http("GET", a.url(8000, "/who"), timeout=2)
    assert not isinstance(failed.value.reason, ConnectionRefusedError)  # silence, not a refusal
    assert not reachable(a, b), "the partitioned host still reaches the others"
    assert reachable(c, b), "a partition of node-a cut node-c off too"
    assert proc.log().count("GET /who") == served, "a request reached the partitioned host"
    assert proc.popen.poll() is None  # the host keeps running, it is only cut off

    network.heal(a)
    assert not network.is_partitioned(a)
    wait_until(lambda: reachable(a, b), 30, "node-a to answer again after heal")
    assert b.http("GET", a.url(8000, "/who"), timeout=10)[2] == "a"

    with network.partitioned(a):
        assert not reachable(b, a)
    wait_until(lambda: reachable(b, a), 30, "node-a back after the partitioned() block")


def test_redis_in_its_own_host_serves_the_others(network, tmp_path):
    redis_host, a, b = network.host("redis"), network.host("node-a"), network.host("node-b")
    server = start_redis_on(redis_host, tmp_path / "redis", password="s3cret")
    assert server.url == f"redis://:s3cret@{redis_host.address}:6379/0"

    def roundtrip(command: str, *args: str) -> object:
        client = redis.Redis.from_url(server.url, socket_timeout=2, socket_connect_timeout=2)
        try:
            return client.execute_command(command, *args)
        finally:
            client.close()

    assert a.call(roundtrip, "SET", "written-by", "node-a") is True
    assert b.call(roundtrip, "GET", "written-by") == b"node-a"
    with network.partitioned(redis_host):
        with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
            a.call(roundtrip, "GET", "written-by")
    wait_until(lambda: a.call(roundtrip, "GET", "written-by") == b"node-a", 30, "redis after heal")
    server.stop()


def test_cleanup_kills_every_process_and_deletes_every_namespace(tmp_path):
    try:
        net = Network(prefix="fvt", stop_timeout=1.0).open()
    except NetnsUnavailable as exc:
        pytest.skip(str(exc))
    try:
        a = net.host("node-a")
        stubborn = a.spawn([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                                                  "print('ready', flush=True); time.sleep(600)"],
                           env=ENV, log_path=tmp_path / "stubborn.log")
        escaper = a.spawn([sys.executable, "-c", "import subprocess; p = subprocess.Popen(['sleep', '600'], "
                                                 "start_new_session=True); print(p.pid, flush=True); p.wait()"],
                          env=ENV, log_path=tmp_path / "escaper.log")
        wait_until(lambda: "ready" in stubborn.log(), 30, "the SIGTERM-ignoring process", stubborn)
        wait_until(lambda: escaper.log().strip().isdigit(), 30, "the escaped grandchild's pid", escaper)
        grandchild = int(escaper.log())
        assert os.getpgid(grandchild) != escaper.pid  # it left the process group the clean-up signals
        assert os.stat(f"/proc/{grandchild}/ns/net").st_ino == namespace_inode(a.namespace)
        namespaces = net.namespaces
        assert set(namespaces) <= set(list_namespaces())
    finally:
        net.cleanup()

    assert stubborn.popen.returncode == -signal.SIGKILL  # SIGTERM was ignored, SIGKILL followed
    wait_until(lambda: not pid_alive(grandchild), 10, "the escaped grandchild to be reaped")
    assert not set(namespaces) & set(list_namespaces())
    assert net.state is State.CLOSED
    net.cleanup()  # again: nothing to do, no error
    with pytest.raises(RuntimeError):
        net.host("node-b")
    with pytest.raises(RuntimeError):
        a.http("GET", "http://127.0.0.1:1/")


def test_a_failing_test_body_still_cleans_up(tmp_path):
    with child_run("raise", "fvt", tmp_path) as child:
        state = first_line(child)
        _, stderr = child.communicate(timeout=60)
        assert state["present"] is True
        assert child.returncode == 1 and "test body failed on purpose" in stderr
        assert_gone(state)


def test_sigterm_cleans_up_and_still_terminates(tmp_path):
    with child_run("sigterm", "fvt", tmp_path) as child:
        state = first_line(child)
        assert state["present"] is True
        child.send_signal(signal.SIGTERM)
        child.communicate(timeout=60)
        assert child.returncode == -signal.SIGTERM
        assert_gone(state)


def test_a_network_left_open_is_removed_at_exit(tmp_path):
    with child_run("exit", "fvt", tmp_path) as child:
        state = first_line(child)
        child.communicate(timeout=60)
        assert state["present"] is True and child.returncode == 0
        assert_gone(state)


def test_the_next_run_reaps_what_a_killed_run_left(tmp_path):
    with child_run("crash", "fvk", tmp_path) as child:
        state = first_line(child)
        child.communicate(timeout=60)
        assert child.returncode == -signal.SIGKILL
        assert set(state["namespaces"]) <= set(list_namespaces()), "nothing was left to reap"
        assert pid_alive(state["sleeper"])
        try:
            Network(prefix="fvk").open().cleanup()
        except NetnsUnavailable as exc:
            pytest.skip(str(exc))
        wait_until(lambda: not pid_alive(state["sleeper"]), 10, "the crashed run's sleeper to be killed")
        assert_gone(state)


def test_names_are_unique_and_parallel_runs_are_isolated(network, tmp_path):
    with child_run("hold", "fvt", tmp_path, str(site(tmp_path, "child")), stdin=subprocess.PIPE) as child:
        theirs = first_line(child)
        a, b = network.host("node-a"), network.host("node-b")
        serve_directory(a, site(tmp_path, "parent"), tmp_path / "a.log", bind=a.address)
        with Network(prefix="fvt") as second:
            second.host("node-a")
            all_names = [*network.namespaces, *theirs["namespaces"], *second.namespaces]
            assert len(set(all_names)) == len(all_names) == 8
            assert all(name.startswith(f"fvt-{os.getpid()}-") for name in [*network.namespaces, *second.namespaces])
            assert all(name.startswith(f"fvt-{child.pid}-") for name in theirs["namespaces"])
        # same subnet, same address, same port on both networks: each client reaches its own network's server
        assert theirs["address"] == a.address
        assert b.http("GET", a.url(8000, "/who"), timeout=10)[2] == "parent"
        assert set(theirs["namespaces"]) <= set(list_namespaces())  # the other run was not disturbed
        child.communicate("done\n", timeout=60)
        assert child.returncode == 0
        assert_gone(theirs)


def test_the_root_namespace_gains_no_links_addresses_or_routes(tmp_path):
    before = root_network_config()
    try:
        net = Network(prefix="fvt").open()
    except NetnsUnavailable as exc:
        pytest.skip(str(exc))
    with net:
        hosts = [net.host(name) for name in ("redis", "router", "node-a", "node-b")]
        serve_directory(hosts[2], site(tmp_path, "a"), tmp_path / "a.log", bind=hosts[2].address)
        assert hosts[3].http("GET", hosts[2].url(8000, "/who"), timeout=10)[2] == "a"
        net.partition(hosts[2])
        net.heal(hosts[2])
        assert root_network_config() == before  # not even while the network is up
    assert root_network_config() == before


@pytest.mark.skipif(os.geteuid() != 0 or not SETPRIV, reason="dropping capabilities needs root and util-linux setpriv")
def test_without_capabilities_the_tests_skip_with_the_reason(tmp_path):
    # Still uid 0, but with every capability gone (what an unprivileged CI container has): no netns can be made.
    no_caps = [SETPRIV, "--bounding-set=-all", "--inh-caps=-all", "--"]
    with child_run("probe", "fvu", tmp_path, wrapper=no_caps) as child:
        state = first_line(child)
        child.communicate(timeout=60)
    reason = state.get("unavailable", "")
    assert "network namespaces are unavailable here" in reason and "Operation not permitted" in reason, state

    pytest_run = subprocess.run(
        [*no_caps, sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-o", "addopts=",
         f"--basetemp={tmp_path / 'no-caps'}", f"{Path(__file__)}::test_each_host_has_its_own_loopback"],
        cwd=REPO, env={**ENV, "PYTHONPATH": f"{REPO}:{REPO / 'src'}"}, capture_output=True, text=True, timeout=120)
    assert "1 skipped" in pytest_run.stdout, pytest_run.stdout + pytest_run.stderr
    kernel_says = re.search(r"failed \(\d+\): (.+)$", reason)[1]  # e.g. "mount ... failed: Operation not permitted"
    assert "SKIPPED [1]" in pytest_run.stdout, pytest_run.stdout
    assert kernel_says in pytest_run.stdout, pytest_run.stdout  # the skip gives the exact reason


def test_bad_names_are_refused():
    with pytest.raises(ValueError):
        Network(prefix="Bad-Prefix")
    with pytest.raises(ValueError):
        Network(threads_per_host=0)
    net = Network(prefix="fvt")
    with pytest.raises(RuntimeError):  # not opened yet
        net.host("node-a")


def test_bad_host_names_are_refused(network):
    network.host("node-a")
    for name in ("node-a", "switch", "Node", "a/b", "x" * 25, ""):
        with pytest.raises(ValueError):
            network.host(name)
    assert [host.name for host in network.hosts] == ["node-a"]
