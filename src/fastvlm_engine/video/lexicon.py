"""Whole-word lexicons over captions: vibe tags and text safety categories.

Matching is case-insensitive with regex word boundaries (``\\b``) on both sides of every term,
so "cat" never fires on "scatter", "sea" on "season", "gun" on "begun"/"gunther" or "kill" on
"skill". Multi-word terms match across any run of spaces or hyphens ("self harm",
"self-harm"). Plurals and inflections are listed explicitly rather than stemmed, which keeps
every match explainable: the matched words are returned as evidence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["SAFETY_TERMS", "VIBE_TERMS", "Lexicon", "vibe_tags"]

VIBE_TERMS: dict[str, tuple[str, ...]] = {
    "energetic": ("dance", "dances", "dancing", "dancer", "dancers", "jump", "jumps", "jumping",
                  "party", "partying", "celebrate", "celebrating", "celebration", "cheering",
                  "energetic", "excited", "sprinting", "racing", "skateboarding", "fireworks"),
    "calm": ("calm", "peaceful", "quiet", "relaxing", "relaxed", "serene", "tranquil", "gentle",
             "meditating", "meditation", "sunset", "sunrise", "resting", "sleeping"),
    "funny": ("funny", "laughing", "laughs", "joke", "jokes", "silly", "comedy", "comedic",
              "prank", "hilarious", "goofy", "costume"),
    "food": ("food", "cooking", "cooks", "kitchen", "dish", "dishes", "meal", "meals", "pizza",
             "pasta", "burger", "eating", "eats", "chef", "recipe", "cake", "dessert", "coffee",
             "cup of coffee", "latte", "breakfast", "lunch", "dinner", "restaurant", "baking",
             "salad", "fruit", "vegetables", "plate of"),
    "pets": ("cat", "cats", "kitten", "kittens", "dog", "dogs", "puppy", "puppies", "pet",
             "pets", "hamster", "parrot", "rabbit", "bunny", "tabby", "kitty"),
    "travel": ("travel", "traveling", "travelling", "trip", "vacation", "holiday", "tourist",
               "tourists", "airport", "airplane", "plane", "hotel", "landmark", "sightseeing",
               "suitcase", "passport", "road trip", "city skyline", "sea", "ocean", "harbor"),
    "fitness": ("gym", "workout", "working out", "exercise", "exercising", "yoga", "pilates",
                "push-ups", "push ups", "squats", "weightlifting", "lifting weights", "dumbbell",
                "dumbbells", "treadmill", "jogging", "running", "fitness", "stretching"),
    "outdoors": ("outdoors", "outdoor", "forest", "woods", "mountain", "mountains", "hiking",
                 "hike", "trail", "park", "field", "meadow", "river", "lake", "beach", "camping",
                 "garden", "trees", "waterfall", "desert", "snow"),
    "nightlife": ("nightclub", "dance club", "at a bar", "bartender", "pub", "concert", "dj",
                  "neon", "night out",
                  "cocktail", "cocktails", "rave", "festival", "stage lights"),
    "educational": ("lecture", "tutorial", "lesson", "classroom", "teacher", "teaching",
                    "explaining", "explains", "whiteboard", "blackboard", "diagram", "chart",
                    "presentation", "experiment", "science", "textbook", "studying", "how to"),
    "beauty": ("makeup", "make-up", "lipstick", "mascara", "eyeliner", "skincare", "cosmetics",
               "salon", "manicure", "nail polish", "hairstyle", "haircut", "beauty", "perfume"),
    "tech": ("computer", "laptop", "smartphone", "phone", "tablet", "keyboard", "screen",
             "monitor", "robot", "robotics", "gadget", "software", "coding", "programming",
             "circuit", "drone", "rocket", "spacecraft", "satellite", "astronaut", "technology",
             "video game", "gaming", "console"),
}
"""Caption words that suggest each vibe tag (order = tie-break order)."""

SAFETY_TERMS: dict[str, tuple[str, ...]] = {
    "violence": ("violence", "violent", "fight", "fights", "fighting", "brawl", "punch",
                 "punches", "punching", "beating up", "beaten up", "assault", "attacking",
                 "attacked", "kill", "kills", "killing", "killed", "murder", "murdered", "stab",
                 "stabbed", "stabbing", "blood", "bloody", "bleeding", "corpse", "dead body",
                 "injured", "wounded", "gore", "shooting at", "shot dead", "execution", "riot",
                 "torture"),
    "weapons": ("gun", "guns", "handgun", "handguns", "pistol", "pistols", "rifle", "rifles",
                "shotgun", "firearm", "firearms", "revolver", "assault rifle", "machine gun",
                "ammunition", "ammo", "grenade", "grenades", "weapon", "weapons", "machete",
                "sword", "swords", "dagger", "explosives", "explosive device"),
    "drugs": ("drug", "drugs", "cocaine", "heroin", "meth", "methamphetamine", "crack pipe",
              "marijuana", "cannabis", "smoking weed", "bong", "syringe", "syringes",
              "narcotics", "overdose", "fentanyl", "opioid", "opioids", "lsd", "mdma",
              "ecstasy pills", "snorting"),
    "self_harm": ("self-harm", "self harm", "self-injury", "suicide", "suicidal", "cutting herself",
                  "cutting himself", "cutting themselves", "cutting myself", "slit wrist",
                  "slit wrists", "noose", "hanging himself", "hanging herself",
                  "jumping off a bridge"),
}
"""Caption words/phrases per safety category (matched whole-word only)."""


def _term_pattern(term: str) -> str:
    words = re.split(r"[\s\-]+", term.strip().lower())
    return r"[\s\-]+".join(re.escape(w) for w in words if w)


class Lexicon:
    """Whole-word matcher for named categories of terms.

    Arguments:
        categories: category name -> terms (words or phrases; matched case-insensitively,
            hyphens and spaces interchangeable). Category order is kept for tie-breaks.
    """

    def __init__(self, categories: Mapping[str, Iterable[str]]) -> None:
        self._patterns: dict[str, re.Pattern[str]] = {}
        for name, terms in categories.items():
            alternatives = sorted({_term_pattern(t) for t in terms if t.strip()}, key=len, reverse=True)
            if not alternatives:
                raise ValueError(f"category {name!r} has no terms")
            self._patterns[name] = re.compile(r"\b(?:" + "|".join(alternatives) + r")\b", re.IGNORECASE)

    @property
    def categories(self) -> list[str]:
        return list(self._patterns)

    def find(self, text: str) -> dict[str, list[str]]:
        """Categories present in ``text`` with the distinct matched terms, in order of appearance."""
        found: dict[str, list[str]] = {}
        for name, pattern in self._patterns.items():
            seen: list[str] = []
            for match in pattern.finditer(text):
                term = re.sub(r"[\s\-]+", " ", match.group(0).lower())
                if term not in seen:
                    seen.append(term)
            if seen:
                found[name] = seen
        return found


VIBE_LEXICON = Lexicon(VIBE_TERMS)
SAFETY_LEXICON = Lexicon(SAFETY_TERMS)

MAX_VIBE_TAGS = 5
"""Most caption-derived vibe tags reported."""


def vibe_tags(captions: Sequence[str], visual: Sequence[str] = (), *,
              max_tags: int = MAX_VIBE_TAGS, lexicon: Lexicon = VIBE_LEXICON) -> list[str]:
    """Vibe tags: caption tags by how many captions mention them (ties in lexicon order), at
    most ``max_tags``, followed by the visual tags not already present."""
    if max_tags < 0:
        raise ValueError(f"max_tags must be >= 0, got {max_tags}")
    counts = dict.fromkeys(lexicon.categories, 0)
    for caption in captions:
        for name in lexicon.find(caption):
            counts[name] += 1
    order = {name: i for i, name in enumerate(lexicon.categories)}
    ranked = sorted((n for n, c in counts.items() if c > 0), key=lambda n: (-counts[n], order[n]))
    tags = ranked[:max_tags]
    tags.extend(t for t in visual if t not in tags)
    return tags
