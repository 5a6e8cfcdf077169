"""CPU video analysis for /summarize_video: one decoding pass, cuts, keyframes, dedupe,
visual signals, safety and text helpers. No torch and no HTTP in here; the model is reached
only through the :class:`Captioner` protocol.

Modules, one concern each: ``source`` (opening, PyAV error translation), ``reader`` (decode-ahead
thread), ``features`` (per-frame signals), ``scenes`` (cut detector), ``keyframes`` (candidate
pool, budget, selection), ``phash`` / ``dedupe`` (near-duplicates), ``signals`` (visual stats
and tags), ``lexicon`` (vibe and safety word lists), ``safety`` (opennsfw, caption flags),
``summary`` (prompt, extractive summary), ``analysis`` (the pass), ``pipeline`` (the entry point).
"""

from .analysis import AnalysisTimings, Keyframe, VideoAnalysis, analyze_video
from .dedupe import NearDuplicateFilter
from .keyframes import CANDIDATE_MAX_SIDE, CandidatePool, frame_budget, select_keyframes
from .lexicon import SAFETY_TERMS, VIBE_TERMS, Lexicon, vibe_tags
from .phash import hamming, phash
from .pipeline import Captioner, frame_prompt, summarize_video
from .safety import SafetyChecker, caption_safety_flags, default_safety_checker
from .scenes import Cut, CutDetector, MinSceneLength, scenes_from_cuts
from .signals import VisualSignals, visual_tags
from .source import open_video
from .summary import build_summary_prompt, extractive_summary, format_timestamp

__all__ = [
    "CANDIDATE_MAX_SIDE",
    "SAFETY_TERMS",
    "VIBE_TERMS",
    "AnalysisTimings",
    "CandidatePool",
    "Captioner",
    "Cut",
    "CutDetector",
    "Keyframe",
    "Lexicon",
    "MinSceneLength",
    "NearDuplicateFilter",
    "SafetyChecker",
    "VideoAnalysis",
    "VisualSignals",
    "analyze_video",
    "build_summary_prompt",
    "caption_safety_flags",
    "default_safety_checker",
    "extractive_summary",
    "format_timestamp",
    "frame_budget",
    "frame_prompt",
    "hamming",
    "open_video",
    "phash",
    "scenes_from_cuts",
    "select_keyframes",
    "summarize_video",
    "vibe_tags",
    "visual_tags",
]
