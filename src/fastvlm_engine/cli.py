"""The ``fastvlm`` command: wiring only; every behaviour lives in the packages it calls."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from .config import Settings, SettingsError, load_settings
from .errors import EngineError

__all__ = ["main"]

log = logging.getLogger("fastvlm_engine")


def _settings(**overrides) -> Settings:
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        print(f"fastvlm: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _configure_logging(settings: Settings, process: str, *, quiet: bool = False) -> None:
    from .observability.logs import configure_logging

    level = "WARNING" if quiet and settings.log_level == "INFO" else settings.log_level
    configure_logging(level, settings.log_format, process)


def _quiet_ffmpeg() -> None:
    """Silence FFmpeg's own decoder chatter; bad videos are reported through our error codes."""
    import av.logging

    av.logging.set_level(av.logging.FATAL)


def _print_json(document: dict) -> None:
    print(json.dumps(document, indent=2, ensure_ascii=False))


def _settings_from_fd(fd: int) -> Settings:
    """The settings a supervisor wrote to this worker's pipe (JSON), instead of the environment."""
    with os.fdopen(fd, "rb") as pipe:
        values = json.loads(pipe.read())
    return _settings(**values)


def cmd_worker(args: argparse.Namespace) -> int:
    from .worker.server import run_worker

    settings = _settings_from_fd(args.settings_fd) if args.settings_fd is not None else _settings()
    _configure_logging(settings, args.worker_id or "worker")
    _quiet_ffmpeg()
    return run_worker(settings, host=args.host or settings.worker_host, port=args.port, fd=args.fd,
                      parent_pid=args.parent_pid, worker_id=args.worker_id, incarnation=args.incarnation)


def cmd_node(args: argparse.Namespace) -> int:
    from .supervisor.node import run_node

    overrides = {"max_workers": args.workers, "advertise_host": args.advertise, "node_name": args.name}
    settings = _settings(**overrides)
    _configure_logging(settings, "node")
    return run_node(settings)


def cmd_serve(args: argparse.Namespace) -> int:
    from .router.server import run_router

    overrides = {"host": args.host, "port": args.port, "max_workers": args.workers}
    settings = _settings(**overrides)
    _configure_logging(settings, "router")
    return run_router(settings)


def _run_in_process(settings: Settings, call) -> int:
    """Load the model in this process, run ``call(service)`` once and print its JSON document."""
    from .worker.service import WorkerService

    service = WorkerService(settings)
    service.load()
    try:
        result = asyncio.run(call(service))
    except EngineError as exc:
        _print_json(exc.to_body())
        return 1
    finally:
        service.stop()
    _print_json(result.model_dump())
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    settings = _settings(warmup=False)
    _configure_logging(settings, "cli", quiet=True)
    try:
        data = Path(args.image).read_bytes()
    except OSError as exc:
        print(f"fastvlm: cannot read {args.image}: {exc.strerror}", file=sys.stderr)
        return 1
    return _run_in_process(settings, lambda service: service.describe_bytes(data, args.prompt, args.max_new_tokens))


