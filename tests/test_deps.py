"""dvc.yaml lists every project file a stage imports, and the resume caches follow that same list.

A file a stage imports but does not declare would let `dvc status` stay clean after an edit that changes
the stage's output (and `cache.cache_dir` would hand back state computed by the old code).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from brain3d import cache

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("brain3d", "stages")
# Imported by every stage but left out of the deps on purpose: it only writes MLflow runs (mlflow.db,
# mlartifacts/), never a DVC output, so a change to it cannot change what a stage produces.
NOT_A_DEP = {"brain3d/tracking.py"}


def module_file(name: str) -> Path | None:
    path = ROOT.joinpath(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.exists():
            return candidate
    return None


def imported_files(path: Path) -> set[Path]:
    """Project files that `path` imports anywhere (module level or inside functions), with their packages."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = module.removesuffix(".__init__") if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]  # `from pkg import submodule`
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] in PACKAGES:
                found |= {f for i in range(1, len(parts) + 1) if (f := module_file(".".join(parts[:i])))}
    return found


def import_closure(module: str) -> set[str]:
    seen: set[Path] = set()
    todo = [module_file(module)]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo += imported_files(path) - seen
    return {p.relative_to(ROOT).as_posix() for p in seen}


def stage_modules() -> list[str]:
    specs = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values()
    return sorted({spec.get("do", spec)["cmd"].split()[2] for spec in specs})


def test_the_closure_walk_sees_lazy_and_relative_imports():
    closure = import_closure("stages.phase1")
    assert "brain3d/training/losses.py" in closure  # imported by training/phases.py at module level
    assert "brain3d/data/reports.py" in closure  # swap_laterality, the flip
    assert "brain3d/models/__init__.py" in closure
    lime = import_closure("stages.lime")
    assert "brain3d/models/checkpoint.py" in lime


@pytest.mark.parametrize("module", stage_modules())
def test_every_imported_project_file_is_a_declared_dep(module):
    deps = [
        d.relative_to(ROOT).as_posix() for d in cache.stage_deps(module, ROOT / "dvc.yaml", code_only=True)
    ]
    missing = sorted(
        f
        for f in import_closure(module) - NOT_A_DEP
        if not any(f == d or f.startswith(d + "/") for d in deps)
    )
    assert not missing, f"dvc.yaml: stage running {module} imports but does not list: {', '.join(missing)}"


def _copy_code(dest: Path) -> None:
    for rel in ("dvc.yaml", "brain3d", "stages"):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).write_bytes(src.read_bytes())
        else:
            for f in src.rglob("*.py"):
                (dest / f.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
                (dest / f.relative_to(ROOT)).write_bytes(f.read_bytes())


def test_resume_key_changes_with_the_stage_code_only(tmp_path):
    _copy_code(tmp_path)
    dvc_yaml = tmp_path / "dvc.yaml"

    def key(module: str) -> str:
        return cache.content_fingerprint(cache.stage_deps(module, dvc_yaml, code_only=True), tmp_path)

    phase1, evaluate = key("stages.phase1"), key("stages.evaluate")
    losses = tmp_path / "brain3d/training/losses.py"
    losses.write_text(losses.read_text() + "\n# a change to the loss\n")
    assert key("stages.phase1") != phase1, "phase 1 trains with this loss: its resume key must change"
    assert key("stages.evaluate") == evaluate, "evaluate does not use it"
    (tmp_path / "brain3d/tracking.py").write_text("# logging only\n")
    assert key("stages.phase1") != phase1 and key("stages.evaluate") == evaluate
    assert key("stages.phase1") == key("stages.phase1"), "deterministic"


def test_cache_dir_follows_the_bound_stage_code(tmp_path, monkeypatch):
    _copy_code(tmp_path)
    monkeypatch.setattr(cache, "_stage_key", None)
    outside = cache.cache_dir("phase1", "k")
    cache.bind_stage("stages.phase1", tmp_path / "dvc.yaml")
    bound = cache.cache_dir("phase1", "k")
    assert bound != outside
    losses = tmp_path / "brain3d/training/losses.py"
    losses.write_text(losses.read_text() + "\n# changed\n")
    cache.bind_stage("stages.phase1", tmp_path / "dvc.yaml")
    assert cache.cache_dir("phase1", "k") != bound, "new code must not find the old state"
    assert cache.cache_dir("phase1", "other") != cache.cache_dir("phase1", "k")
    monkeypatch.setattr(cache, "_stage_key", None)
    assert cache.cache_dir("phase1", "k") == outside


def test_an_unknown_stage_module_is_an_error():
    with pytest.raises(ValueError, match="no stage runs"):
        cache.stage_deps("stages.nothing", ROOT / "dvc.yaml")


def test_resume_key_follows_the_stage_data_too(tmp_path, monkeypatch):
    """A stage's resume state is keyed on its data deps as well as its code: new preprocessed volumes (same
    manifest, same params) must not resume a training made on the old ones."""
    _copy_code(tmp_path)
    for rel in ("data/preprocessed/volumes/s1.npy", "data/splits.csv", "models/foundation/backbones.json"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"v1")
    monkeypatch.setattr(cache, "_stage_key", None)
    cache.bind_stage("stages.phase1", tmp_path / "dvc.yaml")
    before = cache.cache_dir("phase1", "k")
    (tmp_path / "data/preprocessed/volumes/s1.npy").write_bytes(b"v2")
    cache.bind_stage("stages.phase1", tmp_path / "dvc.yaml")
    assert cache.cache_dir("phase1", "k") != before
    monkeypatch.setattr(cache, "_stage_key", None)


def test_foreach_stages_contribute_each_entrys_deps():
    generate = {
        d.relative_to(ROOT).as_posix() for d in cache.stage_deps("stages.generate", ROOT / "dvc.yaml")
    }
    assert {"models/phase1", "models/phase2a", "models/phase2b"} <= generate
    assert not any("${" in d for d in generate)
