"""The README's Python quick start runs as written."""

from __future__ import annotations

import os
import re

from conftest import REPO

MARKER = "<!-- python quick start: python/tests/test_readme.py runs the block below -->"


def test_the_readme_quick_start_runs(capsys) -> None:
    readme = (REPO / "README.md").read_text()
    assert MARKER in readme
    block = re.search(r"```python\n(.*?)```", readme[readme.index(MARKER) :], re.S)
    assert block is not None
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        exec(compile(block.group(1), "README.md", "exec"), {"__name__": "readme"})
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    assert "Quote(upfront=100000" in out
    assert "(1, 10)" in out
    assert "active" in out
    assert "refused: invalid_input" in out
