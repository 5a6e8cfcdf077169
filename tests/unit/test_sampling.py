"""Sampling parameters, per-sequence token choice (checked against transformers' own logits
processors) and incremental detokenisation with stop strings on the tiny model's real tokenizer."""

from __future__ import annotations

import random

import pytest
import torch

from fastvlm_engine.engine.detokenize import IncrementalDetokenizer, decode_text
from fastvlm_engine.engine.sampling import MAX_SEED, MAX_STOP_STRINGS, SamplingParams, TokenSampler, choose_tokens


@pytest.mark.parametrize(("params", "field"), [
    (SamplingParams(max_new_tokens=0), "max_new_tokens"),
    (SamplingParams(max_new_tokens=513), "max_new_tokens"),
    (SamplingParams(max_new_tokens=True), "max_new_tokens"),
    (SamplingParams(temperature=-0.1), "temperature"),
    (SamplingParams(temperature=float("nan")), "temperature"),
    (SamplingParams(temperature="hot"), "temperature"),
    (SamplingParams(top_p=0.0), "top_p"),
    (SamplingParams(top_p=1.5), "top_p"),
    (SamplingParams(top_k=-1), "top_k"),
    (SamplingParams(top_k=2.5), "top_k"),
    (SamplingParams(seed=-1), "seed"),
    (SamplingParams(seed=MAX_SEED + 1), "seed"),
    (SamplingParams(seed=1.0), "seed"),
    (SamplingParams(stop=("",)), "stop"),
    (SamplingParams(stop=("x" * 257,)), "stop"),
    (SamplingParams(stop=tuple("abcdefghi")), "stop"),
    (SamplingParams(stop=(3,)), "stop"),
    (SamplingParams(repetition_penalty=0), "repetition_penalty"),
    (SamplingParams(repetition_penalty=float("inf")), "repetition_penalty"),
])
def test_invalid_values_name_their_field(params, field):
    with pytest.raises(ValueError, match=f"^{field}: "):
        params.validate(512)


def test_valid_values_pass_and_stop_is_normalised():
    params = SamplingParams(max_new_tokens=512, temperature=0.7, top_p=0.9, top_k=40, seed=MAX_SEED,
                            stop=["END", "\n\n"], repetition_penalty=1.1)
    assert params.validate(512) is params
    assert params.stop == ("END", "\n\n")
    assert SamplingParams(stop="END").stop == ("END",)
    assert len(SamplingParams(stop=tuple("abcdefgh")).validate(10).stop) == MAX_STOP_STRINGS
    assert SamplingParams().greedy and not params.greedy


def _hf_processed(logits: torch.Tensor, history: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    from transformers import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    scores = logits.unsqueeze(0)
    ids = history.unsqueeze(0)
    scores = RepetitionPenaltyLogitsProcessor(params.repetition_penalty)(ids, scores)
    scores = TemperatureLogitsWarper(params.temperature)(ids, scores)
    if params.top_k:
        scores = TopKLogitsWarper(params.top_k)(ids, scores)
    if params.top_p < 1:
        scores = TopPLogitsWarper(params.top_p)(ids, scores)
    return scores[0]


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.7, top_k=20, top_p=0.9, repetition_penalty=1.3, seed=5),
    SamplingParams(temperature=1.3, top_k=0, top_p=0.5, repetition_penalty=0.8, seed=6),
    SamplingParams(temperature=1.0, top_k=3, top_p=1.0, repetition_penalty=1.0, seed=7),
])
def test_sampling_follows_transformers_processors_and_is_seeded(params):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(300, generator=generator) * 3
    prompt = torch.randint(0, 300, (12,), generator=generator)
    sampler = TokenSampler(params, prompt, 8, torch.device("cpu"))
    expected = _hf_processed(logits, prompt, params)
    # the same draw HF's multinomial would make from those probabilities with the same seed
    draw = torch.multinomial(expected.softmax(-1), 1, generator=torch.Generator().manual_seed(params.seed))
    assert int(sampler.choose(logits)) == int(draw)
    kept = torch.isfinite(expected)
    if params.top_k:
        assert int(kept.sum()) <= params.top_k
    same = [int(TokenSampler(params, prompt, 8, torch.device("cpu")).choose(logits)) for _ in range(3)]
    assert len(set(same)) == 1


