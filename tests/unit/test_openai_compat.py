"""The OpenAI protocol layer without processes: what is refused, validated, translated and sent."""

from __future__ import annotations

import io
import json

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from fastvlm_engine.errors import (
    ERROR_CODES,
    InvalidRequest,
    ModelNotFound,
    RateLimited,
    UnsupportedMedia,
    UnsupportedParameter,
    UrlNotAllowed,
    WorkersBusy,
)
from fastvlm_engine.intake.jsonstream import MediaPolicy, MediaRef, collect_media, parse_json
from fastvlm_engine.intake.spool import Spool
from fastvlm_engine.openai_compat import (
    CanonicalChat,
    CanonicalPart,
    ChunkStream,
    completion,
    error_type,
    media_parts,
    openai_error_body,
    parse_request,
)
from fastvlm_engine.router.chat_intake import ChatMedia, _local_path, to_canonical
from fastvlm_engine.web import error_response
from fastvlm_engine.web.openai_errors import OpenAIErrorShape

USER = [{"role": "user", "content": "hi"}]


# --- what is refused, accepted and ignored ----------------------------------------------------------

@pytest.mark.parametrize(("name", "value"), [
    ("n", 2), ("n", True), ("tools", [{"type": "function", "function": {"name": "f"}}]), ("tool_choice", "auto"),
    ("functions", [{"name": "f"}]), ("function_call", "auto"), ("logprobs", True), ("top_logprobs", 3),
    ("response_format", {"type": "json_object"}), ("response_format", {"type": "json_schema"}),
    ("frequency_penalty", 0.5), ("presence_penalty", -1), ("logit_bias", {"42": 5}), ("modalities", ["text", "audio"]),
    ("audio", {"voice": "x"}), ("prediction", {"type": "content", "content": "x"}),
])
def test_unsupported_parameters_are_refused_by_name(name, value):
    with pytest.raises(UnsupportedParameter) as caught:
        parse_request({"messages": USER, name: value})
    assert caught.value.status == 400 and caught.value.details["param"] == name and name in caught.value.message


@pytest.mark.parametrize(("name", "value"), [
    ("n", 1), ("n", None), ("tools", []), ("tool_choice", "none"), ("logprobs", False), ("top_logprobs", 0),
    ("response_format", {"type": "text"}), ("frequency_penalty", 0), ("presence_penalty", 0.0), ("logit_bias", {}),
    ("modalities", ["text"]),
])
def test_neutral_values_of_those_parameters_are_accepted(name, value):
    assert parse_request({"messages": USER, name: value}).messages[0].content == "hi"


def test_unknown_fields_are_ignored_and_known_ones_kept():
    request = parse_request({"messages": [{"role": "developer", "content": "be brief", "name": "ops"}, *USER],
                             "model": "m", "max_tokens": 5, "max_completion_tokens": 7, "temperature": 0.5,
                             "top_p": 0.9, "seed": 3, "stop": "x", "stream": True, "user": "someone",
                             "stream_options": {"include_usage": True, "include_obfuscation": False},
                             "store": True, "metadata": {"a": "b"}, "service_tier": "auto", "future_field": 1})
    assert request.token_limit == 7 and request.token_limit_param == "max_completion_tokens"
    assert request.stream_options.include_usage and request.messages[0].role == "developer"


@pytest.mark.parametrize(("message", "param"), [
    ({"role": "tool", "content": "x", "tool_call_id": "1"}, "messages[0].role"),
    ({"role": "function", "content": "x", "name": "f"}, "messages[0].role"),
    ({"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}, "messages[0].tool_calls"),
    ({"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}, "messages[0].content[0].type"),
    ({"role": "user", "content": [{"type": "file", "file": {}}]}, "messages[0].content[0].type"),
])
def test_tool_turns_and_other_inputs_are_refused(message, param):
    with pytest.raises(UnsupportedParameter) as caught:
        parse_request({"messages": [message]})
    assert caught.value.details["param"] == param


@pytest.mark.parametrize(("document", "param"), [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "someone", "content": "x"}]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": 5}}]}]},
     "messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "a", "detail": "max"}}]}]},
     "messages[0].content[0].image_url.detail"),
    ({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "a"}}]}]},
     "messages[0].content[0].type"),
    ({"messages": USER, "temperature": 2.5}, "temperature"),
    ({"messages": USER, "max_tokens": 0}, "max_tokens"),
    ({"messages": USER, "seed": -1}, "seed"),
    (["not", "an", "object"], "body"),
])
def test_invalid_requests_name_the_parameter_as_openai_does(document, param):
    with pytest.raises(InvalidRequest) as caught:
        parse_request(document)
    assert caught.value.status == 422 and caught.value.details["param"] == param