def cmd_summarize(args: argparse.Namespace) -> int:
    settings = _settings(warmup=False)
    _configure_logging(settings, "cli", quiet=True)
    _quiet_ffmpeg()
    if not Path(args.video).is_file():
        print(f"fastvlm: no file at {args.video}", file=sys.stderr)
        return 1
    return _run_in_process(settings, lambda service: service.summarize_file(args.video))


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from .engine.tiny import build_tiny_model

    out = build_tiny_model(args.dir, image_size=args.image_size, shape=args.shape, seed=args.seed,
                           dtype=args.dtype)
    print(f"wrote a randomly initialised FastVLM ({args.shape}, {args.image_size}px) to {out}; "
          "its text is meaningless")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert an Apple-format FastVLM (folder or hub id) into a new native folder."""
    settings = _settings()
    _configure_logging(settings, "cli", quiet=True)
    from .engine.convert import ConversionError, convert_apple_checkpoint
    from .engine.model_cache import source_digest
    from .engine.resolve import ModelSourceError, source_folder

    try:
        folder = source_folder(args.src)
        result = convert_apple_checkpoint(folder, args.dst, source=args.src,
                                          source_hash=source_digest(folder, settings.cache_path))
    except (ConversionError, ModelSourceError, FileExistsError) as exc:
        print(f"fastvlm convert: {exc}", file=sys.stderr)
        return 1
    rows, new_rows = result.vocab_rows
    print(f"converted {result.name} ({result.dtype}, {result.image_size} px, {result.tensors} tensors, "
          f"vocabulary {rows} -> {new_rows} rows) into {args.dst}\n"
          f"serve it with FASTVLM_MODEL={Path(args.dst).resolve()}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    settings = _settings()
    _configure_logging(settings, "cli", quiet=True)
    from .engine.model_listing import format_models_report, models_report

    report = models_report(settings)
    if args.json:
        _print_json(report)
    else:
        print(format_models_report(report))
    return 0


def cmd_sample_media(args: argparse.Namespace) -> int:
    """Copy the bundled sample photos (public domain / CC0, from scikit-image) and make a sample video."""
    from importlib.resources import files

    from .sample_media.video import write_sample_video

    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    for item in files("fastvlm_engine.sample_media").iterdir():
        if item.name.endswith(".jpg"):
            (out / item.name).write_bytes(item.read_bytes())
    if not (out / "sample.mp4").exists():
        write_sample_video(out / "sample.mp4")
    print(f"sample media in {out.resolve()}; serve it with FASTVLM_MEDIA_ROOTS={out.resolve()}")
    return 0


def settings_table() -> str:
    """The configuration reference as a Markdown table (the README embeds it)."""
    rows = ["| environment | TOML key | default | meaning |", "|---|---|---|---|"]
    for name, info in Settings.model_fields.items():
        default = info.get_default(call_default_factory=True)
        shown = "(empty)" if default in ("", None, []) else str(default).replace("\n", " ")
        if len(shown) > 40:
            shown = shown[:37] + "..."
        rows.append(f"| `FASTVLM_{name.upper()}` | `{name}` | `{shown}` | {info.description or ''} |")
    return "\n".join(rows)


def cmd_keys(args: argparse.Namespace) -> int:
    from .auth import new_key

    key, digest = new_key()
    print(f"key:    {key}\nsha256: {digest}\n\nGive the key to the client; put only the sha256 in the "
          "server's configuration (FASTVLM_API_KEYS or FASTVLM_ADMIN_KEYS, comma-separated).")
    return 0


def errors_table() -> str:
    """Every error code with its HTTP status and meaning, as a Markdown table."""
    from .errors import ERROR_CODES

    rows = ["| code | HTTP status | meaning |", "|---|---|---|"]
    for code, cls in ERROR_CODES.items():
        rows.append(f"| `{code}` | {cls.http_status} | {cls.default_message} |")
    return "\n".join(rows)


def cmd_settings(args: argparse.Namespace) -> int:
    if args.markdown:
        print(settings_table())
        return 0
    if args.errors:
        print(errors_table())
        return 0
    _print_json(_settings().shown())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastvlm", description="FastVLM Descriptor Engine")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the router and spawn workers (the service)")
    serve.add_argument("--host", default=None, help="bind address (default FASTVLM_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default FASTVLM_PORT, 9000)")
    serve.add_argument("--workers", type=int, default=None, help="max workers (default FASTVLM_MAX_WORKERS)")
    serve.set_defaults(func=cmd_serve)

    node = sub.add_parser("node", help="run this host's workers for a cluster: publish them in the registry "
                                       "(FASTVLM_REGISTRY_URL); no client-facing API")
    node.add_argument("--advertise", default=None, help="address other hosts reach the workers at "
                                                        "(default FASTVLM_ADVERTISE_HOST)")
    node.add_argument("--name", default=None, help="this node's name (default FASTVLM_NODE_NAME, the host name)")
    node.add_argument("--workers", type=int, default=None, help="max workers (default FASTVLM_MAX_WORKERS)")
    node.set_defaults(func=cmd_node)

    worker = sub.add_parser("worker", help="run one worker (one model on one device) over HTTP")
    worker.add_argument("--host", default=None, help="bind address (default FASTVLM_WORKER_HOST)")
    worker.add_argument("--port", type=int, default=0, help="port (0 = any free port)")
    # Set by the router: the socket it bound for this worker, its own PID, the worker's id.
    worker.add_argument("--fd", type=int, default=None, help=argparse.SUPPRESS)
    worker.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    worker.add_argument("--worker-id", default=None, help=argparse.SUPPRESS)
    worker.add_argument("--incarnation", type=int, default=0, help=argparse.SUPPRESS)
    worker.add_argument("--settings-fd", type=int, default=None, help=argparse.SUPPRESS)
    worker.set_defaults(func=cmd_worker)

    describe = sub.add_parser("describe", help="describe one image in-process and print the JSON")
    describe.add_argument("image")
    describe.add_argument("--prompt", default=None)
    describe.add_argument("--max-new-tokens", type=int, default=None)
    describe.set_defaults(func=cmd_describe)

    summarize = sub.add_parser("summarize", help="describe one video in-process and print the JSON")
    summarize.add_argument("video")
    summarize.set_defaults(func=cmd_summarize)

    tiny = sub.add_parser("tiny-model", help="build a randomly initialised FastVLM for tests/benchmarks")
    tiny.add_argument("dir")
    tiny.add_argument("--image-size", type=int, default=256, choices=(256, 512, 1024))
    tiny.add_argument("--shape", default="tiny", choices=("tiny", "0.5b"),
                      help="tiny (fast tests) or FastVLM-0.5B's real dimensions (GPU performance work)")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    tiny.set_defaults(func=cmd_tiny_model)

    convert = sub.add_parser("convert", help="convert Apple's FastVLM release format (llava_qwen2) into the "
                             "native fast_vlm format, offline")
    convert.add_argument("src", help="Apple-format folder (or hub id, where the hub or its cache has it)")
    convert.add_argument("dst", help="new folder for the native checkpoint (must not exist)")
    convert.set_defaults(func=cmd_convert)

    models = sub.add_parser("models", help="show the configured model and the converted checkpoints in the cache")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(func=cmd_models)

    samples = sub.add_parser("sample-media", help="write the bundled sample photos into a folder")
    samples.add_argument("dir")
    samples.set_defaults(func=cmd_sample_media)

    # `fastvlm client ...` is handed to the client's own parser in main(); listed here for --help.
    sub.add_parser("client", add_help=False,
                   help="call a running service with the reference client (retries, backoff)")

    keys = sub.add_parser("keys", help="API/admin keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    keys_sub.add_parser("new", help="print a fresh random key and the SHA-256 hash to configure")
    keys.set_defaults(func=cmd_keys)

    show = sub.add_parser("settings", help="print the effective settings (or --markdown: the reference)")
    show.add_argument("--markdown", action="store_true", help="the settings reference table")
    show.add_argument("--errors", action="store_true", help="the error code reference table")
    show.set_defaults(func=cmd_settings)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["client"]:
        from .client import main as client_main

        return client_main(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