def test_greedy_rows_are_argmax_and_history_feeds_the_penalty():
    logits = torch.tensor([[0.1, 3.0, 2.9, -1.0], [5.0, 0.0, 0.0, 0.0]])
    prompt = torch.tensor([0])
    plain = TokenSampler(SamplingParams(), prompt, 4, torch.device("cpu"))
    penalised = TokenSampler(SamplingParams(repetition_penalty=2.0), prompt, 4, torch.device("cpu"))
    assert plain.plain_greedy and not penalised.plain_greedy
    assert choose_tokens(logits, [plain, penalised]) == [1, 0]  # 5.0 / 2 still wins row 2
    assert choose_tokens(torch.tensor([[0.1, 3.0, 2.9, -1.0]]), [penalised]) == [1]
    # token 0 (prompt) and token 1 (just chosen) are both penalised now: 1.5 < 2.9
    assert choose_tokens(torch.tensor([[0.1, 3.0, 2.9, -1.0]]), [penalised]) == [2]


# --- detokenisation ---------------------------------------------------------------------------------

def _stream(tokenizer, tokens, stop=()):
    detok = IncrementalDetokenizer(tokenizer, stop)
    deltas = []
    for token in tokens:
        deltas.append(detok.push([token]))
        if detok.stopped:
            break
    raw = tokenizer.decode(tokens, skip_special_tokens=True)
    deltas.append(detok.finish(None if detok.stopped else raw))
    return detok, [d for d in deltas if d]


@pytest.mark.parametrize("text", ["  héllo wörld, 日本語 テキスト ✓ done  ", "plain words only",
                                  "\n\nline\n\n"])
def test_deltas_never_split_characters_and_add_up_to_the_text(vlm, text):
    tokenizer = vlm.tokenizer
    tokens = tokenizer.encode(text, add_special_tokens=False)
    assert len(tokens) > len(text.split())  # multi-byte characters span several byte-level tokens
    detok, deltas = _stream(tokenizer, tokens)
    assert "".join(deltas) == detok.text == decode_text(tokenizer, tokens) == text.strip()
    assert all("\ufffd" not in delta for delta in deltas)


def test_random_token_streams_match_the_whole_list_decode(vlm):
    tokenizer = vlm.tokenizer
    rng = random.Random(3)
    for _ in range(30):
        tokens = [rng.randrange(len(tokenizer)) for _ in range(rng.randint(1, 40))]
        detok, deltas = _stream(tokenizer, tokens)
        assert "".join(deltas) == detok.text == decode_text(tokenizer, tokens)


def test_stop_strings_cut_the_text_and_are_never_streamed(vlm):
    tokenizer = vlm.tokenizer
    text = "the red dog sits. END of story and more"
    tokens = tokenizer.encode(text, add_special_tokens=False)
    detok, deltas = _stream(tokenizer, tokens, stop=("END", "never here"))
    assert detok.stopped
    assert detok.text == "".join(deltas) == "the red dog sits."
    assert not any("E" in delta for delta in deltas)


def test_a_partial_stop_is_held_back_then_released(vlm):
    tokenizer = vlm.tokenizer
    detok = IncrementalDetokenizer(tokenizer, ("STOP!",))
    shown = "".join(detok.push([t]) for t in tokenizer.encode("go STO", add_special_tokens=False))
    assert shown == "go"  # " STO" could still become " STOP!"
    shown += "".join(detok.push([t]) for t in tokenizer.encode("P now", add_special_tokens=False))
    assert shown == "go STOP now" and not detok.stopped
    assert detok.finish() == "" and detok.text == "go STOP now"


def test_text_held_for_a_possible_stop_is_released_when_generation_ends(vlm):
    tokenizer = vlm.tokenizer
    tokens = tokenizer.encode("almost ST", add_special_tokens=False)
    detok, deltas = _stream(tokenizer, tokens, stop=("STOP",))
    assert not detok.stopped
    assert "".join(deltas) == detok.text == "almost ST"
