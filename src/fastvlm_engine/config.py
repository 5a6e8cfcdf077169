"""Every setting of the service, with one default each.

Precedence (highest first): arguments passed to ``Settings(...)``, ``FASTVLM_*`` environment
variables, the TOML file named by ``FASTVLM_CONFIG``, then the defaults below. TOML keys are
the field names (``max_queue_size = 256``); environment names add the prefix
(``FASTVLM_MAX_QUEUE_SIZE=256``). An invalid value stops start-up with a :class:`SettingsError`
that names the setting and the expected form; nothing silently falls back.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["ENV_PREFIX", "FAULT_KINDS", "Settings", "SettingsError", "load_settings", "parse_faults", "parse_gpu_sizes"]

ENV_PREFIX = "FASTVLM_"
OPENAI_PREFIX = "/v1/"
"""Every path of the OpenAI-compatible API starts with this."""
CHAT_ENDPOINT = OPENAI_PREFIX + "chat/completions"
CHAT_TEXT_SLACK = 4 * 1024 * 1024
"""Bytes of JSON text a chat body may carry besides its media (the parser's own text limit)."""
CONFIG_ENV = "FASTVLM_CONFIG"
AUTO_ADMISSION_QUEUE_PER_SLOT = 32
"""With admission_queue_size = 0, the most requests the router holds per ready slot (a memory bound: the
wait limit usually decides first)."""
MiB = 1024 * 1024

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class SettingsError(ValueError):
    """A setting has an invalid value; the message names it and the expected form."""


def _split_list(value: Any, sep: str) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(sep) if part.strip()]
    return value


