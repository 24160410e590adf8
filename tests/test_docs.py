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

import importlib
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
    assert undocumented(api) == []


PUBLIC_MODULES = ["asgi", "wsgi", "fastapi", "flask", "django", "httpx", "requests", "keys",
                  "audit", "chaos", "config", "errors", "testing"]


def undocumented(api_html: str) -> list[str]:
    """Public names the API reference has no entry for, at the path users import them from."""
    import inspect

    import test_django  # noqa: F401 - the Django edge needs settings to import (as in conf.py)

    import fintech_resilience as fr

    missing = []
    for module in PUBLIC_MODULES:
        mod = importlib.import_module(f"fintech_resilience.{module}")
        missing += [f"{mod.__name__}.{n}" for n in mod.__all__
                    if f'id="{mod.__name__}.{n}"' not in api_html
                    # or documented once, where the package exports the same object
                    and not (getattr(fr, n, None) is getattr(mod, n)
                             and f'id="fintech_resilience.{n}"' in api_html)]
    for name in fr.__all__:
        value = getattr(fr, name)
        documented = (f'id="fintech_resilience.{name}"' in api_html
                      or f'id="fintech_resilience.errors.{name}"' in api_html
                      or (name == "retry" and value is fr.Retry))  # the same class, as a decorator
        if (inspect.isclass(value) or inspect.isfunction(value)) and not documented:
            missing.append(f"fintech_resilience.{name}")
    return missing


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
