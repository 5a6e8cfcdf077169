"""Every error the service can answer with, in one place.

Each class carries its stable machine ``code``, its HTTP status and whether a client may
retry it; one handler renders any subclass as ``{"error": {"code", "message", ...}}``. Codes
never change once released: clients branch on them, and the reference client derives its retry
rules from ``retryable`` and ``may_have_run`` here rather than keeping lists of its own.

    EngineError                      500 internal_error
    ├── RequestError
    │   ├── InvalidJSON              400 invalid_json
    │   ├── InvalidRequest           422 invalid_request
    │   ├── InvalidTags              400 invalid_tags
    │   ├── ContextTooLong           400 context_length_exceeded
    │   ├── UnsupportedParameter     400 unsupported_parameter
    │   ├── ModelNotFound            404 model_not_found
    │   ├── HttpError                4xx http_error (any other protocol-level refusal)
    │   ├── RequestTimeout           408 request_timeout
    │   ├── ClientClosedRequest      499 client_closed (logged and counted; never reaches a client)
    │   ├── RouteNotFound            404 not_found
    │   ├── MethodNotAllowed         405 method_not_allowed
    │   ├── PayloadTooLarge          413 payload_too_large
    │   ├── Unauthorized             401 unauthorized
    │   ├── ForbiddenIP              403 forbidden_ip
    │   ├── RateLimited              429 rate_limited
    │   ├── WorkerNotFound           404 worker_not_found
    │   ├── HostNotFound             404 host_not_found
    │   ├── WorkerNotQuarantined     409 worker_not_quarantined
    │   └── JobNotFound              404 job_not_found
    ├── MediaError
    │   ├── PathNotAllowed           403 path_not_allowed
    │   ├── MediaNotFound            404 media_not_found
    │   ├── MediaTooLarge            413 media_too_large
    │   ├── ImageTooLarge            413 image_too_large
    │   ├── VideoTooLong             413 video_too_long
    │   ├── UnsupportedMedia         415 unsupported_media
    │   ├── InvalidImage             422 invalid_image
    │   ├── InvalidVideo             422 invalid_video
    │   ├── UrlNotAllowed            400 url_not_allowed
    │   └── FetchFailed              400 fetch_failed
    ├── CapacityError
    │   ├── NotReady                 503 not_ready
    │   ├── QueueFull                503 queue_full
    │   ├── WorkersBusy              503 workers_busy
    │   ├── NoReadyWorkers           503 no_ready_workers
    │   ├── NoMatchingWorkers        503 no_matching_workers
    │   ├── ShuttingDown             503 shutting_down
    │   ├── TooManyConnections       503 too_many_connections
    │   ├── QueueUnavailable         503 queue_unavailable
    │   ├── RegistryUnavailable      503 registry_unavailable
    │   └── JobExpired               503 job_expired (a job's error object)
    ├── InferenceTimeout             504 inference_timeout
    ├── WorkerFailed                 502 worker_failed
    │   └── JobAttemptsExhausted     502 job_attempts_exhausted (a job's error object)
    ├── WorkerTimeout                504 worker_timeout
    └── InferenceFailed              500 inference_failed

Retrying: ``retryable`` errors may be sent again unchanged after ``retry_after_sec`` (capacity
errors and rate limits: nothing ran). ``may_have_run`` errors mean the work may have started, or
crashed a worker, so a client should retry them sparingly if at all; 504s are not retryable by
default because the request already used the whole timeout.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

__all__ = [
    "CapacityError",
    "ClientClosedRequest",
    "ContextTooLong",
    "ERROR_CODES",
    "EngineError",
    "FetchFailed",
    "ForbiddenIP",
    "HostNotFound",
    "HttpError",
    "ImageTooLarge",
    "InferenceFailed",
    "InferenceTimeout",
    "InvalidImage",
    "InvalidJSON",
    "InvalidRequest",
    "InvalidTags",
    "InvalidVideo",
    "JobAttemptsExhausted",
    "JobExpired",
    "JobNotFound",
    "MediaError",
    "MediaNotFound",
    "MediaTooLarge",
    "MethodNotAllowed",
    "ModelNotFound",
    "NoMatchingWorkers",
    "NoReadyWorkers",
    "NotReady",
    "PathNotAllowed",
    "PayloadTooLarge",
    "QueueFull",
    "QueueUnavailable",
    "RateLimited",
    "RegistryUnavailable",
    "RequestError",
    "RequestTimeout",
    "RouteNotFound",
    "ShuttingDown",
    "TooManyConnections",
    "Unauthorized",
    "UnsupportedMedia",
    "UnsupportedParameter",
    "UrlNotAllowed",
    "VideoTooLong",
    "WorkerFailed",
    "WorkerNotFound",
    "WorkerNotQuarantined",
    "WorkerTimeout",
    "WorkersBusy",
    "error_body",
    "retry_after_header",
]


class EngineError(Exception):
    """Base of every error the service reports to a client."""

    code: ClassVar[str] = "internal_error"
    http_status: ClassVar[int] = 500
    default_message: ClassVar[str] = "The server hit an unexpected error."
    response_headers: ClassVar[dict[str, str]] = {}
    retryable: ClassVar[bool] = False
    """Sending the same request again later may succeed (and nothing ran the first time)."""
    may_have_run: ClassVar[bool] = False
    """The work may have started (or crashed a worker) before this error was raised."""

    def __init__(self, message: str | None = None, *, retry_after_sec: float | None = None,
                 **details: Any) -> None:
        self.message = message or self.default_message
        self.status = self.http_status
        """The HTTP status of this response (the class's, except for HttpError)."""
        self.retry_after_sec = retry_after_sec
        self.details = details
        super().__init__(self.message)

    def to_body(self, request_id: str | None = None) -> dict[str, Any]:
        """The JSON body every error response carries."""
        return error_body(self.code, self.message, request_id=request_id,
                          retry_after_sec=self.retry_after_sec, **self.details)

    def headers(self) -> dict[str, str]:
        """Response headers that belong with this error (RFC 9110 Retry-After)."""
        headers = dict(self.response_headers)
        if self.retry_after_sec is not None:
            headers["Retry-After"] = retry_after_header(self.retry_after_sec)
        return headers

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


def error_body(code: str, message: str, *, request_id: str | None = None,
               retry_after_sec: float | None = None, **details: Any) -> dict[str, Any]:
    """Build ``{"error": {...}}``; the one shape shared by router, worker and client."""
    error: dict[str, Any] = {"code": code, "message": message}
    if request_id:
        error["request_id"] = request_id
    if retry_after_sec is not None:
        error["retry_after_sec"] = round(float(retry_after_sec), 3)
    error.update({k: v for k, v in details.items() if v is not None})
    return {"error": error}


def retry_after_header(seconds: float) -> str:
    """RFC 9110 delay-seconds: a non-negative integer, rounded up so clients never retry early."""
    if not math.isfinite(seconds) or seconds < 0:
        seconds = 0.0
    return str(max(1, math.ceil(seconds)) if seconds > 0 else 0)


# --- client-side request problems -------------------------------------------------------

class RequestError(EngineError):
    """The request itself is wrong; retrying it unchanged will fail again."""

    code = "invalid_request"
    http_status = 400
    default_message = "The request is not valid."


class InvalidJSON(RequestError):
    code = "invalid_json"
    http_status = 400
    default_message = "The request body is not valid JSON."


class InvalidRequest(RequestError):
    code = "invalid_request"
    http_status = 422
    default_message = "The request body does not match the endpoint's schema."


class InvalidTags(RequestError):
    """An ``X-FastVLM-Tags`` header that is not a valid tag set (the message names the bad part), or one
    on a request that becomes a queued job, which any worker may run."""

    code = "invalid_tags"
    http_status = 400
    default_message = "The X-FastVLM-Tags header is not a valid tag set (key=value,...)."


class ContextTooLong(RequestError):
    """Prompt plus max_new_tokens exceed what one sequence may hold on this worker: it can never run."""

    code = "context_length_exceeded"
    http_status = 400
    default_message = ("The prompt plus max_new_tokens need more context than this worker can hold "
                       "for one request; shorten the prompt or lower max_new_tokens.")


class UnsupportedParameter(RequestError):
    """An OpenAI parameter this server does not implement (``n`` > 1, tools, logprobs ...), refused
    rather than ignored, so a client never gets an answer that silently differs from what it asked."""

    code = "unsupported_parameter"
    http_status = 400
    default_message = "The request uses a parameter this server does not support."


class ModelNotFound(RequestError):
    """The OpenAI API's ``model`` names a model this server does not serve."""

    code = "model_not_found"
    http_status = 404
    default_message = "This server does not serve that model; GET /v1/models lists the one it does."


class HttpError(RequestError):
    """A protocol-level refusal without a more specific code; the status comes from the framework."""

    code = "http_error"
    http_status = 400
    default_message = "The HTTP request was refused."

    def __init__(self, message: str | None = None, *, status: int = 400, **details: Any) -> None:
        super().__init__(message, **details)
        self.status = status


class RequestTimeout(RequestError):
    code = "request_timeout"
    http_status = 408
    default_message = "The request body did not arrive in time; send it faster or in a smaller request."
    response_headers = {"Connection": "close"}


class ClientClosedRequest(RequestError):
    """The client went away before the answer; nginx's 499. Counted, logged, never sent."""

    code = "client_closed"
    http_status = 499
    default_message = "The client closed the connection before the response."


class RouteNotFound(RequestError):
    code = "not_found"
    http_status = 404
    default_message = "No such endpoint."


class MethodNotAllowed(RequestError):
    code = "method_not_allowed"
    http_status = 405
    default_message = "This endpoint does not accept that HTTP method."


class PayloadTooLarge(RequestError):
    code = "payload_too_large"
    http_status = 413
    default_message = "The request body is larger than this endpoint accepts."
    response_headers = {"Connection": "close"}  # the rest of the body is never read


class Unauthorized(RequestError):
    code = "unauthorized"
    http_status = 401
    default_message = "A valid API key is required."
    response_headers = {"WWW-Authenticate": 'Bearer realm="fastvlm"'}


class ForbiddenIP(RequestError):
    code = "forbidden_ip"
    http_status = 403
    default_message = "Requests from this address are not allowed."


class RateLimited(RequestError):
    code = "rate_limited"
    http_status = 429
    default_message = "Too many requests for this API key; slow down."
    retryable = True


class JobNotFound(RequestError):
    """Unknown, malformed, purged, or another API key's job: all look the same to the caller."""

    code = "job_not_found"
    http_status = 404
    default_message = "No job has that id; finished jobs are removed after their TTL."
    retryable = False


class WorkerNotFound(RequestError):
    code = "worker_not_found"
    http_status = 404
    default_message = "No worker has that id."


class HostNotFound(RequestError):
    code = "host_not_found"
    http_status = 404
    default_message = "No host by that name is registered."


class WorkerNotQuarantined(RequestError):
    code = "worker_not_quarantined"
    http_status = 409
    default_message = "That worker is not quarantined."


# --- media problems ------------------------------------------------------------------------

class MediaError(RequestError):
    """The image or video cannot be used."""

    code = "invalid_media"
    http_status = 422


class PathNotAllowed(MediaError):
    code = "path_not_allowed"
    http_status = 403
    default_message = "That path is outside the configured media roots."


class MediaNotFound(MediaError):
    code = "media_not_found"
    http_status = 404
    default_message = "No readable file exists at that path under the media roots."


class MediaTooLarge(MediaError):
    code = "media_too_large"
    http_status = 413
    default_message = "The media file is larger than the configured limit."


class ImageTooLarge(MediaError):
    code = "image_too_large"
    http_status = 413
    default_message = "The image has more pixels than the configured limit."


class VideoTooLong(MediaError):
    code = "video_too_long"
    http_status = 413
    default_message = "The video is longer than the configured limit."


class UnsupportedMedia(MediaError):
    code = "unsupported_media"
    http_status = 415
    default_message = "The data is not a supported media type."


class InvalidImage(MediaError):
    code = "invalid_image"
    http_status = 422
    default_message = "The image is corrupt or cannot be decoded."


class InvalidVideo(MediaError):
    code = "invalid_video"
    http_status = 422
    default_message = "The video is corrupt, empty or cannot be decoded."


class UrlNotAllowed(MediaError):
    """A media URL this server will not fetch: fetching off, scheme, user info, port, host or address."""

    code = "url_not_allowed"
    http_status = 400
    default_message = "This server does not fetch media from that URL."


class FetchFailed(MediaError):
    """An allowed media URL could not be read: DNS, connection, TLS, HTTP status, redirects or time.

    400, not 502: the client chose the URL, and OpenAI answers unreadable image URLs with 400 too.
    A 5xx would make SDKs retry automatically (fetching someone else's host again on each try) and
    would count a client's dead link as an outage of this service. Not retryable for the same reason.
    """

    code = "fetch_failed"
    http_status = 400
    default_message = "The media could not be fetched from that URL."


# --- capacity and upstream problems (retrying later may succeed) ----------------------------

class CapacityError(EngineError):
    """The service cannot take the request right now."""

    code = "unavailable"
    http_status = 503
    retryable = True


class NotReady(CapacityError):
    code = "not_ready"
    default_message = "The model is still loading."


class QueueFull(CapacityError):
    code = "queue_full"
    default_message = "The inference queue is full."


class WorkersBusy(CapacityError):
    code = "workers_busy"
    default_message = "All FastVLM workers are at max concurrency. Please retry after some time."


class NoReadyWorkers(CapacityError):
    code = "no_ready_workers"
    default_message = "No worker is ready to serve requests."


class NoMatchingWorkers(CapacityError):
    """No ready worker on a host whose tags match the request's (``X-FastVLM-Tags`` or the endpoint's defaults).

    Never answered by falling back to other hosts. Retryable: a matching host may join, finish
    draining or come back within a registry heartbeat, so the raiser must give a retry hint.
    """

    code = "no_matching_workers"
    default_message = "No ready worker runs on a host with the required tags."

    def __init__(self, message: str | None = None, *, required_tags: dict[str, str], retry_after_sec: float,
                 **details: Any) -> None:
        super().__init__(message, retry_after_sec=retry_after_sec, required_tags=dict(required_tags), **details)


class ShuttingDown(CapacityError):
    code = "shutting_down"
    default_message = "The service is shutting down and takes no new requests."
    response_headers = {"Connection": "close"}


class TooManyConnections(CapacityError):
    code = "too_many_connections"
    default_message = "The server has too many open connections; retry shortly."
    response_headers = {"Connection": "close"}


class QueueUnavailable(CapacityError):
    """The job store cannot be reached or written; the message names its kind and host, never a password."""

    code = "queue_unavailable"
    default_message = "The job queue is unavailable."
    retryable = True


class RegistryUnavailable(CapacityError):
    """The worker registry (Redis) cannot be reached; the message names its host, never a password.

    Routers keep routing to the workers of their last good snapshot for up to one TTL, so clients
    see this only when nothing is known at all.
    """

    code = "registry_unavailable"
    default_message = "The worker registry is unavailable."
    retryable = True


class JobExpired(CapacityError):
    """Reported in a job's ``error``: the queue did not drain in time, so the job never ran."""

    code = "job_expired"
    default_message = "The job waited in the queue longer than the limit and was not run."
    retryable = True


class InferenceTimeout(EngineError):
    code = "inference_timeout"
    http_status = 504
    may_have_run = True
    default_message = "The request waited longer than the inference timeout."


class WorkerFailed(EngineError):
    code = "worker_failed"
    http_status = 502
    retryable = True
    may_have_run = True
    default_message = "The worker handling the request failed."


class JobAttemptsExhausted(WorkerFailed):
    """Reported in a job's ``error``: every lease of the job ended with its worker gone or hung."""

    code = "job_attempts_exhausted"
    default_message = "The job's worker stopped before finishing on every attempt."
    retryable = False


class WorkerTimeout(EngineError):
    code = "worker_timeout"
    http_status = 504
    may_have_run = True
    default_message = "The worker did not answer in time."


class InferenceFailed(EngineError):
    code = "inference_failed"
    http_status = 500
    may_have_run = True
    default_message = "The model failed to process the request."


def _collect_codes() -> dict[str, type[EngineError]]:
    codes: dict[str, type[EngineError]] = {}
    stack: list[type[EngineError]] = [EngineError]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls in (RequestError, MediaError, CapacityError):
            continue  # abstract groupings; their subclasses carry the codes
        if cls.code in codes and codes[cls.code] is not cls:
            raise RuntimeError(f"error code {cls.code!r} defined twice")
        codes[cls.code] = cls
    return dict(sorted(codes.items()))


ERROR_CODES: dict[str, type[EngineError]] = _collect_codes()
"""Every stable code and the class (hence HTTP status) behind it."""