class Settings(BaseSettings):
    """The service configuration. Build it with :func:`load_settings` to get readable errors."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        validate_default=True,
        frozen=True,
    )

    # --- model and engine ------------------------------------------------------------------
    model: str = Field("", description="Local folder or Hugging Face hub id of a FastVLM checkpoint: native "
                       "fast_vlm, or Apple's release (llava_qwen2, converted once into cache_dir); empty means "
                       "the built-in tiny random model (meaningless text).")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto means bfloat16 on GPU and float32 on CPU.")
    tiny_model_dir: Path | None = Field(
        None, description="Where the built-in tiny model is built and cached; "
        "default ~/.cache/fastvlm-engine/tiny-model.")
    cache_dir: Path | None = Field(
        None, description="Where Apple-format checkpoints are converted to the native format, once per "
        "source (keyed by its files' hashes); default ~/.cache/fastvlm-engine/converted.")
    max_new_tokens: int = Field(128, ge=1, description="Default generation length in tokens.")
    max_new_tokens_limit: int = Field(512, ge=1, description="Largest max_new_tokens a request may ask for.")
    max_batch_wait_ms: float = Field(5.0, ge=0, le=10_000, description="How long the speech (Whisper) "
                                     "batcher waits to fill a batch after the first audio window arrives (0 = take "
                                     "what is queued); images and frames join the running engine batch at once.")
    max_queue_size: int = Field(256, ge=1, description="Requests a worker queues before answering queue_full.")
    inference_timeout_s: float = Field(600.0, gt=0, description="A request still queued after this many "
                                       "seconds is answered with inference_timeout instead of being run.")
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads per worker; 0 keeps torch's default.")
    warmup: bool = Field(True, description="Run one generation before reporting ready.")

    # --- engine: continuous batching ---------------------------------------------------------
    engine_max_sequences: int = Field(64, ge=1, le=4096, description="Upper bound on sequences decoded "
                                      "together; the KV memory budget may allow fewer.")
    engine_max_context_tokens: int = Field(4096, ge=16, description="KV slot length: the most prompt + "
                                           "max_new_tokens one request may need (also capped by the model's "
                                           "max_position_embeddings); larger requests get "
                                           "context_length_exceeded.")
    engine_max_prefill_tokens: int = Field(4096, ge=1, description="Most (padded) prompt tokens prefilled "
                                           "in one step; later arrivals wait for the next step (one request "
                                           "is always admitted).")
    kv_cache_memory_fraction: float = Field(0.3, gt=0, le=1, description="Share of the free memory (GPU "
                                            "memory after loading, or available host RAM for CPU workers), "
                                            "after kv_cache_reserve_mib, that the KV cache may use.")
    kv_cache_reserve_mib: int = Field(1024, ge=0, description="Memory (MiB) kept free for activations and "
                                      "other processes before the KV budget is taken.")
    engine_fast_path: bool = Field(False, description="GPU only, UNVERIFIED: preallocated KV slots, "
                                   "CUDA-graph decode steps and a channels-last vision tower; ignored on CPU.")
    cuda_graph_batch_sizes: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [1, 2, 4, 8, 16, 32, 64], description="Batch-size buckets captured as CUDA "
        "graphs by the fast path (comma-separated); larger batches run eagerly.")

    @field_validator("cuda_graph_batch_sizes", mode="before")
    @classmethod
    def _split_graph_sizes(cls, value: Any) -> Any:
        return _split_list(value, ",")

    @field_validator("cuda_graph_batch_sizes")
    @classmethod
    def _check_graph_sizes(cls, sizes: list[int]) -> list[int]:
        if not sizes or min(sizes) < 1:
            raise ValueError("expected positive batch sizes like 1,2,4,8")
        return sorted(set(sizes))

    # --- network -----------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Router bind address; 0.0.0.0 is an explicit choice.")
    port: int = Field(9000, ge=0, le=65535, description="Router port.")
    worker_host: str = Field("127.0.0.1", description="Address workers bind to.")
    http_header_timeout_s: float = Field(10.0, gt=0, description="A connection must finish each request's "
                                         "headers within this many seconds of opening or of starting the request; "
                                         "slower ones get 408 and are closed.")
    http_keep_alive_s: float = Field(5.0, gt=0, description="An idle keep-alive client connection is closed "
                                     "after this many seconds.")
    http_max_connections: int = Field(10_000, ge=16, description="Most open client connections; at the limit "
                                      "the longest-idle one is closed to make room, and only when every connection "
                                      "is busy does a new one get 503 too_many_connections.")
    request_body_timeout_s: float = Field(300.0, gt=0, description="Longest a request body may take to arrive "
                                          "in all (408 request_timeout after).")
    request_body_idle_s: float = Field(10.0, gt=0, description="Longest pause between two pieces of a request "
                                       "body; also the grace before request_body_min_rate_kib_s applies.")
    request_body_min_rate_kib_s: float = Field(32.0, ge=0, description="Slowest average upload rate (KiB/s) "
                                               "accepted after the first request_body_idle_s; 0 = no minimum.")
    spool_dir: Path | None = Field(None, description="Folder for uploads being received or forwarded (a few MB "
                                   "of memory per upload, the rest on disk); default the system temp folder.")

    # --- router: pool, admission, proxy ---------------------------------------------------------
    max_workers: int = Field(0, ge=0, description="Most workers in total; 0 = auto (max_workers_per_gpu "
                             "per GPU, or 2 on a host without GPUs).")
    max_workers_per_gpu: int = Field(2, ge=1, description="Most workers pinned to one GPU.")
    gpu_memory_reserve_mib: int = Field(2048, ge=0, description="Free GPU memory (MiB) that must remain "
                                        "after another worker loads; otherwise no more workers go there.")
    ram_max_fraction: float = Field(0.85, gt=0, le=1, description="Host RAM fraction in use above which "
                                    "no further worker is spawned.")
    simulate_gpus: str = Field("", description="SIMULATION for tests on machines without GPUs: GPU sizes, "
                               "e.g. '24GiB,24GiB' or '2x80GiB'. Workers still run on the CPU.")
    simulate_gpu_worker_mib: int = Field(6144, ge=1, description="SIMULATION: GPU memory each worker "
                                         "occupies on a simulated GPU.")
    max_concurrent: int = Field(64, ge=1, description="Most requests one worker holds at once; its slots are "
                                "what its engine can hold (KV capacity), up to this.")
    max_video_concurrent: int = Field(1, ge=1, description="Slots of a worker that videos may take at "
                                      "once, so images do not starve behind videos.")
    admission_queue_size: int = Field(0, ge=0, description="Requests the router holds while every slot is "
                                      "taken (FIFO per endpoint), handing each to the next free slot; 0 = as many "
                                      "as can expect a slot within admission_queue_wait_ms, at most "
                                      f"{AUTO_ADMISSION_QUEUE_PER_SLOT} per ready slot.")
    admission_queue_wait_ms: float = Field(5000.0, ge=0, description="Longest a request waits in the admission "
                                           "queue (and the longest expected wait it may join with) before it is "
                                           "shed with 503 workers_busy; 0 = shed at once when every slot is taken.")
    retry_after_image_min_s: float = Field(1.0, gt=0, description="Lower bound of retry_after_sec for images.")
    retry_after_image_max_s: float = Field(30.0, gt=0, description="Upper bound of retry_after_sec for images.")
    retry_after_video_min_s: float = Field(5.0, gt=0, description="Lower bound of retry_after_sec for videos.")
    retry_after_video_max_s: float = Field(300.0, gt=0, description="Upper bound of retry_after_sec for videos.")
    image_timeout_s: float = Field(120.0, gt=0, description="Router's wait for a worker's image answer.")
    video_timeout_s: float = Field(900.0, gt=0, description="Router's wait for a worker's video answer.")
    worker_connect_timeout_s: float = Field(2.0, gt=0, description="Router's wait to connect to a worker.")
    worker_start_timeout_s: float = Field(600.0, gt=0, description="Longest a worker may take to become ready.")
    shutdown_grace_s: float = Field(30.0, ge=0, description="On SIGTERM, how long in-flight requests may "
                                    "finish before workers are stopped.")

    # --- self-healing (v0.2) -------------------------------------------------------------------
    heartbeat_interval_s: float = Field(1.0, gt=0, description="How often the router polls each worker's "
                                        "/worker_health.")
    heartbeat_timeout_s: float = Field(2.0, gt=0, description="How long one heartbeat may take.")
    heartbeat_failures: int = Field(3, ge=1, description="Consecutive failed heartbeats that make a worker "
                                    "unhealthy (it is then replaced).")
    stall_timeout_s: float = Field(120.0, gt=0, description="A worker whose inference makes no progress for "
                                   "this long while it has work is unhealthy, even if its HTTP answers.")
    respawn_backoff_initial_s: float = Field(1.0, ge=0, description="Wait before replacing a failed worker; "
                                             "doubles with each failure in the quarantine window.")
    respawn_backoff_max_s: float = Field(60.0, ge=0, description="Longest wait before a replacement.")
    quarantine_failures: int = Field(3, ge=1, description="Failures of one worker slot within "
                                     "quarantine_window_s that quarantine it (no traffic, no respawn).")
    quarantine_window_s: float = Field(600.0, gt=0, description="Window for counting a slot's failures.")
    admin_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="SHA-256 hex hashes of admin keys (comma-separated) for /admin "
        "calls such as releasing a quarantined worker; none = admin API disabled.")

    # --- security (v0.4) ----------------------------------------------------------------------
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="SHA-256 hex hashes of the API keys clients may use (comma-separated); "
        "none (and no api_keys_file) = the API is open to anyone who can reach it.")
    api_keys_file: Path | None = Field(None, description="File of API key hashes, one per line: "
                                       "'<sha256> [requests per minute]'; '#' starts a comment.")
    api_rate_limit_per_minute: float = Field(0.0, ge=0, description="Default requests per minute per API key "
                                             "(0 = unlimited); a key's line in api_keys_file may override it.")
    ip_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="IPv4/IPv6 networks (CIDR, comma-separated) allowed to call the "
        "router; empty = any address.")
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Proxies (CIDR, comma-separated) whose X-Forwarded-For is believed.")
    health_endpoints_open: bool = Field(True, description="Keep /healthz and /readyz reachable from any "
                                        "address without a key (for load balancers and orchestrators).")
    worker_token: SecretStr = Field(SecretStr(""), description="Set by the router for each worker it spawns: "
                                    "the worker then answers only calls carrying it. Not for manual use.")

    # --- media -------------------------------------------------------------------------------
    media_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="Folders image_path/video_path may point into, separated by "
        f"{os.pathsep!r} in the environment or a list in TOML.")
    max_image_bytes: int = Field(20 * MiB, ge=1, description="Largest encoded image, in bytes.")
    max_image_pixels: int = Field(40_000_000, ge=1, description="Largest decoded image, in pixels.")
    max_prompt_chars: int = Field(4000, ge=1, description="Longest prompt, in characters.")
    default_prompt: str = Field("Describe the image.", min_length=1, description="Prompt used when a "
                                "request gives none.")

    # --- OpenAI-compatible API ----------------------------------------------------------------
    chat_max_images: int = Field(4, ge=1, le=64, description="Most image_url parts one /v1/chat/completions "
                                 "request may carry (each also costs its image tokens of context); at most one "
                                 "video_url part comes on top.")
    chat_max_text_chars: int = Field(16000, ge=1, description="Most characters of text in all messages of one "
                                     "/v1/chat/completions request together (the context limit in tokens "
                                     "applies as well).")

    # --- fetching media by URL ---------------------------------------------------------------
    fetch_url_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Hosts http(s) media URLs may name (comma-separated): exact names, "
        "'*.example.com' for any name below example.com, '*' for any host name, or IP literals (an IP host must "
        "be listed itself); empty = every media URL is refused (url_not_allowed).")
    fetch_allow_private: bool = Field(False, description="Let listed hosts resolve to private, loopback, "
                                      "link-local, CGNAT and other non-public addresses (refused by default, "
                                      "also in their IPv4-mapped and NAT64 forms).")
    fetch_timeout_s: float = Field(10.0, gt=0, description="Longest one media fetch may take in all: "
                                   "resolution, redirects and the whole body.")
    fetch_connect_timeout_s: float = Field(3.0, gt=0, description="Longest wait to connect to a media host.")
    fetch_max_redirects: int = Field(3, ge=0, le=20, description="Redirects a media fetch follows, each one "
                                     "checked like the first URL; one more fails with fetch_failed.")
    fetch_allowed_ports: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [80, 443], description="Ports media URLs may use (comma-separated).")

    @field_validator("fetch_url_hosts", "fetch_allowed_ports", mode="before")
    @classmethod
    def _split_fetch_lists(cls, value: Any) -> Any:
        return _split_list(value, ",")

    @field_validator("fetch_url_hosts")
    @classmethod
    def _check_fetch_hosts(cls, entries: list[str]) -> list[str]:
        if entries:
            from .media.hosts import parse_host_pattern

            for entry in entries:
                parse_host_pattern(entry)
        return entries

    @field_validator("fetch_allowed_ports")
    @classmethod
    def _check_fetch_ports(cls, ports: list[int]) -> list[int]:
        if any(not 1 <= port <= 65535 for port in ports):
            raise ValueError("expected ports between 1 and 65535, like 80,443")
        return sorted(set(ports))

    # --- video (issue 4) -----------------------------------------------------------------------
    video_max_bytes: int = Field(200 * MiB, ge=1, description="Largest video file or upload, in bytes.")
    video_max_seconds: float = Field(180.0, gt=0, description="Longest video, measured on the decoded stream.")
    video_max_frame_pixels: int = Field(4096 * 2304, ge=1, description="Largest frame, in pixels.")
    video_max_keyframes: int = Field(24, ge=1, le=256, description="Most frames captioned per video.")
    video_seconds_per_keyframe: float = Field(2.0, gt=0, description="Frame budget grows by one keyframe "
                                              "per this many seconds of video, up to video_max_keyframes.")
    video_min_scene_sec: float = Field(0.15, ge=0, description="Shortest scene a cut may create; a change that "
                                       "reverts sooner is a flash, not a cut.")
    video_cut_luma_threshold: float = Field(0.10, gt=0, le=1, description="Mean absolute luma change "
                                            "(0..1) between frames that counts as a hard cut.")
    video_cut_hist_threshold: float = Field(0.5, gt=0, le=1, description="Colour-histogram distance (0..1) "
                                            "between frames that counts as a hard cut.")
    video_dissolve_threshold: float = Field(0.35, gt=0, le=1, description="Colour-histogram distance "
                                            "across a window of frames that counts as a gradual transition.")
    video_dedupe_hamming_same_scene: int = Field(18, ge=0, le=64, description="pHash Hamming distance at or "
                                                 "below which two frames of one scene are duplicates.")
    video_dedupe_hamming_any: int = Field(10, ge=0, le=64, description="pHash Hamming distance at or below "
                                          "which two frames of different scenes are duplicates.")
    video_caption_prompt: str = Field(
        "This is a frame at {timestamp} of a short video. Describe it in one or two short sentences: "
        "the main subjects, the action and the setting.", min_length=1,
        description="Prompt per keyframe; {timestamp} is replaced by the frame time.")
    video_caption_max_new_tokens: int = Field(64, ge=1, description="Tokens per frame caption.")
    video_summary_mode: Literal["model", "extractive"] = Field(
        "model", description="model: the VLM writes the summary from the captions; extractive: pick captions.")
    video_summary_max_new_tokens: int = Field(160, ge=1, description="Tokens for the video summary.")
    video_summary_context_chars: int = Field(6000, ge=200, description="Most timeline characters (captions, "
                                             "speech, on-screen text) given to the summary prompt.")
    video_nsfw_flag_threshold: float = Field(0.8, ge=0, le=1, description="NSFW score that raises a flag.")
    video_nsfw_review_threshold: float = Field(0.5, ge=0, le=1, description="NSFW score that asks for review.")
    video_fast_analysis_decode: bool = Field(False, description="Skip the deblocking filter while decoding "
                                             "(faster, slightly blockier frames).")

    # --- job queue -------------------------------------------------------------------------------
    mode: Literal["sync", "queue"] = Field("sync", description="sync: media endpoints answer with the result; "
                                           "queue: they answer 202 with a job id and workers pull the jobs.")
    queue_url: str = Field("", description="Job store: empty = SQLite at <state_dir>/jobs.db; "
                           "sqlite:///<path> (four slashes for an absolute path); redis://[user:pass@]host:port/db.")
    state_dir: Path | None = Field(None, description="Folder for the SQLite job store and its uploads; "
                                   "default $XDG_STATE_HOME/fastvlm-engine or ~/.local/state/fastvlm-engine.")
    job_ttl_s: float = Field(3600.0, gt=0, description="Finished jobs and their stored media are removed this "
                             "many seconds after they finish (then /job/<id> answers job_not_found).")
    job_max_queued_s: float = Field(600.0, gt=0, description="A job still queued this many seconds after it "
                                    "entered the queue ends as expired.")
    queue_max_jobs: int = Field(1000, ge=1, description="Most queued jobs; more submissions get queue_full.")
    job_wait_max_s: float = Field(60.0, ge=0, description="Longest GET /job/<id>?wait=S may hold a request "
                                  "before answering with the job as it is.")
    job_max_attempts: int = Field(3, ge=1, description="Leases a job may get; when a worker dies or hangs on "
                                  "the last one, the job fails with job_attempts_exhausted.")
    job_lease_s: float = Field(30.0, gt=0, description="A worker's lease on a job; it extends the lease while "
                               "it works, and a lease that runs out delivers the job again.")
    job_video_aging_s: float = Field(5.0, ge=0, description="A video queued this long is taken before images, "
                                     "so videos never starve under sustained image load.")
    job_max_media_mib: int = Field(64, ge=1, description="Largest upload a job may carry with the Redis store "
                                   "(kept in Redis memory until the job finishes); larger ones get media_too_large.")
    queue_timeout_s: float = Field(5.0, gt=0, description="Longest wait for the job store (Redis connect or "
                                   "command, SQLite lock) before answering queue_unavailable.")
    queue_key_prefix: str = Field("fastvlm:", min_length=1, description="Prefix of every Redis key of the job "
                                  "store, so several deployments can share one Redis database.")

    @field_validator("queue_url")
    @classmethod
    def _check_queue_url(cls, value: str) -> str:
        from .jobs.url import parse_queue_url

        parse_queue_url(value)
        return value.strip()

    # --- cluster (several hosts) ---------------------------------------------------------------
    registry_url: str = Field("", description="Worker registry shared by the routers and nodes of a cluster: "
                              "redis://[user:pass@]host:port/db (rediss:// for TLS); empty = no registry (a router "
                              "routes only to the workers it spawns).")
    registry_key_prefix: str = Field("fastvlm:cluster:", min_length=1, description="Prefix of every registry key "
                                     "in Redis, so several clusters (or a job store) can share one Redis database.")
    registry_ttl_s: float = Field(6.0, gt=0, description="A registry entry vanishes this many seconds after its "
                                  "node last published it: a stopped, killed or cut-off node's workers stop getting "
                                  "traffic within this.")
    registry_heartbeat_s: float = Field(2.0, gt=0, description="How often a node publishes its workers' state "
                                        "and load; shorter than registry_ttl_s.")
    registry_timeout_s: float = Field(2.0, gt=0, description="Longest wait for the registry (Redis connect or "
                                      "command) before it counts as unavailable.")
    cluster_secret: SecretStr = Field(SecretStr(""), description="Shared by every router and node of a cluster "
                                      "(at least 16 characters): signs router -> worker requests and registry "
                                      "entries, and workers reachable from other hosts answer only signed calls. "
                                      "Empty = loopback only: nodes refuse to advertise any other address.")
    cluster_replay_window_s: float = Field(30.0, gt=0, le=600, description="A signed request is accepted only "
                                           "while its timestamp is within this many seconds of the receiver's "
                                           "clock (each request once), a registry entry only within its TTL plus "
                                           "this: keep the hosts' clocks closer than this (NTP).")
    node_name: str = Field("", pattern=r"^[A-Za-z0-9._:-]{0,64}$", description="This host's name in the cluster "
                           "(routing groups, drains and /healthz use it; worker ids are <node_name>/<w0>); empty = "
                           "the system host name. Must be unique per node.")
    advertise_host: str = Field("", description="Address (IP or host name) other hosts reach this node's workers "
                                "at; empty = worker_host.")
    host_tags: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, description="This host's tags (a node's, or a router's own workers'), e.g. "
        "gpu=h100,zone=eu-1 (comma-separated key=value of lower-case letters, digits, '_', '.', '-'); a request "
        "requiring tags goes only to hosts offering them all.")
    image_tags: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, description="Tags an image request requires of a worker's host when it sends no "
        "X-FastVLM-Tags header (same form as host_tags); empty = any host.")
    video_tags: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, description="Tags a video request requires of a worker's host when it sends no "
        "X-FastVLM-Tags header, e.g. gpu=h100 to keep videos on big GPUs; empty = any host.")
    local_workers: bool = Field(True, description="`fastvlm serve` spawns workers on this host; false = a "
                                "router-only host (it routes to registered workers, or only queues jobs).")

    @field_validator("registry_url")
    @classmethod
    def _check_registry_url(cls, value: str) -> str:
        if value.strip():
            from .cluster.url import parse_registry_url

            parse_registry_url(value)
        return value.strip()

    @field_validator("cluster_secret")
    @classmethod
    def _check_cluster_secret(cls, value: SecretStr) -> SecretStr:
        from .cluster.secret import MIN_SECRET_CHARS

        if value.get_secret_value() and len(value.get_secret_value()) < MIN_SECRET_CHARS:
            raise ValueError(f"the cluster secret must have at least {MIN_SECRET_CHARS} characters, e.g. from "
                             "python -c 'import secrets; print(secrets.token_urlsafe(32))'")
        return value

    @field_validator("advertise_host")
    @classmethod
    def _check_advertise_host(cls, value: str) -> str:
        value = value.strip()
        if value:
            from .cluster.addresses import endpoint_url

            endpoint_url(value, 1)
        return value

    @field_validator("host_tags", "image_tags", "video_tags", mode="before")
    @classmethod
    def _parse_tags(cls, value: Any) -> Any:
        from .cluster.tags import check_tags, parse_tags

        if isinstance(value, str):
            return parse_tags(value)
        return check_tags(value) if isinstance(value, dict) else value

    # --- video: speech, on-screen text, framing ---
    image_fit: Literal["pad", "crop"] = Field(
        "pad", description="How non-square images and frames reach the model: pad = whole, on a square of "
        "the processor's mean colour (as Apple trained FastVLM); crop = the processor's centre crop.")
    asr_model: str = Field("", description="Local folder or hub id of a Whisper checkpoint for the speech "
                           "stage; empty = the built-in tiny random Whisper when FASTVLM_MODEL is empty too, "
                           "otherwise no speech stage.")
    asr_language: str = Field("", description="Spoken language code (e.g. en) passed to Whisper; empty = "
                              "detect per 30 s window.")
    asr_max_batch_size: int = Field(8, ge=1, le=64, description="Most 30 s audio windows in one Whisper "
                                    "generate call.")
    asr_max_new_tokens: int = Field(224, ge=1, le=440, description="Tokens Whisper may write per 30 s window.")
    asr_vad: bool = Field(True, description="Skip silent audio: only stretches louder than "
                          "asr_vad_threshold_db are sent to Whisper.")
    asr_vad_threshold_db: float = Field(-45.0, ge=-100, le=0, description="Loudness (dBFS, per 30 ms) above "
                                        "which audio counts as voiced.")
    ocr_tesseract_cmd: str = Field("tesseract", min_length=1, description="Tesseract executable for on-screen "
                                   "text (Debian: tesseract-ocr and tesseract-ocr-eng).")
    ocr_language: str = Field("eng", pattern=r"^[A-Za-z_]+(\+[A-Za-z_]+)*$",
                              description="Tesseract language(s), e.g. eng or eng+deu.")
    ocr_min_confidence: float = Field(80.0, ge=0, le=100, description="Tesseract word confidence (0-100) a "
                                      "line of on-screen text needs on average.")
    ocr_max_extra_frames: int = Field(24, ge=0, le=256, description="Frames besides the keyframes read to "
                                      "find when each on-screen text appears and disappears.")
    ocr_timeout_s: float = Field(60.0, gt=0, description="Longest one Tesseract run may take.")
    video_thumbnail_max_side: int = Field(192, ge=16, le=1024, description="Long side (px) of the keyframe "
                                          "JPEGs a request gets with include_thumbnails.")

    # --- web console ---------------------------------------------------------------------------
    ui: bool = Field(True, description="Serve the web console at GET / (static files inside the package, no "
                     "key needed to load the page; the API calls it makes need keys as usual, and the IP "
                     "allowlist applies); false = no console.")

    # --- testing -------------------------------------------------------------------------------
    fault_injection: str = Field("", description="FOR TESTS ONLY, off when empty: faults a worker "
                                 "injects into itself, e.g. 'exit_at_startup@w1', 'crash_after=5', "
                                 "'hang_after=3@w0:once', 'oom_after=2' (comma-separated; @id targets "
                                 "one worker, :once only its first process).")

    # --- logging -------------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    log_format: Literal["json", "text"] = Field("json", description="json: one JSON object per line; "
                                                "text: human-readable lines.")

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if not _DEVICE_RE.match(value):
            raise ValueError("expected auto, cpu, cuda or cuda:N")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("admin_keys", "api_keys", "ip_allowlist", "trusted_proxies", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        return _split_list(value, ",")

    @field_validator("ip_allowlist", "trusted_proxies")
    @classmethod
    def _check_networks(cls, networks: list[str]) -> list[str]:
        for network in networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"expected IP networks like 10.0.0.0/8 or ::1/128, got {network!r}") from None
        return networks

    @field_validator("admin_keys", "api_keys")
    @classmethod
    def _check_hashes(cls, hashes: list[str]) -> list[str]:
        for digest in hashes:
            if not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
                raise ValueError("expected SHA-256 hex digests (64 hex characters); `fastvlm keys new` makes one")
        return [digest.lower() for digest in hashes]

    @field_validator("media_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        return _split_list(value, os.pathsep)

    @field_validator("media_roots")
    @classmethod
    def _check_roots(cls, roots: list[Path]) -> list[Path]:
        resolved = []
        for root in roots:
            if not root.is_absolute():
                raise ValueError(f"media roots must be absolute paths, got {str(root)!r}")
            resolved.append(Path(os.path.realpath(root)))
        return resolved

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_path = os.environ.get(CONFIG_ENV, "").strip()
        if toml_path:
            path = Path(toml_path)
            if not path.is_file():
                raise SettingsError(f"{CONFIG_ENV}: no TOML file at {toml_path!r}")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @property
    def tiny_model_path(self) -> Path:
        """Folder of the built-in tiny model."""
        return self.tiny_model_dir if self.tiny_model_dir is not None else _user_cache() / "tiny-model"

    @property
    def cache_path(self) -> Path:
        """Folder of converted checkpoints."""
        return self.cache_dir if self.cache_dir is not None else _user_cache() / "converted"

    def shown(self) -> dict[str, Any]:
        """Every setting as ``fastvlm settings`` prints it: secrets starred, and no password from a URL."""
        return {name: _URL_PASSWORD.sub(r"\1***@", value) if isinstance(value, str) else value
                for name, value in json.loads(self.model_dump_json()).items()}

    def media_limit(self, kind: str) -> int:
        """Largest image or video, in bytes."""
        return self.max_image_bytes if kind == "image" else self.video_max_bytes

    @property
    def tiny_asr_model_path(self) -> Path:
        """Folder of the built-in tiny Whisper, next to the tiny FastVLM."""
        tiny = self.tiny_model_path
        return tiny.with_name(tiny.name + "-whisper")

    def body_limit(self, endpoint: str) -> int:
        """Largest body for routes read whole; media endpoints enforce their own, per form."""
        media = {"/predict_image": "image", "/summarize_video": "video"}.get(endpoint)
        slack = 256 * 1024
        if endpoint == CHAT_ENDPOINT:
            return self.chat_body_limit()
        return self.media_limit(media) * 4 // 3 + slack if media else slack

    def chat_body_limit(self) -> int:
        """Largest /v1/chat/completions body: every image and the video as base64 data URLs, plus the
        JSON text around them (bounded again, in characters, while it is parsed)."""
        media = self.chat_max_images * self.max_image_bytes + self.video_max_bytes
        return media * 4 // 3 + CHAT_TEXT_SLACK


def _user_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fastvlm-engine"


FAULT_KINDS = ("exit_at_startup", "crash_after", "hang_after", "oom_after", "long_log_line", "slow_steps")
_FAULT_RE = re.compile(r"^(?P<kind>[a-z_]+)(?:=(?P<count>\d+))?(?:@(?P<worker>[\w.-]+))?(?P<once>:once)?$")


def parse_faults(spec: str) -> list[tuple[str, int, str | None, bool]]:
    """'crash_after=5@w0,exit_at_startup:once' -> [(kind, count, worker id or None, once), ...].

    ``:once`` limits a fault to a worker slot's first process, so its replacement runs clean.
    """
    faults = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        match = _FAULT_RE.match(part)
        if not match or match.group("kind") not in FAULT_KINDS:
            raise ValueError(f"expected faults like 'crash_after=5@w0' with kinds {', '.join(FAULT_KINDS)}; "
                             f"got {part!r}")
        kind, count = match.group("kind"), int(match.group("count") or 0)
        if kind not in ("exit_at_startup", "long_log_line") and count < 1:
            raise ValueError(f"{kind} needs a count >= 1, e.g. {kind}=3")
        faults.append((kind, count, match.group("worker"), bool(match.group("once"))))
    return faults


_SIZE_RE = re.compile(r"^(?:(\d+)\s*x\s*)?(\d+(?:\.\d+)?)\s*(MiB|GiB|MB|GB)?$", re.IGNORECASE)


def parse_gpu_sizes(spec: str) -> list[int]:
    """'24GiB,24GiB' or '2x80GiB' -> sizes in bytes (used only by the GPU simulation)."""
    sizes: list[int] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        match = _SIZE_RE.match(part)
        if not match:
            raise ValueError(f"expected sizes like '24GiB,24GiB' or '2x80GiB', got {part!r}")
        count = int(match.group(1) or 1)
        unit = {"mib": MiB, "mb": MiB, "gib": 1024 * MiB, "gb": 1024 * MiB}[(match.group(3) or "GiB").lower()]
        sizes.extend([int(float(match.group(2)) * unit)] * count)
    if not sizes or len(sizes) > 64:
        raise ValueError("expected between 1 and 64 simulated GPUs")
    return sizes


def _expected_form(field: str) -> str:
    """'an integer >= 1 and <= 512 (Most requests grouped ...)' from the field's own metadata."""
    info = Settings.model_fields.get(field)
    if info is None:
        return ""
    kinds = {int: "an integer", float: "a number", bool: "true or false", str: "text", Path: "a path"}
    annotation = info.annotation
    form = kinds.get(annotation, "")
    if getattr(annotation, "__origin__", None) is Literal:
        form = "one of " + ", ".join(map(str, annotation.__args__))
    bounds = []
    for meta in info.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(meta, attr, None) is not None:
                bounds.append(f"{sign} {getattr(meta, attr)}")
    if bounds:
        form = f"{form or 'a value'} {' and '.join(bounds)}"
    description = info.description or ""
    return f"{form} ({description})" if form and description else form or description


