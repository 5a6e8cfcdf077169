"""Schemathesis against a real router's own OpenAPI document: no 5xx, ever, and every error
answers with the README's error schema.

The router (two real workers, tiny model) publishes ``/openapi.json``; schemathesis loads it over
HTTP and, for every operation, Hypothesis draws a bounded, deterministic set of cases
(:data:`MAX_EXAMPLES` per operation and generation mode, ``derandomize=True``, no example
database, no shrinking) in both positive (schema-valid) and negative (schema-violating) modes.
Each response goes through schemathesis' checks plus a custom error-schema check. An admin key
is configured and sent with every call, so the admin route is exercised past its 401. Media
endpoints publish three body forms (JSON, multipart, raw bytes); schema-violating data is required
to be rejected only for JSON, since a multipart field is text on the wire ("true" and "0" are valid
prompts) and raw bodies have no schema beyond bytes. Failures are
collected over the whole run and reported together, with a curl command per distinct failure.
Afterwards the router and both workers must be the same, still-ready processes.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter, defaultdict

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from fastvlm_engine.auth import new_key
from tests.helpers.images import photo
from tests.helpers.procs import http
from tests.security.conftest import (
    assert_every_worker_answers,
    assert_pool_unchanged,
    error_contract_problems,
    leaks,
    server_paths,
    unhandled_log_lines,
)

pytestmark = pytest.mark.integration

WORKERS = 2
MAX_EXAMPLES = int(os.environ.get("SECURITY_FUZZ_EXAMPLES", "80"))
"""Hypothesis examples per operation and generation mode (``SECURITY_FUZZ_EXAMPLES`` for a longer hunt)."""
MIN_CASES_PER_BODY_OPERATION = MAX_EXAMPLES // 2
"""A POST operation that ran fewer cases than this per mode means the fuzzer did not really run."""
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-media")
    photo("coffee").resize((64, 48)).save(folder / "coffee.jpg")
    return folder


@pytest.fixture(scope="module")
def router(capped_router_factory, media_dir):
    # Small generation budgets: a fuzzed request that happens to be valid costs milliseconds. An admin
    # key is configured and sent with every call, so the admin route is fuzzed past its 401.
    key, digest = new_key()
    proc = capped_router_factory(
        WORKERS, media_roots=media_dir, max_new_tokens=4, max_new_tokens_limit=16, admin_keys=digest,
        video_caption_max_new_tokens=4, video_summary_mode="extractive", video_max_seconds=3, max_batch_wait_ms=0)
    proc.extra["auth"] = {"Authorization": f"Bearer {key}"}
    return proc


def _headers(response: schemathesis.Response) -> dict[str, str]:
    return {k: v[0] if isinstance(v, list) else v for k, v in response.headers.items()}


def _sent(case: schemathesis.Case) -> str:
    try:
        return json.dumps(case.body, default=str) + " " + case.formatted_path
    except Exception:
        return repr(case.body)


def make_error_schema_check(paths: list[str]):
    """A schemathesis check: non-2xx answers follow the error schema; no answer leaks internals."""

    def error_schema_check(ctx, response: schemathesis.Response, case: schemathesis.Case) -> bool | None:
        text = response.content.decode("utf-8", "replace")
        found = leaks(text, paths, _sent(case))
        if found:
            raise AssertionError(f"response leaks {found}: {text[:500]}")
        if 200 <= response.status_code < 300:
            return None
        try:
            body = json.loads(text)
        except ValueError:
            body = text
        problems = error_contract_problems(response.status_code, _headers(response), body)
        if problems:
            raise AssertionError(f"error response breaks the schema: {problems}: {text[:500]}")
        return None

    return error_schema_check


def _fuzz(operation, mode: GenerationMode, router, checks: list, seen: Counter,
          failures: dict[tuple[str, str, int], str], key: str):
    """A bounded, deterministic Hypothesis run of one operation in one mode; failures are collected."""

    @settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        response = case.call(base_url=router.base_url, headers=router.extra["auth"], timeout=60)
        seen[response.status_code] += 1
        typed = case.media_type in (None, "application/json")
        for check in checks:
            if check is negative_data_rejection and not typed:
                continue
            try:
                case.validate_response(response, checks=[check])
            except BaseException as exc:  # schemathesis' FailureGroup is a BaseExceptionGroup
                if isinstance(exc, KeyboardInterrupt):
                    raise
                name = getattr(check, "__name__", str(check))
                failures.setdefault((key, name, response.status_code),
                                    f"{str(exc)[:1500]}\n    reproduce: {case.as_curl_command()}")

    return run


@pytest.fixture
def ieee_floats():
    """Hypothesis needs subnormal floats; a model loaded in this test process (the CPU engine
    flushes denormals process-wide for speed) may have turned them off."""
    flushed = sys.float_info.min / 2 == 0.0
    if flushed:
        import torch

        torch.set_flush_denormal(False)
    assert sys.float_info.min / 2 != 0.0
    yield
    if flushed:
        torch.set_flush_denormal(True)


def test_openapi_fuzz_finds_no_server_errors(router, media_dir, ieee_floats):
    schema = schemathesis.openapi.from_url(router.base_url + "/openapi.json", config=schemathesis.Config())
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /predict_image", "POST /summarize_video", "GET /healthz", "GET /readyz"} <= labels, labels

    custom = make_error_schema_check(server_paths(media_dir))
    statuses: dict[str, Counter] = defaultdict(Counter)
    failures: dict[tuple[str, str, int], str] = {}  # (operation, check, status) -> first example

    for operation in operations:
        checks = [not_a_server_error, status_code_conformance, response_schema_conformance, custom,
                  content_type_conformance]
        for mode in MODES:
            key = f"{operation.label} [{mode.value}]"
            mode_checks = [*checks, negative_data_rejection] if mode is GenerationMode.NEGATIVE else checks

            run = _fuzz(operation, mode, router, mode_checks, statuses[key], failures, key)
            try:
                run()
            except Unsatisfiable:
                statuses.setdefault(key, Counter())  # nothing to negate (e.g. a GET without parameters)

    summary = "\n".join(f"  {key}: {sum(c.values())} cases {dict(sorted(c.items()))}" for key, c in statuses.items())
    print("\nschemathesis cases per operation and mode:\n" + summary)
    for label in ("POST /predict_image", "POST /summarize_video"):
        for mode in MODES:
            ran = sum(statuses[f"{label} [{mode.value}]"].values())
            assert ran >= MIN_CASES_PER_BODY_OPERATION, f"{label} [{mode.value}] ran only {ran} cases:\n{summary}"
    report = "\n\n".join(f"{key} / {check} / HTTP {status}:\n{example}"
                         for (key, check, status), example in sorted(failures.items()))
    assert not failures, f"{len(failures)} distinct failure(s):\n\n{report}\n\ncases:\n{summary}"


def test_router_and_workers_survive_fuzzing(router):
    """Runs after the fuzzer: same live processes, all ready, nothing unhandled in the logs."""
    assert_pool_unchanged(router, router.extra["baseline"], "after fuzzing")
    status, _, answer = http("POST", router.base_url + "/predict_image", {"image_path": "coffee.jpg"})
    assert status == 200, answer
    assert http("GET", router.base_url + "/readyz")[0] == 200
    assert_every_worker_answers(router.base_url, "coffee.jpg")
    unhandled = unhandled_log_lines(router)
    assert not unhandled, "processes logged unexpected errors while fuzzed:\n" + "\n".join(unhandled)
