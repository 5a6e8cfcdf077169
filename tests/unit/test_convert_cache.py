"""FASTVLM_MODEL at an Apple release: converted once into FASTVLM_CACHE_DIR, shared, reused, named."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fastvlm_engine.config import Settings
from fastvlm_engine.engine.convert import CONVERSION_MARKER, ConversionError
from fastvlm_engine.engine.model_cache import list_cached
from fastvlm_engine.engine.model_info import derive_model_name
from fastvlm_engine.engine.resolve import ModelSourceError, inspect_source, resolve_model
from tests.helpers.apple_fastvlm import write_apple_checkpoint

RELEASE = "llava-fastvithd_0.5b_stage3"


@pytest.fixture(scope="module")
def apple_folder(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    folder, _ = write_apple_checkpoint(tmp_path_factory.mktemp("apple") / RELEASE)
    return folder


def settings(model: str | Path, tmp_path: Path, **extra) -> Settings:
    return Settings(model=str(model), cache_dir=tmp_path / "cache", tiny_model_dir=tmp_path / "tiny", **extra)


def test_an_apple_folder_converts_once_and_is_reused(apple_folder, tmp_path, caplog):
    caplog.set_level("INFO")
    path, info = resolve_model(settings(apple_folder, tmp_path))
    assert Path(path).parent == tmp_path / "cache" and Path(path, "config.json").is_file()
    assert (info.name, info.format, info.dtype, info.image_aspect_ratio) == ("FastVLM-0.5B-stage3", "apple-converted",
                                                                            "float32", "pad")
    assert info.source == str(apple_folder) and len(info.source_hash) == 64
    assert Path(path).name == f"FastVLM-0.5B-stage3-{info.source_hash[:16]}"
    stamp = Path(path, CONVERSION_MARKER).stat().st_mtime_ns
    assert sum("apple-amlr" in record.getMessage() for record in caplog.records) == 1
    caplog.clear()
    again, info_again = resolve_model(settings(apple_folder, tmp_path))
    assert (again, info_again) == (path, info)
    assert Path(path, CONVERSION_MARKER).stat().st_mtime_ns == stamp
    assert not any("apple-amlr" in record.getMessage() for record in caplog.records)
    [entry] = list_cached(tmp_path / "cache")
    assert entry.info == info and entry.size_bytes > 1_000_000


def test_a_changed_source_is_a_new_cache_entry(apple_folder, tmp_path):
    folder = Path(shutil.copytree(apple_folder, tmp_path / RELEASE))
    first, info = resolve_model(settings(folder, tmp_path))
    generation = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**generation, "max_new_tokens": 64}))
    second, changed = resolve_model(settings(folder, tmp_path))
    assert second != first and changed.source_hash != info.source_hash
    assert len(list_cached(tmp_path / "cache")) == 2


_RACER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    barrier = Path(sys.argv[1])
    (barrier / sys.argv[2]).touch()
    deadline = time.monotonic() + 120
    while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    import logging
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    from fastvlm_engine.config import load_settings
    from fastvlm_engine.engine.resolve import resolve_model
    path, info = resolve_model(load_settings())
    print(json.dumps({"path": path, "name": info.name}))
""")


def test_concurrent_workers_convert_once(apple_folder, tmp_path):
    """Two processes released together: one converts, the other waits on the lock and reuses it."""
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("FASTVLM_")}, "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "FASTVLM_MODEL": str(apple_folder), "FASTVLM_CACHE_DIR": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(barrier), name], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True) for name in ("a", "b")]
    try:
        outputs = [proc.communicate(timeout=300) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert results[0] == results[1]
    assert sum(err.count("apple-amlr") for _, err in outputs) == 1  # the licence notice: one conversion
    assert [entry.path for entry in list_cached(tmp_path / "cache")] == [Path(results[0]["path"])]


def test_a_failed_conversion_leaves_nothing_in_the_cache(apple_folder, tmp_path):
    folder = Path(shutil.copytree(apple_folder, tmp_path / RELEASE))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "mm_projector_type": "linear"}))
    with pytest.raises(ConversionError):
        resolve_model(settings(folder, tmp_path))
    assert [path.name for path in (tmp_path / "cache").iterdir() if not path.name.endswith(".lock")] == \
        [".file-digests.json"]


