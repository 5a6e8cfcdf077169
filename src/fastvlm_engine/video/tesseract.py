"""Tesseract OCR (Debian's ``tesseract-ocr`` + ``tesseract-ocr-eng``), run as one process per batch.

Overlay text on video -- white or yellow letters with a dark outline, dark letters on a light
bar -- is not what Tesseract's own binarisation expects: on the raw frame it read almost none of
our test titles. Each frame is therefore given to it as two ink maps: bright ink (every pixel
whose brightest channel is high, so white and yellow letters alike) and dark ink; each is black
ink on white paper. Words found in both maps are kept once (the surer reading).

Known limit, measured on generated frames: outlined white text over a large bright area (a white
cup, a sky) is read poorly or not at all -- the letters become holes in the bright map and hollow
outlines in the dark one. Titles over mid-tone or dark pictures, and text on boxes, read well.

All maps of a batch go to **one** ``tesseract`` run through a list file (the process start and
model load, ~90 ms, are paid once), with ``OMP_THREAD_LIMIT=1``: measured here, Debian's
OpenMP build spinning on a shared 2-core machine made the same run 4x slower. The binary is
called directly rather than through pytesseract, whose command and environment are global.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["BRIGHT_INK", "DARK_INK", "TesseractReader", "Word", "ink_maps"]

log = logging.getLogger(__name__)

BRIGHT_INK = 210
"""A pixel whose brightest channel reaches this is bright ink (white, yellow, cyan letters)."""
DARK_INK = 60
"""A pixel whose brightest channel stays at or below this is dark ink."""
_DUPLICATE_OVERLAP = 0.5
_PAGE_SEGMENTATION = "11"  # sparse text: titles and captions scattered over a picture
_warned: set[str] = set()
_warned_lock = threading.Lock()


@dataclass(frozen=True)
class Word:
    """One word Tesseract read, in the pixel coordinates of the image it was given."""

    text: str
    confidence: float
    """0..100."""
    left: int
    top: int
    width: int
    height: int

    @property
    def right(self) -> int:
        return self.left + self.width

    @property
    def bottom(self) -> int:
        return self.top + self.height


def ink_maps(image: Image.Image) -> tuple[Image.Image, Image.Image]:
    """(bright-ink map, dark-ink map) of an RGB image, each black ink on white, 1 bit per pixel."""
    value = np.asarray(image.convert("RGB")).max(axis=2)
    bright = Image.fromarray(np.where(value >= BRIGHT_INK, 0, 255).astype(np.uint8)).convert("1")
    dark = Image.fromarray(np.where(value <= DARK_INK, 0, 255).astype(np.uint8)).convert("1")
    return bright, dark


def _overlap(a: Word, b: Word) -> float:
    """Shared area as a share of the smaller box (an outline's box contains its letters' box)."""
    width = min(a.right, b.right) - max(a.left, b.left)
    height = min(a.bottom, b.bottom) - max(a.top, b.top)
    if width <= 0 or height <= 0:
        return 0.0
    return width * height / max(1, min(a.width * a.height, b.width * b.height))


def _merge(words: list[Word]) -> list[Word]:
    """Words of both ink maps, each place read once (the more confident reading wins)."""
    kept: list[Word] = []
    for word in sorted(words, key=lambda w: -w.confidence):
        if all(_overlap(word, other) < _DUPLICATE_OVERLAP for other in kept):
            kept.append(word)
    return sorted(kept, key=lambda w: (w.top, w.left))


class TesseractReader:
    """Reads words off images with the ``tesseract`` executable.

    Arguments:
        cmd: the executable (a name on PATH or a path).
        language: Tesseract language(s), e.g. ``eng`` or ``eng+deu``.
        timeout_s: longest one run may take (> 0); a run past it is killed and fails the stage.
    """

    def __init__(self, cmd: str = "tesseract", *, language: str = "eng", timeout_s: float = 60.0) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.cmd = cmd
        self.language = language
        self.timeout_s = timeout_s
        self._checked: tuple[bool, str | None] | None = None
        self._lock = threading.Lock()

    def _env(self) -> dict[str, str]:
        env = {"OMP_THREAD_LIMIT": "1", "LC_ALL": "C", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        if "TESSDATA_PREFIX" in os.environ:
            env["TESSDATA_PREFIX"] = os.environ["TESSDATA_PREFIX"]
        return env

    def unavailable_reason(self) -> str | None:
        """None when Tesseract and its language data are installed; otherwise why not (warned once)."""
        with self._lock:
            if self._checked is None:
                self._checked = (True, self._probe())
            reason = self._checked[1]
        if reason is not None:
            with _warned_lock:
                if self.cmd not in _warned:
                    _warned.add(self.cmd)
                    log.warning("on-screen text is off: %s", reason)
        return reason

    def _probe(self) -> str | None:
        missing = ("Tesseract is not installed on this server (Debian: apt-get install tesseract-ocr "
                   "tesseract-ocr-eng).")
        try:
            result = subprocess.run([self.cmd, "--list-langs"], capture_output=True, text=True, env=self._env(),
                                    timeout=self.timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return missing
        if result.returncode != 0:
            return missing
        known = {line.strip() for line in result.stdout.splitlines()[1:]}
        wanted = [lang for lang in self.language.split("+") if lang]
        absent = [lang for lang in wanted if lang not in known]
        if absent:
            return (f"Tesseract has no data for {', '.join(absent)} (Debian: apt-get install "
                    + " ".join(f"tesseract-ocr-{lang}" for lang in absent) + ").")
        return None

    def read(self, images: Sequence[Image.Image]) -> list[list[Word]]:
        """Words per image, top to bottom; one Tesseract run for the whole batch.

        Raises RuntimeError when the run fails or times out (the caller reports the stage).
        """
        if not images:
            return []
        with tempfile.TemporaryDirectory(prefix="fastvlm-ocr-") as tmp:
            folder = Path(tmp)
            pages = []
            for i, image in enumerate(images):
                for kind, ink in zip(("bright", "dark"), ink_maps(image), strict=True):
                    page = folder / f"{i:04d}-{kind}.png"
                    ink.save(page)
                    pages.append(page)
            listing = folder / "pages.txt"
            listing.write_text("".join(f"{page}\n" for page in pages))
            try:
                result = subprocess.run(
                    [self.cmd, str(listing), "stdout", "-l", self.language, "--psm", _PAGE_SEGMENTATION, "tsv"],
                    capture_output=True, env=self._env(), timeout=self.timeout_s, check=False)
            except subprocess.TimeoutExpired as exc:
                raise RuntimeError(f"Tesseract took longer than {self.timeout_s:g} s") from exc
            except OSError as exc:
                raise RuntimeError("Tesseract could not be started") from exc
        if result.returncode != 0:
            raise RuntimeError(f"Tesseract exited with status {result.returncode}")
        per_page: list[list[Word]] = [[] for _ in pages]
        rows = csv.DictReader(io.StringIO(result.stdout.decode("utf-8", "replace")), delimiter="\t",
                              quoting=csv.QUOTE_NONE)
        for row in rows:
            text = (row.get("text") or "").strip()
            try:
                page, confidence = int(row["page_num"]) - 1, float(row["conf"])
                box = [int(row[key]) for key in ("left", "top", "width", "height")]
            except (KeyError, TypeError, ValueError):
                continue
            if text and confidence >= 0 and 0 <= page < len(per_page):
                per_page[page].append(Word(text, confidence, *box))
        return [_merge(per_page[2 * i] + per_page[2 * i + 1]) for i in range(len(images))]
