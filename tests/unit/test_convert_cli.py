"""``fastvlm convert`` and ``fastvlm models`` as a user runs them, and a worker serving Apple's format."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest
import torch

from fastvlm_engine.config import Settings
from fastvlm_engine.engine.resolve import resolve_model
from tests.helpers.apple_fastvlm import write_apple_checkpoint
from tests.helpers.images import encode, photo
from tests.helpers.procs import FASTVLM, http, start_worker, wait_ready, worker_env

RELEASE = "llava-fastvithd_1.5b_stage3"


@pytest.fixture(scope="module")
def apple_folder(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    folder, _ = write_apple_checkpoint(tmp_path_factory.mktemp("apple") / RELEASE, weights="bin")
    return folder


def fastvlm(*args: str, **settings: object) -> subprocess.CompletedProcess:
    return subprocess.run([*FASTVLM, *args], env=worker_env(**settings), capture_output=True, text=True,
                          timeout=300)


def test_convert_writes_a_native_folder_and_states_the_licence_once(apple_folder, tmp_path):
    done = fastvlm("convert", str(apple_folder), str(tmp_path / "native"), cache_dir=tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    assert "converted FastVLM-1.5B-stage3" in done.stdout and "vocabulary 448 -> 512 rows" in done.stdout
    assert done.stderr.count("apple-amlr") == 1
    config = json.loads((tmp_path / "native" / "config.json").read_text())
    assert config["model_type"] == "fast_vlm"
    again = fastvlm("convert", str(apple_folder), str(tmp_path / "native"))
    assert again.returncode == 1 and "already exists" in again.stderr


def test_convert_of_a_broken_checkpoint_fails_with_the_keys(apple_folder, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in apple_folder.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    state = torch.load(broken / "pytorch_model.bin", weights_only=True)
    state.pop("model.norm.weight")
    torch.save(state, broken / "pytorch_model.bin")
    done = fastvlm("convert", str(broken), str(tmp_path / "native"))
    assert done.returncode == 1
    assert "missing keys" in done.stderr and "model.language_model.norm.weight" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "native").exists()


def test_models_lists_the_configured_source_and_the_cache(apple_folder, tmp_path):
    before = fastvlm("models", "--json", model=apple_folder, cache_dir=tmp_path / "cache")
    assert before.returncode == 0, before.stderr
    report = json.loads(before.stdout)
    assert report["configured"]["kind"] == "apple" and report["configured"]["ready"] is False
    assert report["configured"]["name"] == "FastVLM-1.5B-stage3" and report["cached"] == []

    path, info = resolve_model(Settings(model=str(apple_folder), cache_dir=tmp_path / "cache"))
    after = json.loads(fastvlm("models", "--json", model=apple_folder, cache_dir=tmp_path / "cache").stdout)
    assert after["configured"]["ready"] is True and after["configured"]["converted"] == path
    [entry] = after["cached"]
    assert (entry["name"], entry["format"], entry["source_hash"], entry["path"]) == (
        "FastVLM-1.5B-stage3", "apple-converted", info.source_hash, path)
    assert entry["size_bytes"] > 1_000_000
    table = fastvlm("models", model=apple_folder, cache_dir=tmp_path / "cache").stdout
    assert "FastVLM-1.5B-stage3" in table and info.source_hash[:16] in table and "MiB" in table


@pytest.mark.integration
def test_a_worker_serves_apples_format_offline(apple_folder, tmp_path):
    """A real `fastvlm worker` with FASTVLM_MODEL at the Apple folder (HF_HUB_OFFLINE=1) converts, loads,
    reports the model in /healthz and names it in answers."""
    proc = start_worker(tmp_path, str(apple_folder), cache_dir=tmp_path / "cache", warmup="false")
    try:
        wait_ready(proc)
        status, _, health = http("GET", proc.base_url + "/healthz")
        assert status == 200 and health["model"] == "FastVLM-1.5B-stage3"
        assert health["model_info"]["format"] == "apple-converted" and health["model_info"]["source"] == RELEASE
        body = {"image_base64": base64.b64encode(encode(photo("coffee"))).decode(), "max_new_tokens": 3}
        status, _, answer = http("POST", proc.base_url + "/predict_image", body)
        assert status == 200 and answer["model"] == "FastVLM-1.5B-stage3"
        assert proc.log().count("apple-amlr") == 1
    finally:
        proc.stop()
