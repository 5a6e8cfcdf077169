"""CPU video analysis for /summarize_video: one decoding pass, cuts, keyframes, dedupe,
visual signals, speech, on-screen text, the per-scene timeline, safety and text helpers. No
torch and no HTTP in here; the models are reached only through the :class:`Captioner` and
:class:`Transcriber` protocols, Tesseract through :class:`TextReader`.

Modules, one concern each: ``source`` (opening, PyAV error translation), ``reader`` (decode-ahead
thread), ``features`` (per-frame signals), ``motion`` (grid comparisons despite camera motion),
``scenes`` (cut detector), ``keyframes`` (candidate pool, budget, selection), ``phash`` /
``dedupe`` (near-duplicates), ``signals`` (visual stats and tags), ``audio`` (the audio track),
``vad`` (voice gate, 30 s windows), ``speech`` (the speech stage), ``tesseract`` (OCR runs),
``ocr`` (the on-screen text stage), ``timeline`` (per-scene timeline), ``lexicon`` (vibe and
safety word lists), ``safety`` (opennsfw, lexicon flags), ``summary`` (prompt, extractive
summary), ``analysis`` (the pass), ``pipeline`` (the entry point).
"""

from .analysis import AnalysisTimings, Keyframe, VideoAnalysis, analyze_video
from .dedupe import NearDuplicateFilter
from .keyframes import CANDIDATE_MAX_SIDE, CandidatePool, frame_budget, select_keyframes
from .lexicon import SAFETY_TERMS, VIBE_TERMS, Lexicon, vibe_tags
from .ocr import TextReader, read_on_screen_text
from .phash import hamming, phash
from .pipeline import Captioner, VideoOptions, frame_prompt, summarize_video
from .safety import SafetyChecker, caption_safety_flags, default_safety_checker
from .scenes import Cut, CutDetector, MinSceneLength, scenes_from_cuts
from .signals import VisualSignals, visual_tags
from .source import open_video
from .speech import Transcriber, transcribe_speech
from .summary import build_summary_prompt, extractive_summary, format_timestamp
from .tesseract import TesseractReader
from .timeline import build_scenes

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
    "TesseractReader",
    "TextReader",
    "Transcriber",
    "VideoAnalysis",
    "VideoOptions",
    "VisualSignals",
    "analyze_video",
    "build_scenes",
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
    "read_on_screen_text",
    "scenes_from_cuts",
    "select_keyframes",
    "summarize_video",
    "transcribe_speech",
    "vibe_tags",
    "visual_tags",
]
