"""Shared test set-up: offline hubs, few threads, and tiny checkpoints of the REAL model classes
(SiglipModel, Gemma3ForConditionalGeneration) built locally, as the paper path loads them."""

from __future__ import annotations

import os
import re

os.environ.setdefault("BRAIN3D_THREADS", "1")
from brain3d import runtime  # noqa: E402

runtime.set_offline_env()
runtime.set_threads(int(os.environ["BRAIN3D_THREADS"]))

import pytest  # noqa: E402

REPORTS = [
    "The lesion is located in the left frontal lobe with surrounding edema and necrosis.",
    "A mass in the right temporal lobe shows enhancement and compression of the right lateral ventricle.",
    "Bilateral parietal lesions with extensive edema.",
    "No abnormal signal intensity is seen in the brain parenchyma on FLAIR. Normal study.",
]
PROMPT = "Generate a radiology report for this brain MRI FLAIR scan.\n"  # the tiny models' prompt


SLOW_TIMEOUT = 2400  # seconds: a `dvc repro` fixture (6-10 min on 2 cores) runs inside its first test


def pytest_collection_modifyitems(config, items):
    """Tests marked slow get SLOW_TIMEOUT unless they set their own; the others keep the ini's `timeout`."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Resumable state and MLflow never touch the developer's repository during tests."""
    monkeypatch.setenv("BRAIN3D_CACHE", str(tmp_path_factory.mktemp("cache")))


def chromium() -> str:
    """The headless browser of the browser tests (MLflow UI, `dvc plots show`): Debian's chromium, which
    `./setup.sh --test` installs. Missing, it fails the test (CI must not pass without the browser checks)."""
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.fail("chromium is not installed: run ./setup.sh --test (Debian package, needs root + apt)")
    return browser


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from brain3d.models.foundation import train_tokenizer

    return train_tokenizer(REPORTS * 5 + [PROMPT], 400)


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory, tiny_tokenizer):
    """A SiglipModel checkpoint (image 32, patch 8) saved like MedSigLIP (image-text model)."""
    import torch
    from transformers import SiglipConfig, SiglipModel

    from brain3d.models.foundation import save_siglip

    torch.manual_seed(0)
    cfg = SiglipConfig(
        text_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            vocab_size=len(tiny_tokenizer),
            max_position_embeddings=16,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
    )
    path = tmp_path_factory.mktemp("siglip")
    save_siglip(SiglipModel(cfg), tiny_tokenizer, path)
    return path


@pytest.fixture(scope="session")
def tiny_gemma3_dir(tmp_path_factory, tiny_tokenizer, tiny_siglip_dir):
    """A multimodal Gemma3ForConditionalGeneration checkpoint + Gemma3Processor, saved like MedGemma."""
    import torch
    from transformers import SiglipModel

    from brain3d.models.foundation import build_gemma3, save_gemma3

    torch.manual_seed(0)
    siglip = SiglipModel.from_pretrained(tiny_siglip_dir)
    arch = dict(
        hidden=32,
        intermediate=64,
        layers=2,
        heads=2,
        kv_heads=1,
        head_dim=16,
        max_positions=1024,
        mm_tokens_per_image=4,
    )
    model = build_gemma3(tiny_tokenizer, siglip.config.vision_config.to_dict(), arch)
    model.model.vision_tower.load_state_dict(siglip.vision_model.state_dict())
    path = tmp_path_factory.mktemp("gemma3")
    save_gemma3(model, tiny_tokenizer, path)
    return path


def model_config(**changes):
    """A small ModelConfig (8 x 28 x 28 volumes, 4 grid-pooled tokens, `mean` inflation); `changes` override."""
    from brain3d.models.model import ModelConfig

    base = dict(
        volume_shape=(8, 28, 28),
        kd=2,
        depth_stride=1,
        depth_pad=1,
        inflation="mean",
        compressor="grid_pool",
        n_tokens=4,
        grid=(1, 2, 2),
        prompt=PROMPT,
        variant="paper",
    )
    return ModelConfig(**{**base, **changes})


def lora_brain3d(siglip_dir, gemma_dir, cfg, b_std: float):
    """A Brain3D over the tiny checkpoints with its visual tokenizer and a rank-2 LoRA whose B matrices are
    drawn with `b_std` (a trained adapter is not the zero-initialised one): (model, the PeftModel)."""
    import torch

    from brain3d.models.backbones import load_language_model, load_vision_model
    from brain3d.models.model import Brain3D, VisualTokenizer

    visual = VisualTokenizer(load_vision_model(siglip_dir), cfg)
    lm = load_language_model(gemma_dir)
    lora = lm.add_lora(2, 4)
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, b_std)
    return Brain3D(lm, visual.width, cfg.prompt, visual=visual), lora