def test_native_and_tiny_folders_pass_through(tiny_model_dir, tmp_path):
    path, info = resolve_model(settings(tiny_model_dir, tmp_path))
    assert path == str(Path(tiny_model_dir).resolve()) and info.format == "tiny-random"
    native = Path(shutil.copytree(tiny_model_dir, tmp_path / "FastVLM-1.5B-native"))
    (native / "FASTVLM_TINY_MODEL.txt").unlink()
    path, info = resolve_model(settings(native, tmp_path))
    assert (path, info.name, info.format, info.dtype) == (str(native), "FastVLM-1.5B", "native", "float32")
    assert not (tmp_path / "cache").exists()  # nothing converted, nothing hashed


def test_no_model_means_the_tiny_model(tmp_path):
    path, info = resolve_model(settings("", tmp_path))
    assert path == str(tmp_path / "tiny") and info.format == "tiny-random" and info.source == "built-in"


@pytest.mark.parametrize(("model", "words"), [
    ("apple/FastVLM-0.5B", "HF_HUB_OFFLINE=1"),
    ("/nonexistent/FastVLM-0.5B", "no such folder"),
])
def test_unreachable_sources_fail_clearly(model, words, tmp_path):
    with pytest.raises(ModelSourceError) as caught:
        resolve_model(settings(model, tmp_path))
    assert words in str(caught.value) and model in str(caught.value)


def test_a_folder_of_another_model_type_fails_clearly(tmp_path):
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelSourceError, match="'llama'.*expected 'fast_vlm'"):
        resolve_model(settings(tmp_path / "llama", tmp_path))


def test_a_hub_id_in_the_local_hub_cache_converts_offline(apple_folder, tmp_path, monkeypatch):
    """HF's cache layout (models--org--name/refs/main -> snapshots/<commit>/...), read with the hub off."""
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--apple--FastVLM-0.5B"
    shutil.copytree(apple_folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    report = inspect_source(settings("apple/FastVLM-0.5B", tmp_path))
    assert report.kind == "apple" and report.folder == repo / "snapshots" / commit
    path, info = resolve_model(settings("apple/FastVLM-0.5B", tmp_path))
    assert info.name == "FastVLM-0.5B" and info.source == "apple/FastVLM-0.5B"
    assert info.public()["source"] == "apple/FastVLM-0.5B"
    assert json.loads(Path(path, "config.json").read_text())["model_type"] == "fast_vlm"


@pytest.mark.parametrize(("source", "hidden", "name"), [
    ("apple/FastVLM-1.5B", None, "FastVLM-1.5B"),
    ("/models/llava-fastvithd_7b_stage2", None, "FastVLM-7B-stage2"),
    ("/hf/models--KamilaMila--FastVLM-0.5B/snapshots/abc", None, "FastVLM-0.5B"),
    ("/models/checkpoint-1234", 1536, "FastVLM-1.5B"),
    ("/models/my-finetune", 64, "my-finetune"),
])
def test_model_names_come_from_the_source(source, hidden, name):
    assert derive_model_name(source, hidden) == name


def test_health_payloads_name_the_model_without_its_path(apple_folder, tmp_path):
    """In process: the worker service loads the converted copy and names it in health and answers."""
    import asyncio

    from fastvlm_engine.worker.service import WorkerService
    from tests.helpers.images import encode, photo

    service = WorkerService(settings(apple_folder, tmp_path, device="cpu", warmup=False))
    service.load()
    try:
        model = service.health()["model"]
        assert model == {"name": "FastVLM-0.5B-stage3", "format": "apple-converted", "dtype": "float32",
                         "source": RELEASE, "source_hash": model["source_hash"]}
        assert str(apple_folder.parent) not in json.dumps(model) and str(tmp_path) not in json.dumps(model)
        answer = asyncio.run(service.describe_bytes(encode(photo("rocket")), "Describe.", 3))
        assert answer.model == "FastVLM-0.5B-stage3"
    finally:
        service.stop()
