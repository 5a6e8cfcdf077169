"""The bounded summary prompt and the extractive fallback."""

from __future__ import annotations

import itertools
import re

import pytest

from fastvlm_engine.video.summary import (
    MIN_CAPTION_CHARS,
    build_summary_prompt,
    caption_lines,
    extractive_summary,
    format_timestamp,
)

LONG = ("A person in a red jacket walks along a crowded market street, passing stalls of fruit, "
        "spices and bright fabric while vendors call out to shoppers under strings of lights.")


def _line_time(line: str) -> float:
    return float(re.match(r"\[(\d+\.\d)s\]", line).group(1))


def test_all_captions_kept_when_they_fit():
    captions = [(0.0, "A cat."), (2.5, "A dog."), (5.0, "A bird.")]
    assert caption_lines(captions, 1000) == ["[0.0s] A cat.", "[2.5s] A dog.", "[5.0s] A bird."]


@pytest.mark.parametrize(("count", "budget"), [(24, 6000), (24, 1200), (200, 6000), (200, 200), (3, 200)])
def test_prompt_captions_bounded_and_timestamped(count, budget):
    captions = [(i * 1.5, f"{LONG} (frame {i})") for i in range(count)]
    lines = caption_lines(captions, budget)
    assert sum(len(line) for line in lines) + len(lines) - 1 <= budget
    assert lines and all(re.match(r"\[\d+\.\ds\] \S", line) for line in lines)
    times = [_line_time(line) for line in lines]
    assert times == sorted(times)
    prompt = build_summary_prompt(captions, duration=count * 1.5, max_chars=budget)
    assert len(prompt) <= budget + 400
    assert all(line in prompt for line in lines)


def test_shortening_comes_before_dropping_and_dropping_is_even():
    captions = [(float(i), LONG) for i in range(10)]
    shortened = caption_lines(captions, 10 * (MIN_CAPTION_CHARS + 20))
    assert len(shortened) == 10 and all(line.endswith("…") for line in shortened)
    dropped = caption_lines([(float(i), LONG) for i in range(100)], 10 * (MIN_CAPTION_CHARS + 10))
    times = [_line_time(line) for line in dropped]
    assert 1 < len(times) < 100
    gaps = {round(b - a, 1) for a, b in itertools.pairwise(times)}
    assert max(gaps) - min(gaps) <= 1.0  # evenly spread over the video
    assert times[0] < 10 and times[-1] > 85


def test_prompt_mentions_duration_and_asks_for_a_summary():
    prompt = build_summary_prompt([(0.0, "A cat.")], duration=12.44, max_chars=500)
    assert "12.4-second video" in prompt
    assert "[0.0s] A cat." in prompt
    assert "summary" in prompt.lower()


def test_extractive_summary_is_diverse_and_in_time_order():
    captions = [
        (0.0, "A woman cooks pasta in a small kitchen."),
        (2.0, "A woman cooks pasta in a small kitchen with a pot."),
        (4.0, "A cat sleeps on a sunny windowsill."),
        (6.0, "A woman stirs pasta in a pot in the kitchen."),
        (8.0, "Fireworks explode over a dark city skyline."),
    ]
    summary = extractive_summary(captions, max_captions=3)
    assert "cat sleeps" in summary and "Fireworks" in summary
    assert sum("pasta" in part for part in summary.split(". ")) == 1
    positions = [summary.index(s) for s in ("pasta", "cat", "Fireworks")]
    assert positions == sorted(positions)


def test_extractive_summary_edge_cases():
    assert extractive_summary([]) == ""
    assert extractive_summary([(0.0, "  "), (1.0, "")]) == ""
    assert extractive_summary([(0.0, "a dog runs")]) == "A dog runs."
    same = [(float(i), "A dog runs on the beach.") for i in range(5)]
    assert extractive_summary(same) == "A dog runs on the beach."
    with pytest.raises(ValueError):
        extractive_summary(same, max_captions=0)


def test_format_timestamp():
    assert format_timestamp(12.44) == "12.4s"
    assert format_timestamp(0) == "0.0s"
