"""The package's layering, as the README's architecture section draws it: each part imports only
from the layers below it (a module may use its own part freely; imports under ``TYPE_CHECKING``
name types only and are not counted), and no module grows past 500 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fintech_resilience"

#: top-level part -> layer (higher imports lower, never the other way)
LAYERS = {
    "_version": 0, "errors": 0, "core": 0,
    "backends": 1,
    "audit": 2,
    "ratelimit": 3, "breaker": 3, "retries": 3, "policy": 3, "idempotency": 3, "shedding": 3,
    "chaos": 3, "residency": 3, "testing": 3,
    "edges": 4, "keys": 4,
    "config": 5, "inspection": 5, "asgi": 5, "wsgi": 5, "fastapi": 5, "flask": 5, "django": 5,
    "httpx": 5, "requests": 5,
    "cli": 6, "__init__": 6,
}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _type_checking_imports(tree: ast.Module) -> set[int]:
    """Line numbers of imports inside ``if TYPE_CHECKING:`` blocks."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom):
                    lines.add(inner.lineno)
    return lines


def _imports(path: Path) -> list[tuple[str, str]]:
    """(importing module, imported module) for every relative import of ``path``."""
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    names = list(relative.parts)
    is_package = names[-1] == "__init__"
    module = ".".join(names[:-1] if is_package else names)
    package = module if is_package else module.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    typing_only = _type_checking_imports(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or not node.level or node.lineno in typing_only:
            continue
        base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
        if node.module:
            found.append((module, ".".join([*base, node.module])))
        else:
            found.extend((module, ".".join([*base, alias.name])) for alias in node.names)
    return found


def test_every_part_has_a_layer() -> None:
    parts = {_part(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts))
             for p in _modules()}
    assert parts - set(LAYERS) == set()


def test_no_part_imports_from_a_layer_above_it() -> None:
    upward = []
    for path in _modules():
        for importer, imported in _imports(path):
            mine, theirs = _part(importer), _part(imported)
            if mine != theirs and LAYERS[theirs] > LAYERS[mine]:
                upward.append(f"{importer} -> {imported}")
    assert upward == []


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_over_500_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= 500
