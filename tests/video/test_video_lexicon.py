"""Whole-word lexicons: vibe tags and caption safety flags, hits and (substring) non-hits."""

from __future__ import annotations

import pytest

from fastvlm_engine.video.lexicon import SAFETY_LEXICON, VIBE_LEXICON, Lexicon, vibe_tags
from fastvlm_engine.video.safety import caption_safety_flags


@pytest.mark.parametrize(("text", "category", "term"), [
    ("A man aims a gun at the camera.", "weapons", "gun"),
    ("Two GUNS lie on the table", "weapons", "guns"),
    ("They kill the lights and leave.", "violence", "kill"),
    ("A syringe and cocaine on a mirror", "drugs", "syringe"),
    ("text about self-harm appears", "self_harm", "self harm"),
    ("a post about self harm", "self_harm", "self harm"),
    ("A fight breaks out in the street", "violence", "fight"),
])
def test_safety_hits(text, category, term):
    assert term in SAFETY_LEXICON.find(text)[category]


@pytest.mark.parametrize("text", [
    "Gunther has begun to paint the wall.",
    "She shows great skill on the skateboard.",
    "A burgundy shotglass on a counter.",
    "Drugstore-brand shampoo? No: a druggist-free zone.",
    "The killer whale swims.",  # 'killer' is not 'kill'
    "A gunshot-free documentary about gunmetal paint.",
])
def test_safety_non_hits_on_substrings(text):
    assert SAFETY_LEXICON.find(text) == {}


@pytest.mark.parametrize(("text", "category"), [
    ("A cat sleeps on the sofa.", "pets"),
    ("Waves of the sea at dawn", "travel"),
    ("A chef is cooking pasta in a kitchen", "food"),
    ("People dancing at a party", "energetic"),
    ("A rocket on the launch pad", "tech"),
])
def test_vibe_hits(text, category):
    assert category in VIBE_LEXICON.find(text)


@pytest.mark.parametrize("text", [
    "Papers scatter across the desk.",  # not 'cat'
    "The season of harvest.",  # not 'sea'
    "A catalogue of dogma.",  # not 'cat', not 'dog'
    "A petition is signed.",  # not 'pet'
])
def test_vibe_non_hits_on_substrings(text):
    assert "pets" not in VIBE_LEXICON.find(text)
    assert "travel" not in VIBE_LEXICON.find(text)


def test_vibe_tags_rank_by_caption_count_then_lexicon_order_then_visual():
    captions = [
        "A cat sits in a kitchen next to a cup of coffee.",
        "The cat jumps onto a laptop keyboard.",
        "A dog and a cat play in the garden.",
    ]
    tags = vibe_tags(captions, ["bright", "pets", "calm"])
    # pets: three captions; energetic/food/outdoors/tech: one each, in lexicon order; then the
    # visual tags not already present.
    assert tags == ["pets", "energetic", "food", "outdoors", "tech", "bright", "calm"]
    assert vibe_tags(captions, max_tags=2) == ["pets", "energetic"]
    assert vibe_tags([], ["dark"]) == ["dark"]


def test_caption_safety_flags_report_frames_and_evidence():
    captions = [
        (0.5, "A man holds a rifle in a field."),
        (2.0, "Two people fight; one is holding a pistol."),
        (4.0, "A calm lake at sunset."),
        (6.0, "The lake again."),
    ]
    flags = {f.category: f for f in caption_safety_flags(captions)}
    assert set(flags) == {"violence", "weapons"}
    weapons = flags["weapons"]
    assert weapons.source == "caption_lexicon"
    assert weapons.frames == [0.5, 2.0]
    assert weapons.evidence == ["rifle", "pistol"]
    assert weapons.score == 0.5 and weapons.level == "flag"
    violence = flags["violence"]
    assert violence.frames == [2.0] and violence.score == 0.25 and violence.level == "flag"
    few = caption_safety_flags([*captions, *((float(t), "Lake.") for t in range(8, 12))])
    assert {f.category: f.level for f in few}["violence"] == "review"


def test_benign_captions_raise_no_flags():
    captions = [(0.0, "Gunther has begun a skillful drawing of a killer whale."), (1.0, "A cat naps.")]
    assert caption_safety_flags(captions) == []


def test_lexicon_rejects_empty_categories():
    with pytest.raises(ValueError):
        Lexicon({"empty": ["  "]})
