"""MediaFetcher against real HTTP(S) servers this test starts on 127.0.0.1 (never any other address).

Host names such as ``media.test`` reach those servers through a scripted resolver handed to the
fetcher (the documented DNS seam), which also counts lookups. Addresses that are refused are
refused before any connection, so no test ever sends a packet beyond loopback.
"""

from __future__ import annotations

import asyncio
import io
import logging
import shutil
import socket
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from importlib.resources import files
from ipaddress import ip_address
from pathlib import Path

import pytest
from aiohttp import web
from PIL import Image

from fastvlm_engine.config import Settings
from fastvlm_engine.errors import (
    EngineError,
    FetchFailed,
    MediaTooLarge,
    PayloadTooLarge,
    UnsupportedMedia,
    UrlNotAllowed,
)
from fastvlm_engine.intake.spool import Spool
from fastvlm_engine.media.addresses import IPAddress
from fastvlm_engine.media.fetch import FetchedMedia, MediaFetcher
from fastvlm_engine.media.fetch_policy import FetchPolicy
from fastvlm_engine.media.resolver import SystemResolver
from tests.helpers.sockets import unaccepting_port

pytestmark = pytest.mark.integration

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LIMIT = 1 << 20


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 12), (200, 30, 90)).save(out, "PNG")
    return out.getvalue()


PNG = _png()
JPEG = files("fastvlm_engine.sample_media").joinpath("coffee.jpg").read_bytes()


class Server:
    """An aiohttp.web app on 127.0.0.1 at a free port, recording each request; slow handlers wait on ``release``."""

    def __init__(self, routes: dict[str, Handler], *, tls: ssl.SSLContext | None = None) -> None:
        self.routes = routes
        self.tls = tls
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.release = asyncio.Event()
        self.port = 0

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]

    async def __aenter__(self) -> Server:
        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            self.requests.append((request.path_qs, dict(request.headers)))
            return await handler(request)

        app = web.Application(middlewares=[record])
        for path, handler in self.routes.items():
            app.router.add_get(path, handler)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        await self._runner.cleanup()

    async def stall(self) -> None:
        """What a slow server does: nothing, until the test ends (bounded)."""
        try:
            await asyncio.wait_for(self.release.wait(), timeout=30)
        except TimeoutError:
            pass


