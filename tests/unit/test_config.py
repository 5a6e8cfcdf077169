import json
from pathlib import Path

import pytest

from fastvlm_engine.config import Settings, SettingsError, load_settings


def test_defaults_match_the_documented_contract():
    s = load_settings()
    assert (s.host, s.port, s.device, s.dtype) == ("127.0.0.1", 9000, "auto", "auto")
    assert (s.max_queue_size, s.max_batch_wait_ms, s.max_new_tokens) == (256, 5.0, 128)
    assert s.media_roots == []
    assert s.max_image_bytes == 20 * 1024 * 1024 and s.max_image_pixels == 40_000_000


def test_env_wins_over_toml_which_wins_over_defaults(tmp_path, monkeypatch):
    toml = tmp_path / "fastvlm.toml"
    toml.write_text('max_queue_size = 3\nmax_batch_wait_ms = 7\ndevice = "cpu"\n')
    monkeypatch.setenv("FASTVLM_CONFIG", str(toml))
    monkeypatch.setenv("FASTVLM_MAX_QUEUE_SIZE", "4")
    s = load_settings()
    assert s.max_queue_size == 4  # env
    assert s.max_batch_wait_ms == 7.0  # TOML
    assert s.device == "cpu"
    assert s.max_new_tokens == 128  # default


def test_media_roots_split_on_pathsep_and_resolve_symlinks(tmp_path, monkeypatch):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    monkeypatch.setenv("FASTVLM_MEDIA_ROOTS", f"{tmp_path / 'link'}:{tmp_path}")
    assert load_settings().media_roots == [real, tmp_path]


def test_engine_settings_from_env_and_toml(tmp_path, monkeypatch):
    toml = tmp_path / "c.toml"
    toml.write_text("cuda_graph_batch_sizes = [8, 1, 2]\nengine_max_sequences = 16\n")
    monkeypatch.setenv("FASTVLM_CONFIG", str(toml))
    s = load_settings()
    assert s.cuda_graph_batch_sizes == [1, 2, 8] and s.engine_max_sequences == 16
    monkeypatch.setenv("FASTVLM_CUDA_GRAPH_BATCH_SIZES", "4, 1,4")
    assert load_settings().cuda_graph_batch_sizes == [1, 4]
    assert not load_settings().engine_fast_path


def test_media_roots_list_in_toml(tmp_path, monkeypatch):
    toml = tmp_path / "c.toml"
    toml.write_text(f'media_roots = ["{tmp_path}"]\n')
    monkeypatch.setenv("FASTVLM_CONFIG", str(toml))
    assert load_settings().media_roots == [tmp_path]


@pytest.mark.parametrize(("env", "value", "named"), [
    ("FASTVLM_MAX_QUEUE_SIZE", "abc", "FASTVLM_MAX_QUEUE_SIZE"),
    ("FASTVLM_MAX_QUEUE_SIZE", "0", ">= 1"),
    ("FASTVLM_DEVICE", "gpu", "cuda:N"),
    ("FASTVLM_DTYPE", "fp8", "one of auto, float32, bfloat16, float16"),
    ("FASTVLM_WARMUP", "maybe", "true or false"),
    ("FASTVLM_MEDIA_ROOTS", "relative/dir", "absolute"),
    ("FASTVLM_PORT", "70000", "FASTVLM_PORT"),
    ("FASTVLM_CUDA_GRAPH_BATCH_SIZES", "1,0,4", "positive batch sizes"),
    ("FASTVLM_KV_CACHE_MEMORY_FRACTION", "1.5", "<= 1"),
])
def test_invalid_values_stop_start_up_with_the_setting_named(monkeypatch, env, value, named):
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert env in str(info.value) and named in str(info.value)


def test_unknown_toml_key_is_an_error_not_ignored(tmp_path, monkeypatch):
    toml = tmp_path / "c.toml"
    toml.write_text("max_bach_size = 3\n")
    monkeypatch.setenv("FASTVLM_CONFIG", str(toml))
    with pytest.raises(SettingsError, match="max_bach_size"):
        load_settings()


def test_missing_or_broken_toml_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTVLM_CONFIG", str(tmp_path / "absent.toml"))
    with pytest.raises(SettingsError, match="FASTVLM_CONFIG"):
        load_settings()
    broken = tmp_path / "broken.toml"
    broken.write_text("max_queue_size = [\n")
    monkeypatch.setenv("FASTVLM_CONFIG", str(broken))
    with pytest.raises(SettingsError):
        load_settings()


def test_cross_field_rules(monkeypatch):
    monkeypatch.setenv("FASTVLM_MAX_NEW_TOKENS", "600")
    with pytest.raises(SettingsError, match="MAX_NEW_TOKENS_LIMIT"):
        load_settings()


def test_settings_error_is_a_value_error():
    assert issubclass(SettingsError, ValueError)


def test_body_limits_follow_media_limits():
    s = Settings(max_image_bytes=3000, video_max_bytes=30000)
    assert s.body_limit("/predict_image") >= 4000
    assert s.body_limit("/summarize_video") >= 40000
    assert s.body_limit("/healthz") < s.body_limit("/predict_image") + 10**6


def test_tiny_model_path_defaults_under_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert Settings().tiny_model_path == Path(tmp_path) / "fastvlm-engine" / "tiny-model"


def test_every_setting_is_read_by_the_code():
    """A setting nothing reads is a promise the service does not keep."""
    import re

    import fastvlm_engine

    package = Path(fastvlm_engine.__file__).parent
    code = "\n".join(path.read_text() for path in package.rglob("*.py"))
    own = (package / "config.py").read_text()  # Settings' properties read some fields themselves
    unread = [name for name in Settings.model_fields
              if not re.search(rf"settings\.{name}\b", code) and not re.search(rf"self\.{name}\b", own)]
    assert unread == []


def test_fastvlm_settings_prints_no_password_or_secret(monkeypatch, capsys):
    from fastvlm_engine.cli import main

    monkeypatch.setenv("FASTVLM_REGISTRY_URL", "redis://:registry-pass-1@10.0.0.2:6379/0")
    monkeypatch.setenv("FASTVLM_QUEUE_URL", "redis://jobs:queue-pass-2@10.0.0.2:6379/1")
    monkeypatch.setenv("FASTVLM_CLUSTER_SECRET", "cluster-secret-" + "x" * 32)
    assert main(["settings"]) == 0
    printed = capsys.readouterr().out
    assert "registry-pass-1" not in printed and "queue-pass-2" not in printed and "cluster-secret-" not in printed
    shown = json.loads(printed)
    assert shown["registry_url"] == "redis://:***@10.0.0.2:6379/0"
    assert shown["queue_url"] == "redis://jobs:***@10.0.0.2:6379/1"
