from fastvlm_engine.router.upstream import end_to_end_headers


def test_hop_by_hop_headers_are_not_copied():
    headers = {"Connection": "keep-alive, X-Secret-Hop", "Keep-Alive": "timeout=5", "X-Secret-Hop": "1",
               "Transfer-Encoding": "chunked", "Content-Type": "application/json", "Content-Length": "10",
               "X-Request-ID": "abc", "Upgrade": "h2c", "Proxy-Authorization": "x", "TE": "trailers"}
    assert end_to_end_headers(headers) == {"Content-Type": "application/json", "X-Request-ID": "abc"}