def _parsed(body: dict):
    policy = MediaPolicy(max_bytes={"image": 1 << 20, "video": 1 << 20}, data_urls=True,
                         open_sink=lambda info: Spool(max_bytes=info.max_bytes, too_large=lambda n: ValueError()))
    return parse_json(io.BytesIO(json.dumps(body).encode()), media=policy)


def test_inline_media_arrive_spooled_and_are_found_in_order():
    png = "data:image/png;base64," + "iVBORw0KGgo" + "A" * 41
    document = _parsed({"messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": png}}, {"type": "text", "text": "a"},
                                     {"type": "video_url", "video_url": {"url": "clip.mp4"}}]},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://h/x.png"}}]}]})
    request = parse_request(document)
    parts = list(media_parts(request))
    assert [(p.message, p.part, p.kind) for p in parts] == [(0, 0, "image"), (0, 2, "video"), (2, 0, "image")]
    assert isinstance(parts[0].url, MediaRef) and parts[0].url.mime == "image/png"
    assert parts[1].param == "messages[0].content[2].video_url.url"
    for ref in collect_media(document):
        ref.sink.close()


def test_an_inline_video_in_an_image_part_is_refused():
    document = _parsed({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:video/mp4;base64,AAAAIGZ0eXA="}}]}]})
    with ChatMedia(document) as media:
        part = next(media_parts(parse_request(document)))
        with pytest.raises(UnsupportedMedia) as caught:
            media._inline(part, part.url)
    assert caught.value.details["param"] == "messages[0].content[0].image_url.url"


@pytest.mark.parametrize(("url", "expected"), [
    ("coffee.jpg", "coffee.jpg"), ("sub/a b.png", "sub/a b.png"), ("/srv/media/x.jpg", "/srv/media/x.jpg"),
    ("file:///srv/media/a%20b.jpg", "/srv/media/a b.jpg"), ("file://localhost/srv/x.jpg", "/srv/x.jpg"),
])
def test_paths_and_file_urls_become_media_root_paths(url, expected):
    part = next(media_parts(parse_request({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}]}]})))
    assert _local_path(part) == expected


@pytest.mark.parametrize(("url", "error"), [
    ("file://evil.example.com/etc/passwd", UrlNotAllowed), ("ftp://host/x.png", UrlNotAllowed),
    ("gopher://x", UrlNotAllowed), ("javascript:alert(1)", UrlNotAllowed),
    ("data:image/png,notbase64", UnsupportedMedia), ("data:text/plain;base64,aGk=", UnsupportedMedia),
    ("", InvalidRequest), ("file://", InvalidRequest),
])
def test_other_urls_are_refused(url, error):
    part = next(media_parts(parse_request({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}]}]})))
    with pytest.raises(error) as caught:
        _local_path(part)
    assert caught.value.details["param"] == "messages[0].content[0].image_url.url"


def test_the_canonical_form_keeps_turns_order_and_sampling():
    request = parse_request({"messages": [
        {"role": "developer", "content": [{"type": "text", "text": "s1"}, {"type": "text", "text": "s2"}]},
        {"role": "user", "content": [{"type": "text", "text": "q"}, {"type": "image_url", "image_url": {"url": "a"}}]},
        {"role": "assistant", "content": None}, {"role": "user", "content": "again"}],
        "max_tokens": 9, "stop": "END", "temperature": 0.7, "seed": 1, "top_k": 5, "stream": True,
        "stream_options": {"include_usage": True}})
    chat = to_canonical(request, {(1, 1): CanonicalPart(type="image", file="image0")})
    assert [m.role for m in chat.messages] == ["system", "user", "assistant", "user"]
    assert [p.text for p in chat.messages[0].content] == ["s1", "s2"] and chat.messages[2].content == []
    assert [(p.type, p.text, p.file) for p in chat.messages[1].content] == [("text", "q", None),
                                                                           ("image", None, "image0")]
    assert (chat.max_new_tokens, chat.stop, chat.stream, chat.include_usage) == (9, ["END"], True, True)
    options = chat.options()
    assert (options.temperature, options.seed, options.top_k, options.max_new_tokens) == (0.7, 1, 5, 9)
    assert CanonicalChat.model_validate_json(chat.model_dump_json()) == chat


@pytest.mark.parametrize("part", [{"type": "text"}, {"type": "image"}, {"type": "image", "file": "a", "path": "b"},
                                  {"type": "text", "text": "x", "path": "p"}, {"type": "audio", "text": "x"}])
def test_a_canonical_part_carries_exactly_its_one_source(part):
    with pytest.raises(ValueError):
        CanonicalPart.model_validate(part)


# --- answers ----------------------------------------------------------------------------------