class ScriptedResolver:
    """DNS answers chosen by the test, one list per lookup (the last repeats), and a count of lookups."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        self.calls.append(host)
        script = self.answers.get(host)
        if not script:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        answer = script[min(len(self.calls) - 1, len(script) - 1)] if len(script) > 1 else script[0]
        return [ip_address(a) for a in answer]


def _policy(hosts: str, port: int, *, allow_private: bool = True, timeout_s: float = 20.0,
            connect_timeout_s: float = 5.0, max_redirects: int = 3) -> FetchPolicy:
    return FetchPolicy.from_settings(Settings(
        fetch_url_hosts=hosts, fetch_allow_private=allow_private, fetch_allowed_ports=str(port),
        fetch_timeout_s=timeout_s, fetch_connect_timeout_s=connect_timeout_s, fetch_max_redirects=max_redirects))


def _spool(max_bytes: int = LIMIT) -> Spool:
    return Spool(max_bytes=max_bytes, too_large=lambda limit: PayloadTooLarge(f"spool limit {limit}"))


async def _fetch(fetcher: MediaFetcher, url: str, *, kind: str = "image", max_bytes: int = LIMIT,
                 sink: Spool | None = None) -> tuple[FetchedMedia, bytes]:
    sink = sink if sink is not None else _spool()
    result = await fetcher.fetch(url, kind=kind, max_bytes=max_bytes, sink=sink)
    return result, sink.read_bytes()


async def _refused(fetcher: MediaFetcher, url: str, error: type[EngineError], *, kind: str = "image",
                   max_bytes: int = LIMIT, sink: Spool | None = None) -> EngineError:
    with pytest.raises(error) as caught:
        await fetcher.fetch(url, kind=kind, max_bytes=max_bytes, sink=sink if sink is not None else _spool())
    return caught.value


def _image(body: bytes = PNG, content_type: str = "image/png") -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type)
    return handler


def _redirect(location: str, status: int = 302) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Location": location})
    return handler


# --- allowed only when allowed -------------------------------------------------------------------

def test_an_allowed_loopback_server_is_fetched_byte_for_byte():
    async def scenario() -> None:
        async with Server({"/cat.png": _image(), "/coffee.jpg": _image(JPEG, "image/jpeg")}) as server:
            fetcher = MediaFetcher(_policy("127.0.0.1", server.port))
            result, body = await _fetch(fetcher, f"http://127.0.0.1:{server.port}/cat.png?v=1#frag")
            assert body == PNG
            assert result == FetchedMedia(url=f"http://127.0.0.1:{server.port}/cat.png?v=1", content_type="image/png",
                                          format="PNG", size=len(PNG), redirects=0)
            result, body = await _fetch(fetcher, f"http://127.0.0.1:{server.port}/coffee.jpg")
            assert body == JPEG and result.format == "JPEG" and result.size == len(JPEG)
            headers = server.requests[0][1]
            assert headers["Accept-Encoding"] == "identity" and headers["Accept"].startswith("image/*")
            assert server.paths == ["/cat.png?v=1", "/coffee.jpg"]

    asyncio.run(scenario())


@pytest.mark.parametrize(("hosts", "allow_private", "same_port", "reason"), [
    ("", True, True, "turned off"),
    ("127.0.0.1", False, True, "address this server does not fetch from"),
    ("localhost,*", True, True, "not in the hosts"),
    ("127.0.0.2", True, True, "not in the hosts"),
    ("127.0.0.1", True, False, "port"),
])
def test_the_loopback_server_is_refused_unless_listed_private_allowed_and_port_allowed(hosts, allow_private,
                                                                                       same_port, reason):
    async def scenario() -> None:
        async with Server({"/cat.png": _image()}) as server:
            policy = FetchPolicy.from_settings(Settings(
                fetch_url_hosts=hosts, fetch_allow_private=allow_private,
                fetch_allowed_ports=str(server.port if same_port else server.port + 1)))
            error = await _refused(MediaFetcher(policy), f"http://127.0.0.1:{server.port}/cat.png", UrlNotAllowed)
            assert reason in error.message and error.http_status == 400
            assert server.requests == []

    asyncio.run(scenario())


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.7", "192.168.1.1", "172.16.0.1", "169.254.169.254",
                                     "100.64.0.1", "0.0.0.0", "::1", "fe80::1", "fd00::1", "::ffff:127.0.0.1",
                                     "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "2002:7f00:1::1",
                                     "224.0.0.1", "fec0::1"])
def test_a_listed_name_resolving_to_a_non_public_address_is_refused_without_naming_the_address(address, caplog):
    async def scenario() -> None:
        resolver = ScriptedResolver({"media.test": [[address]]})
        fetcher = MediaFetcher(_policy("media.test", 80, allow_private=False), resolver=resolver)
        with caplog.at_level(logging.WARNING, logger="fastvlm_engine.media.fetch"):
            error = await _refused(fetcher, "http://media.test/cat.png?token=SECRET", UrlNotAllowed)
        canonical = str(ip_address(address))
        assert "'media.test'" in error.message and address not in error.message and canonical not in error.message
        assert resolver.calls == ["media.test"]
        [record] = [r for r in caplog.records if r.name == "fastvlm_engine.media.fetch"]
        assert record.fetch_reason == "address_refused" and canonical in record.fetch_detail
        assert record.fetch_url == "http://media.test/cat.png" and "SECRET" not in caplog.text

    asyncio.run(scenario())


@pytest.mark.parametrize("host", ["169.254.169.254", "10.0.0.1", "[::1]", "[::ffff:127.0.0.1]", "[fe80::1]"])
def test_listed_ip_literals_are_refused_by_default(host):
    async def scenario() -> None:
        fetcher = MediaFetcher(_policy(host, 80, allow_private=False), resolver=ScriptedResolver({}))
        await _refused(fetcher, f"http://{host}/latest/meta-data/", UrlNotAllowed)

    asyncio.run(scenario())


@pytest.mark.parametrize("host", ["2130706433", "0x7f.1", "0x7f000001", "0177.0.0.1", "127.1", "017700000001",
                                  "[::ffff:127.0.0.1]", "[::ffff:7f00:1]"])
def test_other_spellings_of_127_0_0_1_never_reach_the_loopback_server(host):
    async def scenario() -> None:
        async with Server({"/": _image()}) as server:
            resolver = ScriptedResolver({})
            fetcher = MediaFetcher(_policy("*,127.0.0.1", server.port), resolver=resolver)
            await _refused(fetcher, f"http://{host}:{server.port}/", UrlNotAllowed)
            assert server.requests == [] and resolver.calls == []

    asyncio.run(scenario())


# --- one resolution per hop ----------------------------------------------------------------------

def test_an_answer_mixing_a_public_and_a_loopback_address_is_refused_whole_after_one_lookup():
    async def scenario() -> None:
        async with Server({"/cat.png": _image()}) as server:
            resolver = ScriptedResolver({"media.test": [["93.184.216.34", "127.0.0.1"]]})
            fetcher = MediaFetcher(_policy("media.test", server.port, allow_private=False), resolver=resolver)
            await _refused(fetcher, f"http://media.test:{server.port}/cat.png", UrlNotAllowed)
            assert resolver.calls == ["media.test"] and server.requests == []

    asyncio.run(scenario())


def test_the_connection_uses_the_checked_answer_and_no_second_lookup():
    """Later lookups would answer an address nothing listens on: the fetch works only if none happens."""
    async def scenario() -> None:
        async with Server({"/cat.png": _image(), "/go": _redirect("/cat.png")}) as server:
            resolver = ScriptedResolver({"media.test": [["127.0.0.1"], ["127.0.0.1"], ["192.0.2.1"]]})
            fetcher = MediaFetcher(_policy("media.test", server.port), resolver=resolver)
            result, body = await _fetch(fetcher, f"http://media.test:{server.port}/go")
            assert body == PNG and result.redirects == 1
            assert resolver.calls == ["media.test", "media.test"]  # once per hop, never by aiohttp
            assert [headers["Host"] for _, headers in server.requests] == [f"media.test:{server.port}"] * 2

    asyncio.run(scenario())


def test_the_system_resolver_is_used_once_per_hop_by_default():
    """The production resolver (getaddrinfo) on a name the hosts file answers: localhost."""
    async def scenario() -> None:
        addresses = await SystemResolver().resolve("localhost", 80)
        assert addresses and all(address.is_loopback for address in addresses)
        async with Server({"/cat.png": _image()}) as server:
            result, body = await _fetch(MediaFetcher(_policy("localhost", server.port)),
                                        f"http://localhost:{server.port}/cat.png")
            assert body == PNG and server.requests[0][1]["Host"] == f"localhost:{server.port}"
            await _refused(MediaFetcher(_policy("localhost", server.port, allow_private=False)),
                           f"http://localhost:{server.port}/cat.png", UrlNotAllowed)
            assert len(server.requests) == 1

    asyncio.run(scenario())


def test_a_name_that_does_not_resolve_fails_cleanly():
    async def scenario() -> None:
        fetcher = MediaFetcher(_policy("*", 80), resolver=ScriptedResolver({}))
        error = await _refused(fetcher, "http://nowhere.test/cat.png", FetchFailed)
        assert "'nowhere.test' could not be resolved" in error.message

    asyncio.run(scenario())


# --- redirects -----------------------------------------------------------------------------------

@pytest.mark.parametrize("location", ["http://localhost:{port}/cat.png", "http://169.254.169.254/latest/meta-data/",
                                      "http://0x7f.1:{port}/cat.png", "file:///etc/passwd",
                                      "http://user:pw@127.0.0.1:{port}/cat.png", "http://127.0.0.1:1/cat.png",
                                      "gopher://127.0.0.1:{port}/_x"])
def test_a_redirect_to_anything_not_allowed_is_refused_naming_only_the_clients_host(location, caplog):
    async def scenario() -> None:
        async def go(request: web.Request) -> web.Response:
            return web.Response(status=302, headers={"Location": location.format(port=server.port)})

        async with Server({"/cat.png": _image(), "/go": go}) as server:
            fetcher = MediaFetcher(_policy("127.0.0.1", server.port), resolver=ScriptedResolver({}))
            with caplog.at_level(logging.WARNING, logger="fastvlm_engine.media.fetch"):
                error = await _refused(fetcher, f"http://127.0.0.1:{server.port}/go", UrlNotAllowed)
            assert error.message.startswith("'127.0.0.1' redirected")
            for leaked in ("localhost", "169.254", "0x7f", "passwd", "pw", "gopher"):
                assert leaked not in error.message
            assert server.paths == ["/go"]
            [record] = [r for r in caplog.records if r.name == "fastvlm_engine.media.fetch"]
            assert record.fetch_hop == 1 and "pw" not in caplog.text

    asyncio.run(scenario())


def test_redirects_within_the_limit_are_followed_and_one_more_fails():
    async def scenario() -> None:
        async def hop(request: web.Request) -> web.Response:
            left = int(request.match_info["left"])
            return web.Response(status=307, headers={"Location": f"/hop/{left - 1}" if left > 1 else "/cat.png"})

        async with Server({"/cat.png": _image(), "/hop/{left}": hop}) as server:
            fetcher = MediaFetcher(_policy("127.0.0.1", server.port, max_redirects=3))
            result, body = await _fetch(fetcher, f"http://127.0.0.1:{server.port}/hop/3")
            assert body == PNG and result.redirects == 3 and result.url == f"http://127.0.0.1:{server.port}/cat.png"
            server.requests.clear()
            error = await _refused(fetcher, f"http://127.0.0.1:{server.port}/hop/4", FetchFailed)
            assert "more than 3" in error.message
            assert server.paths == ["/hop/4", "/hop/3", "/hop/2", "/hop/1"]  # the fourth redirect is not followed

    asyncio.run(scenario())


def test_a_redirect_without_location_fails():
    async def scenario() -> None:
        async def bare(request: web.Request) -> web.Response:
            return web.Response(status=302)

        async with Server({"/go": bare}) as server:
            fetcher = MediaFetcher(_policy("127.0.0.1", server.port))
            error = await _refused(fetcher, f"http://127.0.0.1:{server.port}/go", FetchFailed)
            assert "no valid Location" in error.message

    asyncio.run(scenario())


# --- size, time, content -------------------------------------------------------------------------

def test_a_content_length_over_the_limit_is_refused_before_the_body_is_read():
    """The server declares a huge body and then stalls: reading it would end in the timeout instead."""
    async def scenario() -> None:
        async def huge(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "image/png"})
            response.content_length = 50 * LIMIT
            await response.prepare(request)
            await response.write(PNG)
            await server.stall()
            return response

        async with Server({"/huge.png": huge}) as server:
            sink = _spool()
            fetcher = MediaFetcher(_policy("127.0.0.1", server.port, timeout_s=30))
            error = await _refused(fetcher, f"http://127.0.0.1:{server.port}/huge.png", MediaTooLarge, sink=sink)
            assert str(LIMIT) in error.message and sink.size == 0

    asyncio.run(scenario())


def test_a_streamed_body_is_refused_as_soon_as_it_passes_the_limit():
    """No Content-Length; the server sends one byte too many and then stalls, so only an early stop passes."""
    async def scenario() -> None:
        limit = 200_000

        async def endless(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "image/png"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(PNG + b"\0" * (limit + 1 - len(PNG)))
            await server.stall()
            return response

        async with Server({"/endless.png": endless}) as server:
            sink = _spool()
            fetcher = MediaFetcher(_policy("127.0.0.1", server.port, timeout_s=30))
            await _refused(fetcher, f"http://127.0.0.1:{server.port}/endless.png", MediaTooLarge, max_bytes=limit,
                           sink=sink)
            assert sink.size <= limit

    asyncio.run(scenario())


def test_the_sinks_own_limit_stops_the_fetch_with_the_sinks_error():
    async def scenario() -> None:
        async with Server({"/coffee.jpg": _image(JPEG, "image/jpeg")}) as server:
            fetcher = MediaFetcher(_policy("127.0.0.1", server.port))
            error = await _refused(fetcher, f"http://127.0.0.1:{server.port}/coffee.jpg", PayloadTooLarge,
                                   sink=_spool(max_bytes=1000))
            assert "spool limit 1000" in error.message

    asyncio.run(scenario())


@pytest.mark.parametrize("stall_before_headers", [True, False])
def test_a_slow_server_runs_into_the_whole_fetch_timeout(stall_before_headers):
    async def scenario() -> None:
        async def slow(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "image/png"})
            if stall_before_headers:
                await server.stall()
            await response.prepare(request)
            await response.write(PNG[:8])
            await server.stall()
            return response

        async with Server({"/slow.png": slow}) as server:
            fetcher = MediaFetcher(_policy("127.0.0.1", server.port, timeout_s=0.5))
            error = await _refused(fetcher, f"http://127.0.0.1:{server.port}/slow.png", FetchFailed)
            assert "took longer than 0.5 s" in error.message and "'127.0.0.1'" in error.message

    asyncio.run(scenario())


def test_a_host_that_accepts_no_connection_runs_into_the_connect_timeout():
    with unaccepting_port() as port:
        async def scenario() -> None:
            resolver = ScriptedResolver({"media.test": [["127.0.0.1"]]})
            fetcher = MediaFetcher(_policy("media.test", port, connect_timeout_s=0.3), resolver=resolver)
            error = await _refused(fetcher, f"http://media.test:{port}/cat.png", FetchFailed)
            assert error.message == f"Connecting to 'media.test' on port {port} timed out."

        asyncio.run(scenario())


def test_a_refused_connection_names_the_host_not_the_resolved_address():
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def scenario() -> None:
        resolver = ScriptedResolver({"media.test": [["127.0.0.1"]]})
        fetcher = MediaFetcher(_policy("media.test", port), resolver=resolver)
        error = await _refused(fetcher, f"http://media.test:{port}/cat.png", FetchFailed)
        assert error.message == f"Could not connect to 'media.test' on port {port}."

    asyncio.run(scenario())


@pytest.mark.parametrize(("body", "content_type", "kind"), [
    (b"<!doctype html><html><body>not an image</body></html>", "image/png", "image"),
    (b"", "image/png", "image"),
    (PNG, "video/mp4", "video"),
    (b"GIF8", "image/gif", "image"),
])
def test_the_wrong_kind_of_content_is_refused_before_the_sink_sees_it(body, content_type, kind):
    async def scenario() -> None:
        async with Server({"/thing": _image(body, content_type)}) as server:
            sink = _spool()
            fetcher = MediaFetcher(_policy("127.0.0.1", server.port))
            await _refused(fetcher, f"http://127.0.0.1:{server.port}/thing", UnsupportedMedia, kind=kind, sink=sink)
            assert sink.size == 0

    asyncio.run(scenario())


def test_a_video_is_accepted_as_video(tmp_path):
    from fastvlm_engine.sample_media.video import write_sample_video

    video = write_sample_video(tmp_path / "clip.mp4", seconds_per_shot=0.25).read_bytes()

    async def scenario() -> None:
        async with Server({"/clip.mp4": _image(video, "video/mp4")}) as server:
            fetcher = MediaFetcher(_policy("127.0.0.1", server.port))
            result, body = await _fetch(fetcher, f"http://127.0.0.1:{server.port}/clip.mp4", kind="video")
            assert body == video and result.format == "video" and result.content_type == "video/mp4"

    asyncio.run(scenario())


def test_a_compressed_body_is_refused():
    async def scenario() -> None:
        async def gzipped(request: web.Request) -> web.Response:
            return web.Response(body=PNG, content_type="image/png", headers={"Content-Encoding": "gzip"})

        async with Server({"/cat.png": gzipped}) as server:
            fetcher = MediaFetcher(_policy("127.0.0.1", server.port))
            error = await _refused(fetcher, f"http://127.0.0.1:{server.port}/cat.png", FetchFailed)
            assert "compressed" in error.message

    asyncio.run(scenario())


@pytest.mark.parametrize("status", [404, 500, 204, 304])
def test_an_error_status_fails_naming_the_status_and_logs_one_info_line(status, caplog):
    async def scenario() -> None:
        async def answer(request: web.Request) -> web.Response:
            return web.Response(status=status)

        async with Server({"/cat.png": answer}) as server:
            fetcher = MediaFetcher(_policy("127.0.0.1", server.port))
            with caplog.at_level(logging.INFO, logger="fastvlm_engine.media.fetch"):
                error = await _refused(fetcher, f"http://127.0.0.1:{server.port}/cat.png?key=K3Y", FetchFailed)
            assert f"HTTP {status}" in error.message
            [record] = [r for r in caplog.records if r.name == "fastvlm_engine.media.fetch"]
            assert record.levelno == logging.INFO and record.fetch_reason == "http_status"
            assert record.fetch_code == "fetch_failed" and "K3Y" not in caplog.text

    asyncio.run(scenario())


def test_proxy_settings_in_the_environment_are_ignored(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there: using it would fail
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    async def scenario() -> None:
        async with Server({"/cat.png": _image()}) as server:
            result, body = await _fetch(MediaFetcher(_policy("127.0.0.1", server.port)),
                                        f"http://127.0.0.1:{server.port}/cat.png")
            assert body == PNG

    asyncio.run(scenario())


def test_refused_schemes_and_user_info_never_reach_the_server(caplog):
    async def scenario() -> None:
        async with Server({"/cat.png": _image()}) as server:
            fetcher = MediaFetcher(_policy("127.0.0.1", server.port))
            urls = [f"http://user:secret@127.0.0.1:{server.port}/cat.png", f"http://@127.0.0.1:{server.port}/cat.png",
                    "file:///etc/passwd", f"ftp://127.0.0.1:{server.port}/cat.png", "data:image/png;base64,iVBORw0K",
                    f"//127.0.0.1:{server.port}/cat.png"]
            with caplog.at_level(logging.WARNING, logger="fastvlm_engine.media.fetch"):
                for url in urls:
                    error = await _refused(fetcher, url, UrlNotAllowed)
                    assert "secret" not in error.message
                fetcher.check(f"http://127.0.0.1:{server.port}/cat.png")  # allowed: no error
                with pytest.raises(UrlNotAllowed):
                    fetcher.check("gopher://127.0.0.1/")
            assert server.requests == []
            lines = [r for r in caplog.records if r.name == "fastvlm_engine.media.fetch"]
            assert len(lines) == len(urls) + 1  # one line per refusal
            assert "secret" not in caplog.text and "/etc/passwd" not in caplog.text

    asyncio.run(scenario())


# --- TLS -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for media.test (made with the openssl command)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=media.test",
                    "-addext", "subjectAltName=DNS:media.test"], check=True, capture_output=True, timeout=60)
    return cert, key


def _tls_server(certificate: tuple[Path, Path], names: list[str | None]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    return context


def test_https_keeps_the_name_for_sni_certificate_and_host_while_connecting_to_the_checked_address(certificate):
    async def scenario() -> None:
        names: list[str | None] = []
        async with Server({"/cat.png": _image()}, tls=_tls_server(certificate, names)) as server:
            trust = ssl.create_default_context(cafile=str(certificate[0]))
            resolver = ScriptedResolver({"media.test": [["127.0.0.1"]]})
            fetcher = MediaFetcher(_policy("media.test", server.port), resolver=resolver, ssl_context=trust)
            result, body = await _fetch(fetcher, f"https://media.test:{server.port}/cat.png")
            assert body == PNG and result.url == f"https://media.test:{server.port}/cat.png"
            assert names == ["media.test"] and server.requests[0][1]["Host"] == f"media.test:{server.port}"
            assert resolver.calls == ["media.test"]

    asyncio.run(scenario())


def test_https_with_an_untrusted_certificate_fails(certificate):
    async def scenario() -> None:
        names: list[str | None] = []
        async with Server({"/cat.png": _image()}, tls=_tls_server(certificate, names)) as server:
            resolver = ScriptedResolver({"media.test": [["127.0.0.1"]]})
            fetcher = MediaFetcher(_policy("media.test", server.port), resolver=resolver)  # the system trust store
            error = await _refused(fetcher, f"https://media.test:{server.port}/cat.png", FetchFailed)
            assert error.message == "The TLS certificate of 'media.test' could not be verified."
            assert names == ["media.test"] and server.requests == []

    asyncio.run(scenario())
