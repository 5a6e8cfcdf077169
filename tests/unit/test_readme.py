"""The README's reference tables are generated from the code; this keeps them in step."""

from pathlib import Path

from scripts.update_readme import README, render


def test_readme_tables_match_the_code():
    text = README.read_text()
    assert render(text) == text, "run: .venv/bin/python scripts/update_readme.py"


def test_readme_opens_with_the_two_commands():
    text = Path(README).read_text()
    first_block = text.split("```bash", 1)[1].split("```", 1)[0]
    assert "make serve" in first_block and "make test" in first_block