def test_a_completion_document():
    doc = completion(model="m", text="hello", finish_reason="length", prompt_tokens=10, completion_tokens=2)
    assert doc["object"] == "chat.completion" and doc["id"].startswith("chatcmpl-") and doc["model"] == "m"
    assert doc["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "hello", "refusal": None},
                               "finish_reason": "length", "logprobs": None}]
    assert doc["usage"] == {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}


@pytest.mark.parametrize("include_usage", [True, False])
def test_stream_chunks_follow_openai(include_usage):
    stream = ChunkStream("m", include_usage=include_usage)
    chunks = [stream.role(), stream.text("Hel"), stream.text("lo"), stream.finish("stop")]
    if include_usage:
        chunks.append(stream.usage(10, 2))
    assert {c["id"] for c in chunks} == {stream.id} and {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert [c["choices"][0]["delta"] if c["choices"] else None for c in chunks][:4] == [
        {"role": "assistant", "content": ""}, {"content": "Hel"}, {"content": "lo"}, {}]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:4]] == [None, None, None, "stop"]
    if include_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 12
        assert all(c["usage"] is None for c in chunks[:-1])
    else:
        assert all("usage" not in c for c in chunks)


# --- errors in OpenAI's shape ---------------------------------------------------------------------

def test_error_bodies_are_translated_losslessly():
    ours = WorkersBusy(retry_after_sec=2.5).to_body("rid-1")
    shaped = openai_error_body(ours, 503)
    assert shaped == {"error": {"message": ours["error"]["message"], "type": "server_error", "param": None,
                                "code": "workers_busy", "request_id": "rid-1", "retry_after_sec": 2.5}}
    assert openai_error_body(shaped, 503) == shaped  # idempotent: a worker's shaped error passes the router unchanged
    invalid = InvalidRequest("bad", fields=[{"field": "messages[0].content", "message": "x"}]).to_body()
    assert openai_error_body(invalid, 422)["error"]["param"] == "messages[0].content"
    assert openai_error_body(ModelNotFound(param="model").to_body(), 404)["error"]["type"] == "not_found_error"
    assert openai_error_body("<html>", 502) == {"error": {"message": "Bad Gateway", "type": "server_error",
                                                          "param": None, "code": "http_502"}}


@pytest.mark.parametrize(("status", "kind"), [(400, "invalid_request_error"), (401, "authentication_error"),
                                              (403, "permission_error"), (404, "not_found_error"),
                                              (413, "invalid_request_error"), (422, "invalid_request_error"),
                                              (429, "rate_limit_error"), (500, "server_error"), (503, "server_error")])
def test_error_types_follow_the_status(status, kind):
    assert error_type(status) == kind


def test_new_codes_are_registered_with_their_status():
    assert ERROR_CODES["unsupported_parameter"].http_status == 400
    assert ERROR_CODES["model_not_found"].http_status == 404


def _app() -> TestClient:
    async def busy(request):
        return error_response(WorkersBusy(retry_after_sec=3), "rid")

    async def limited(request):
        return error_response(RateLimited(retry_after_sec=7), None)

    async def stream(request):
        async def events():
            yield b"data: 1\n\n"
            yield b"data: [DONE]\n\n"
        return StreamingResponse(events(), media_type="text/event-stream")

    async def plain(request):
        return PlainTextResponse("teapot", status_code=418)

    routes = [Route(path, handler) for path, handler in (("/v1/busy", busy), ("/v1/limited", limited),
                                                         ("/v1/stream", stream), ("/v1/plain", plain),
                                                         ("/busy", busy))]
    return TestClient(OpenAIErrorShape(Starlette(routes=routes), prefix="/v1/"))


def test_the_asgi_boundary_shapes_errors_only_under_the_prefix():
    client = _app()
    busy = client.get("/v1/busy")
    assert busy.status_code == 503 and busy.headers["retry-after"] == "3"
    assert busy.json()["error"] == {**busy.json()["error"], "type": "server_error", "param": None,
                                    "code": "workers_busy", "request_id": "rid"}
    assert int(busy.headers["content-length"]) == len(busy.content)
    assert client.get("/v1/limited").json()["error"]["type"] == "rate_limit_error"
    assert client.get("/v1/plain").json()["error"] == {"message": "I'm a Teapot", "type": "invalid_request_error",
                                                       "param": None, "code": "http_418"}
    assert client.get("/v1/missing").json()["error"]["code"] == "http_404"  # Starlette's own plain-text 404
    stream = client.get("/v1/stream")
    assert stream.status_code == 200 and stream.text == "data: 1\n\ndata: [DONE]\n\n"
    assert "type" not in client.get("/busy").json()["error"]  # other paths keep the native shape



def test_only_user_turns_carry_media_in_the_canonical_form():
    with pytest.raises(ValueError, match="only user messages"):
        CanonicalChat.model_validate({"messages": [{"role": "assistant", "content": [
            {"type": "image", "file": "image0"}]}]})
