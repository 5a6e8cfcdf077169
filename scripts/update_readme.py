"""Regenerate the README's settings and error tables from the code (their single source)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from fastvlm_engine.cli import errors_table, settings_table

README = Path(__file__).resolve().parent.parent / "README.md"


def render(text: str) -> str:
    for marker, table in (("settings", settings_table()), ("errors", errors_table())):
        pattern = re.compile(rf"(<!-- {marker}:start -->\n).*?(<!-- {marker}:end -->)", re.S)
        text = pattern.sub(lambda m: m.group(1) + table + "\n" + m.group(2), text)
    return text


if __name__ == "__main__":
    README.write_text(render(README.read_text()))
    sys.exit(0)
