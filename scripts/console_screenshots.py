"""Turn the browser tests' screenshots into the README's two images (docs/console-*.png).

Run the console tests first (``pytest tests/ui``): they save full-page screenshots of a real
``fastvlm serve`` on the tiny model in tests/artifacts/ui/. This shrinks two of them to a width
of 1000 px and 128 colours, so each stays well under 200 KB.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts" / "ui"
IMAGES = {"video-timeline.png": "console-try.png", "status.png": "console-status.png"}
WIDTH = 1000
LIMIT_BYTES = 200 * 1024


def shrink(source: Path, target: Path) -> int:
    image = Image.open(source).convert("RGB")
    image = image.resize((WIDTH, round(image.height * WIDTH / image.width)), Image.LANCZOS)
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(target, optimize=True)
    return target.stat().st_size


def main() -> int:
    (ROOT / "docs").mkdir(exist_ok=True)
    for source, target in IMAGES.items():
        if not (ARTIFACTS / source).is_file():
            print(f"missing {ARTIFACTS / source}: run pytest tests/ui first", file=sys.stderr)
            return 1
        size = shrink(ARTIFACTS / source, ROOT / "docs" / target)
        print(f"docs/{target}: {size // 1024} KiB")
        if size > LIMIT_BYTES:
            print(f"docs/{target} is over {LIMIT_BYTES // 1024} KiB", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
