"""The distribution: the sdist carries what the README's test command needs, the metadata is
truthful, and importing an edge without its framework says which extra to install."""

from __future__ import annotations

import email.parser
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> tarfile.TarFile:
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "-o",
                           str(out), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    (archive,) = out.glob("*.tar.gz")
    return tarfile.open(archive)


def members(sdist: tarfile.TarFile) -> set[str]:
    return {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}


def test_the_sdist_carries_what_scripts_test_sh_needs(sdist: tarfile.TarFile) -> None:
    inside = members(sdist)
    needed = {"scripts/test.sh", "pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md",
              "docs/conf.py"}
    for folder, pattern in [("tests", "*.py"), ("docs", "*.md"), ("examples", "**/*.py"),
                            ("fintech_resilience", "**/*.py"),
                            ("fintech_resilience/backends/lua", "*.lua")]:
        needed |= {str(p.relative_to(ROOT)) for p in (ROOT / folder).glob(pattern)
                   if "__pycache__" not in p.parts}
    assert needed - inside == set()
    assert not [n for n in inside if ".venv" in n or "__pycache__" in n or n.endswith(".pyc")]


def test_the_test_script_is_valid_bash_and_runs_the_suite_from_the_sdist_root(
        sdist: tarfile.TarFile) -> None:
    script = sdist.extractfile(next(m for m in sdist.getmembers()
                                    if m.name.endswith("/scripts/test.sh")))
    assert script is not None
    text = script.read().decode()
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
    assert 'cd "$(dirname "$0")/.."' in text and "pip install -q -e '.[dev]'" in text


def test_metadata_names_frameworks_and_documents_that_exist(sdist: tarfile.TarFile) -> None:
    info = sdist.extractfile(next(m for m in sdist.getmembers() if m.name.endswith("/PKG-INFO")
                                  and m.name.count("/") == 1))
    assert info is not None
    metadata = email.parser.Parser().parsestr(info.read().decode())
    classifiers = set(metadata.get_all("Classifier") or [])
    assert {"Framework :: FastAPI", "Framework :: Flask", "Framework :: Django",
            "Framework :: AsyncIO", "Typing :: Typed"} <= classifiers
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL") or [])
    assert {"Documentation", "Changelog"} <= set(urls)
    # no host is claimed: each names a document the sdist itself carries
    assert set(urls.values()) <= members(sdist)
    import trove_classifiers

    assert classifiers <= set(trove_classifiers.classifiers)


BLOCKED = {"fastapi": "fastapi", "flask": "flask", "django": "rest_framework", "httpx": "httpx",
           "requests": "requests"}


@pytest.mark.parametrize("edge", sorted(BLOCKED))
def test_an_edge_without_its_framework_says_which_extra_to_install(edge: str) -> None:
    code = (f"import sys; sys.modules[{BLOCKED[edge]!r}] = None\n"  # as if not installed
            f"import fintech_resilience.{edge}")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (f"ModuleNotFoundError: fintech_resilience.{edge} needs"
                    f" {BLOCKED[edge]!r}, which is not installed:"
                    f" pip install 'fintech-resilience[{edge}]'")


def test_a_broken_dependency_of_the_framework_is_not_reported_as_a_missing_extra() -> None:
    code = "import sys; sys.modules['markupsafe'] = None\nimport fintech_resilience.flask"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    last = proc.stderr.strip().splitlines()[-1]
    assert "markupsafe" in last and "pip install" not in last


def test_the_package_itself_imports_without_any_framework() -> None:
    code = ("import sys\nfor m in ('fastapi', 'starlette', 'flask', 'django', 'rest_framework',"
            " 'httpx', 'requests'): sys.modules[m] = None\n"
            "import fintech_resilience, fintech_resilience.asgi, fintech_resilience.wsgi,"
            " fintech_resilience.config, fintech_resilience.testing\nprint('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.strip() == "ok", proc.stderr[-2000:]
