from fastvlm_engine.web.upstream import end_to_end_headers


def test_hop_by_hop_headers_are_not_copied():
    headers = {"Connection": "keep-alive, X-Secret-Hop", "Keep-Alive": "timeout=5", "X-Secret-Hop": "1",
               "Transfer-Encoding": "chunked", "Content-Type": "application/json", "Content-Length": "10",
               "X-Request-ID": "abc", "Upgrade": "h2c", "Proxy-Authorization": "x", "TE": "trailers"}
    assert end_to_end_headers(headers) == {"Content-Type": "application/json", "X-Request-ID": "abc"}


def test_a_connect_timeout_means_the_worker_was_never_reached():
    """A worker that cannot be connected to in time never saw the request: another may take it (no 504)."""
    import asyncio

    import pytest

    from fastvlm_engine.web.upstream import Upstream, WorkerUnreachable
    from tests.helpers.sockets import unaccepting_port

    with unaccepting_port() as port:
        async def call() -> None:
            upstream = Upstream(connect_timeout_s=0.3)
            await upstream.start()
            try:
                await upstream.request("GET", f"http://127.0.0.1:{port}/x", timeout_s=5.0)
            finally:
                await upstream.close()

        with pytest.raises(WorkerUnreachable):
            asyncio.run(call())
