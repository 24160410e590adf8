"""Sphinx configuration: the docs/ folder as a site (MyST Markdown, API reference by autodoc).

Build: ``python -m sphinx -W -b html docs docs/_build/html`` (``tests/test_docs.py`` does, with
warnings as errors).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fintech_resilience import __version__  # noqa: E402

# the Django edge imports DRF, which reads settings when imported: configure a bare project
import django  # noqa: E402
from django.conf import settings as django_settings  # noqa: E402

if not django_settings.configured:
    django_settings.configure(INSTALLED_APPS=["rest_framework"], USE_TZ=True)
    django.setup()

project = "fintech_resilience"
author = "fintech_resilience developers"
copyright = "fintech_resilience developers, Apache-2.0"
version = release = __version__

extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
# the public API re-exports names from private modules; document them where users import them
autodoc_typehints_format = "short"

try:  # a maintained theme when installed (pip install furo); Sphinx's default otherwise
    import furo  # noqa: F401

    html_theme = "furo"
except ImportError:  # pragma: no cover
    html_theme = "alabaster"
html_title = f"fintech_resilience {__version__}"
html_static_path: list[str] = []

# Pages link to files outside docs/ (examples, benchmarks) with relative links that work on
# GitHub; the site has no page for them, so they become plain code text there.
_OUTSIDE = re.compile(r"(?<!!)\[([^\]]+)\]\(\.\./([^)]+)\)")


def _outside_links(app: Any, docname: str, source: list[str]) -> None:
    source[0] = _OUTSIDE.sub(lambda m: f"{m.group(1)} (`{m.group(2)}` in the repository)",
                             source[0])


def setup(app: Any) -> None:
    app.connect("source-read", _outside_links)
