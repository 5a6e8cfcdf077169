import pytest

from fastvlm_engine import errors
from fastvlm_engine.errors import ERROR_CODES, EngineError, WorkersBusy, retry_after_header


def _concrete_error_classes() -> set[type[EngineError]]:
    abstract = {errors.RequestError, errors.MediaError, errors.CapacityError}
    return {obj for obj in vars(errors).values()
            if isinstance(obj, type) and issubclass(obj, EngineError) and obj not in abstract}


def test_every_error_class_is_registered_under_its_own_code():
    classes = _concrete_error_classes()
    assert {cls.code: cls for cls in classes} == ERROR_CODES  # none missing, none extra, none shadowed
    for code, cls in ERROR_CODES.items():
        assert 400 <= cls.http_status <= 599, code


def test_the_module_docstring_documents_every_code_with_its_status():
    tree = errors.__doc__
    for code, cls in ERROR_CODES.items():
        status = "4xx" if cls is errors.HttpError else str(cls.http_status)
        assert f"{status} {code}" in tree, code


def test_the_client_takes_its_retry_rules_from_the_error_classes():
    from fastvlm_engine.client import DEFAULT_RETRY_CODES, FAILURE_CODES, SHED_CODES

    for code, cls in ERROR_CODES.items():
        assert (code in DEFAULT_RETRY_CODES) == cls.retryable, code
        assert (code in FAILURE_CODES) == cls.may_have_run, code
        assert (code in SHED_CODES) == (cls.retryable and not cls.may_have_run), code
    assert ERROR_CODES["rate_limited"].retryable and not ERROR_CODES["rate_limited"].may_have_run


def test_the_seed_codes_keep_their_statuses():
    assert ERROR_CODES["workers_busy"].http_status == 503
    assert ERROR_CODES["path_not_allowed"].http_status == 403
    assert ERROR_CODES["unsupported_media"].http_status == 415
    assert ERROR_CODES["invalid_image"].http_status == 422
    assert ERROR_CODES["invalid_json"].http_status == 400
    assert ERROR_CODES["not_found"].http_status == 404
    assert ERROR_CODES["method_not_allowed"].http_status == 405


def test_body_shape_and_retry_after():
    exc = WorkersBusy(retry_after_sec=2.25)
    body = exc.to_body("abc")
    assert body == {"error": {"code": "workers_busy", "message": WorkersBusy.default_message,
                              "request_id": "abc", "retry_after_sec": 2.25}}
    assert exc.headers() == {"Retry-After": "3"}
    assert EngineError().headers() == {}


@pytest.mark.parametrize(("seconds", "header"), [(0.0, "0"), (0.01, "1"), (1.0, "1"), (1.2, "2"),
                                                 (29.9, "30"), (-5, "0"), (float("nan"), "0"),
                                                 (float("inf"), "0")])
def test_retry_after_header_is_an_integer_never_below_the_body_value(seconds, header):
    assert retry_after_header(seconds) == header


def test_all_names_exported_exist():
    for name in errors.__all__:
        assert hasattr(errors, name)
