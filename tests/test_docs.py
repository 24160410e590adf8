"""The docs build as a site with warnings as errors, and every runnable code block runs.

A block is runnable when the line before its opening fence is ``<!-- runnable -->`` (an HTML
comment: invisible on GitHub and on the site)::

    <!-- runnable -->
    ```python
    ...
    ```

Each runnable block runs in a fresh interpreter with warnings as errors.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RUNNABLE = re.compile(r"<!--\s*runnable\s*-->[ \t]*\n```python[^\n]*\n(.*?)^```", re.S | re.M)


def runnable_blocks() -> list[tuple[str, str]]:
    blocks = []
    for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for i, match in enumerate(RUNNABLE.finditer(path.read_text(encoding="utf-8"))):
            blocks.append((f"{path.relative_to(ROOT)}#{i + 1}", match.group(1)))
    return blocks


BLOCKS = runnable_blocks()


def test_docs_build_with_warnings_as_errors(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html",
         str(DOCS), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-6000:]
    pages = {p.stem for p in (tmp_path / "html").glob("*.html")}
    expected = {p.stem for p in DOCS.glob("*.md")}
    assert expected <= pages
    api = (tmp_path / "html" / "api.html").read_text(encoding="utf-8")
    for name in ("RateLimiter", "CircuitBreaker", "IdempotencyStore", "Policy", "force_open"):
        assert name in api, name  # the reference is generated from the docstrings


def test_the_readme_and_the_docs_have_runnable_blocks() -> None:
    sources = {name.split("#")[0] for name, _ in BLOCKS}
    assert "README.md" in sources and "docs/concepts.md" in sources


@pytest.mark.parametrize(("name", "code"), BLOCKS, ids=[name for name, _ in BLOCKS])
def test_runnable_block(name: str, code: str) -> None:
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, f"{name}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"


def test_the_marker_is_found_only_before_python_fences() -> None:
    text = "<!-- runnable -->\n```python\nx = 1\n```\n\n```python\nnot run\n```\n"
    assert [m.group(1) for m in RUNNABLE.finditer(text)] == ["x = 1\n"]