_URL_PASSWORD = re.compile(r"(://[^/@:]*:)[^/@]*@")


def _shown_input(field: str, value: Any) -> str:
    """The rejected value as an error may show it: never a secret, nor a password inside a URL."""
    info = Settings.model_fields.get(field)
    if info is not None and info.annotation is SecretStr:
        return "(hidden)"
    if isinstance(value, str):
        value = _URL_PASSWORD.sub(r"\1***@", value)
    return repr(value) if not isinstance(value, (dict, list)) or len(repr(value)) < 80 else "…"


def _format_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "?"
        name = f"{ENV_PREFIX}{field.upper()} (TOML key {field!r})"
        if err["type"] == "extra_forbidden":
            lines.append(f"{field!r}: unknown setting (check the spelling in {CONFIG_ENV} or the arguments)")
            continue
        shown = _shown_input(field, err.get("input"))
        hint = _expected_form(field)
        lines.append(f"{name}: {err['msg']}; got {shown}." + (f" Expected: {hint}" if hint else ""))
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Read the settings from the environment and TOML file, raising a readable SettingsError."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_format_error(exc)) from None
    except SettingsError:
        raise
    except (ValueError, OSError) as exc:  # e.g. a TOML syntax error
        raise SettingsError(f"invalid configuration: {exc}") from None
    if settings.video_nsfw_review_threshold > settings.video_nsfw_flag_threshold:
        raise SettingsError("invalid configuration:\n  FASTVLM_VIDEO_NSFW_REVIEW_THRESHOLD must not "
                            "exceed FASTVLM_VIDEO_NSFW_FLAG_THRESHOLD")
    for kind in ("image", "video"):
        low = getattr(settings, f"retry_after_{kind}_min_s")
        high = getattr(settings, f"retry_after_{kind}_max_s")
        if low > high:
            raise SettingsError(f"invalid configuration:\n  FASTVLM_RETRY_AFTER_{kind.upper()}_MIN_S must not "
                                f"exceed FASTVLM_RETRY_AFTER_{kind.upper()}_MAX_S")
    if settings.api_keys_file is not None:
        from .auth import load_key_file

        try:
            load_key_file(settings.api_keys_file)
        except (OSError, ValueError) as exc:
            raise SettingsError(f"invalid configuration:\n  FASTVLM_API_KEYS_FILE: {exc}") from None
    if settings.fault_injection:
        try:
            parse_faults(settings.fault_injection)
        except ValueError as exc:
            raise SettingsError(f"invalid configuration:\n  FASTVLM_FAULT_INJECTION: {exc}") from None
    if settings.simulate_gpus:
        try:
            parse_gpu_sizes(settings.simulate_gpus)
        except ValueError as exc:
            raise SettingsError(f"invalid configuration:\n  FASTVLM_SIMULATE_GPUS: {exc}") from None
    if settings.registry_heartbeat_s >= settings.registry_ttl_s:
        raise SettingsError("invalid configuration:\n  FASTVLM_REGISTRY_HEARTBEAT_S must be shorter than "
                            "FASTVLM_REGISTRY_TTL_S (an entry would expire between two heartbeats)")
    if settings.max_new_tokens > settings.max_new_tokens_limit:
        raise SettingsError("invalid configuration:\n  FASTVLM_MAX_NEW_TOKENS must not exceed "
                            "FASTVLM_MAX_NEW_TOKENS_LIMIT")
    return settings