DEMO_SHAPE = (32, 64, 64)  # profiles.demo.preprocess.shape: brain_similarity is reliable from this size up


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_siglip_dir, tiny_gemma3_dir):
    """A trained-model directory laid out as the phase2b stage writes it (visual + projector weights, LoRA
    adapter, phase 1's findings head and side detector, brain3d.json) over the tiny SigLIP / Gemma 3
    checkpoints, at the demo volume shape."""
    import torch

    from brain3d.fileio import save_safetensors
    from brain3d.models.findings_head import FindingsHead
    from brain3d.models.side_cnn import LateralityCNN

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("phase2b")
    cfg = model_config(volume_shape=DEMO_SHAPE, n_tokens=32, grid=(2, 4, 4))
    model, lora = lora_brain3d(tiny_siglip_dir, tiny_gemma3_dir, cfg, b_std=0.02)
    findings = out / "findings.safetensors"
    save_safetensors(findings, FindingsHead(32, model.visual.width).state_dict())
    detector = out / "detector.safetensors"
    save_safetensors(detector, LateralityCNN([4, 8], 2).state_dict())
    model.save_pretrained(
        out,
        phase="phase2b",
        model_cfg=cfg,
        backbones={
            "source": "standins",
            "vision": str(tiny_siglip_dir),
            "lm": str(tiny_gemma3_dir),
            "dtype": "float32",
            "load_in_4bit": False,
        },
        adapter=lora,
        findings=findings,
        detector=(detector, {"channels": [4, 8], "downsample": 2}),
    )
    return out


@pytest.fixture(scope="session")
def paper_snapshots(tmp_path_factory):
    """(medsiglip-448, medgemma-1.5-4b-it) snapshot folders as the paper world holds them (brain3d.rehearsal):
    the real classes and geometry (patch 14, MedGemma image 896 with 256 tokens per image) at tiny widths."""
    from brain3d.models.release import PROMPT as RELEASE_PROMPT
    from brain3d.rehearsal import write_snapshots

    tmp = tmp_path_factory.mktemp("snapshots")
    return write_snapshots(tmp, (REPORTS + [PROMPT, RELEASE_PROMPT]) * 5, seed=0)


@pytest.fixture(scope="session")
def tiny_release_dir(tmp_path_factory, paper_snapshots):
    """A miniature of the authors' released BrainGemma3D in its published layout (brain3d.rehearsal): the real
    classes and MedSigLIP's / MedGemma's geometry (patch 14) at tiny widths, a projector saved with torch.save,
    a LoRA on plain module names, a recorded hub revision."""
    from brain3d.rehearsal import write_release

    vision, lm = paper_snapshots
    return write_release(tmp_path_factory.mktemp("release") / "BrainGemma3D", vision, lm, seed=0)


# ------------------------------------------------------------------ report keyword contract (shared helper)

KEYWORD_LOBES = {"frontal", "parietal", "temporal", "occipital", "cerebellum"}  # lobe ids that are keywords


def report_words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def negated(text: str, keyword: str) -> bool:
    """Every mention of `keyword` sits in a sentence that negates it ('no ... necrosis')."""
    sentences = [s for s in re.split(r"(?<=\.)\s+", text.lower()) if re.search(rf"\b{keyword}\b", s)]
    return all(re.search(rf"\b(no|without)\b[^.]*\b{keyword}\b", s) for s in sentences)


def check_tumour_report(truth: dict, text: str) -> None:
    """The keyword contract of a tumour report written from a truth.json-like dict (test_reports.py checks it
    over random truths, test_phantom.py on the phantom cohort)."""
    from brain3d.data.reports import laterality_from_report

    found = report_words(text)
    side = truth["side"]
    assert laterality_from_report(text) == side, text
    if side == "undefined":
        assert not found & {"left", "right", "bilateral"}, text
    named = {"left": ["left"], "right": ["right"], "bilateral": ["left", "right"]}.get(
        side, list(truth["lobes"])
    )
    for key in named:
        for lobe in truth["lobes"].get(key, []):
            if lobe in KEYWORD_LOBES:
                assert lobe in found, (lobe, text)
    assert "lesion" in found or "lesions" in found, text
    f = truth["findings"]
    for flag, keyword in (
        ("edema", "edema"),
        ("necrosis", "necrosis"),
        ("enhancement", "enhancement"),
        ("periventricular", "periventricular"),
    ):
        if f[flag]:
            assert keyword in found, (keyword, text)
        else:
            assert keyword not in found or negated(text, keyword), (keyword, text)
    if f["ventricle_compression"]["present"]:
        assert {"compression", "ventricle"} <= found, text
    else:
        assert "compression" not in found or negated(text, "compression"), text
    assert not found & {"tumour", "oedema", "centre"}, text  # American spelling


# ------------------------------------------------------------------ tiny end-to-end pipeline (slow tests)


# The two `dvc repro` fixtures are most of the suite's time. The suite runs on 2 pytest-xdist workers
# (pyproject.toml: -n 2); the tests of the files that share one of them form one unit of work, so each fixture
# is built once, on one worker, while the other tests fill in around it. (xdist's own `--dist loadgroup` does
# not group under pytest 9.2: it renames `item._nodeid`, which pytest no longer reads.)
SHARED_FIXTURE = {
    "test_e2e.py": "tiny_pipeline",
    "test_mlflow_ui.py": "tiny_pipeline",
    "test_plots_offline.py": "tiny_pipeline",
    "test_rehearsal.py": "rehearsal",
}


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):
        """Every test its own unit of work, except one unit per SHARED_FIXTURE (largest units go first)."""

        def _split_scope(self, nodeid: str) -> str:
            return SHARED_FIXTURE.get(nodeid.split("::", 1)[0].rsplit("/", 1)[-1], nodeid)

    return SharedFixtureScheduling(config, log)


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """The whole DAG on tiny params in a copy of this checkout (tests/tiny_pipeline.py), run once per session
    and shared by test_e2e.py, test_mlflow_ui.py and test_plots_offline.py (one xdist unit: SHARED_FIXTURE)."""
    from tiny_pipeline import run_pipeline

    return run_pipeline(tmp_path_factory.mktemp("e2e"))
