"""Host tags: parsing (with errors naming the bad part), bounds, matching, and the settings that carry them."""

from __future__ import annotations

import pytest

from fastvlm_engine.cluster.tags import MAX_TAGS, check_tags, format_tags, matches, parse_tags
from fastvlm_engine.config import SettingsError, load_settings
from fastvlm_engine.headers import TAGS_HEADER


def test_parse_tags_reads_pairs_and_ignores_spacing_and_empty_parts():
    assert parse_tags("gpu=h100,zone=eu-1") == {"gpu": "h100", "zone": "eu-1"}
    assert parse_tags(" gpu = h100 , , zone=eu-1, ") == {"gpu": "h100", "zone": "eu-1"}
    assert parse_tags("") == {} and parse_tags(" , ") == {}
    assert parse_tags("rack.id=r_2.b-3") == {"rack.id": "r_2.b-3"}


@pytest.mark.parametrize(("spec", "named"), [
    ("gpu", "'gpu'"),                      # no '='
    ("gpu=h100,zone", "'zone'"),
    ("GPU=h100", "'GPU'"),                 # upper case key
    ("gpu=H100", "'H100'"),                # upper case value
    ("gpu=", "gpu=''"),                    # empty value
    ("=h100", "''"),                       # empty key
    ("gpu=h 100", "'h 100'"),              # space inside a value
    ("gpu=h100;rm", "'h100;rm'"),
    ("zone=eu,zone=us", "'zone' given twice"),
    ("k" * 33 + "=v", "'" + "k" * 33 + "'"),
    ("k=" + "v" * 65, "'" + "v" * 65 + "'"),
    ("gpu=h100\r\nx=y", "h100\\r\\nx"),
])
def test_parse_tags_names_the_bad_part(spec, named):
    with pytest.raises(ValueError) as caught:
        parse_tags(spec)
    assert named in str(caught.value)


def test_tag_sets_are_bounded_in_count_and_in_text_length():
    at_limit = ",".join(f"k{i}=v" for i in range(MAX_TAGS))
    assert len(parse_tags(at_limit)) == MAX_TAGS
    with pytest.raises(ValueError, match=f"at most {MAX_TAGS}"):
        parse_tags(at_limit + ",extra=v")
    with pytest.raises(ValueError, match="at most .* characters"):
        parse_tags("a=b," * 100_000)  # refused before it is split
    with pytest.raises(ValueError, match=f"at most {MAX_TAGS}"):
        check_tags({f"k{i}": "v" for i in range(MAX_TAGS + 1)})


def test_check_tags_applies_the_same_rules_to_mappings():
    assert check_tags({"gpu": "h100"}) == {"gpu": "h100"}
    for bad in ({"gpu": 100}, {"Gpu": "h100"}, {"gpu": ""}, {1: "x"}):
        with pytest.raises(ValueError):
            check_tags(bad)


def test_format_tags_is_the_inverse_of_parse_tags():
    tags = {"zone": "eu-1", "gpu": "h100"}
    assert format_tags(tags) == "gpu=h100,zone=eu-1"
    assert parse_tags(format_tags(tags)) == tags


def test_matches_requires_every_tag_with_the_same_value():
    offered = {"gpu": "h100", "zone": "eu-1"}
    assert matches({}, offered) and matches({}, {})
    assert matches({"gpu": "h100"}, offered)
    assert matches({"gpu": "h100", "zone": "eu-1"}, offered)
    assert not matches({"gpu": "a100"}, offered)
    assert not matches({"gpu": "h100", "zone": "us-2"}, offered)
    assert not matches({"disk": "ssd"}, offered)
    assert not matches({"gpu": "h10"}, offered)  # no prefix matching
    assert not matches({"gpu": "h100"}, {})


def test_the_header_name():
    assert TAGS_HEADER == "X-FastVLM-Tags"


def test_tag_settings_come_from_the_environment_and_from_toml(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTVLM_HOST_TAGS", "gpu=h100,zone=eu-1")
    monkeypatch.setenv("FASTVLM_VIDEO_TAGS", "gpu=h100")
    settings = load_settings()
    assert settings.host_tags == {"gpu": "h100", "zone": "eu-1"}
    assert settings.video_tags == {"gpu": "h100"} and settings.image_tags == {}
    monkeypatch.delenv("FASTVLM_HOST_TAGS")
    toml = tmp_path / "fastvlm.toml"
    toml.write_text('image_tags = "zone=eu-1"\n[host_tags]\ngpu = "a100"\n')
    monkeypatch.setenv("FASTVLM_CONFIG", str(toml))
    settings = load_settings()
    assert settings.host_tags == {"gpu": "a100"} and settings.image_tags == {"zone": "eu-1"}


@pytest.mark.parametrize("field", ["host_tags", "image_tags", "video_tags"])
def test_a_bad_tag_setting_stops_start_up_naming_the_setting_and_the_part(field):
    with pytest.raises(SettingsError) as caught:
        load_settings(**{field: "gpu=H100"})
    assert f"FASTVLM_{field.upper()}" in str(caught.value) and "'H100'" in str(caught.value)


def test_no_matching_workers_is_a_retryable_503_naming_the_tags_with_a_retry_hint():
    from fastvlm_engine.client import DEFAULT_RETRY_CODES
    from fastvlm_engine.errors import CapacityError, NoMatchingWorkers

    error = NoMatchingWorkers(required_tags=parse_tags("gpu=h100"), retry_after_sec=6.0)
    assert isinstance(error, CapacityError) and error.http_status == 503 and error.retryable
    assert error.to_body("r1") == {"error": {"code": "no_matching_workers", "message": error.default_message,
                                             "request_id": "r1", "retry_after_sec": 6.0,
                                             "required_tags": {"gpu": "h100"}}}
    assert error.headers() == {"Retry-After": "6"} and "no_matching_workers" in DEFAULT_RETRY_CODES
    with pytest.raises(TypeError):
        NoMatchingWorkers(required_tags={"gpu": "h100"})  # the retry hint is not optional
