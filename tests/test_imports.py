"""The import direction of the library, checked on every module's source (function-level imports included):
stages sit on the library and the library never imports a stage; inside the library `data` <- `models` <-
`training`, and `metrics` / `interpretability` are never imported by `models` or `data`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package -> packages it must not import (brain3d.<name>)
FORBIDDEN = {
    "data": {
        "models",
        "training",
        "metrics",
        "interpretability",
        "baselines",
        "generation",
        "cli",
        "rehearsal",
    },
    "models": {"training", "metrics", "interpretability", "baselines", "generation", "cli", "rehearsal"},
    "training": {"metrics", "interpretability", "baselines", "cli", "rehearsal"},
    "metrics": {"training", "interpretability", "baselines", "cli", "rehearsal"},
}


def imports_of(path: Path) -> set[str]:
    """Every absolute module name `path` imports (top level and inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def library_modules() -> list[Path]:
    return sorted((ROOT / "brain3d").rglob("*.py"))


def _layer(path: Path) -> str:
    rel = path.relative_to(ROOT / "brain3d").parts
    return rel[0] if len(rel) > 1 else rel[0].removesuffix(".py")


@pytest.mark.parametrize("path", library_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_library_imports_downwards_only(path: Path) -> None:
    layer = _layer(path)
    bad = sorted(
        name
        for name in imports_of(path)
        if name.startswith("stages")
        or (name.startswith("brain3d.") and name.split(".")[1] in FORBIDDEN.get(layer, set()))
    )
    assert not bad, f"{path.relative_to(ROOT)} ({layer}) imports {bad}"


def test_the_check_sees_function_level_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from brain3d.training.loop import fit\n    import stages.phase1\n")
    assert {"brain3d.training.loop", "brain3d.training.loop.fit", "stages.phase1"} <= imports_of(module)
