"""The authors' released BrainGemma3D (brain3d/models/release.py) through this pipeline, on a miniature release
in the published layout (conftest.tiny_release_dir: the real classes, patch 14, tiny widths).

The semantics are proven against an independent computation written here from the release's facts (SPEC §4b)
in plain torch ops: the loader's visual tokens and first-step logits must match it within 1e-5, and breaking
any single fact in it must make them differ, so the match is sensitive to every fact."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from brain3d.models.checkpoint import read_card
from brain3d.models.model import Brain3D
from brain3d.models.release import PROJECTOR, PROMPT, ReleaseError, read_projector

BF16 = torch.bfloat16
SMALL = (10, 42, 56)  # token grid 11 x 3 x 4: every axis its own length, a quick forward
FACTS = (
    "rgb_mean",  # the RGB patch kernel is averaged over its input channels...
    "depth_divided",  # ... repeated over depth 2 and divided by 2
    "depth_repeated",
    "depth_padding",  # stride (1, 14, 14), padding (1, 0, 0)
    "no_pixel_normalisation",  # the [0, 1] volume goes in as it is
    "no_radiological_flip",
    "depth_code",  # every channel + linspace(-1, 1, D')[z]
    "y_code",  # channel 0 + linspace(-1, 1, h)[y]
    "x_code",  # channel 1 + linspace(-1, 1, w)[x]
    "no_2d_positions",  # SigLIP's 2D position table is not used
    "z_major",  # tokens flattened z-major
    "post_layernorm",
    "sequence_pool",  # adaptive_avg_pool1d over the token sequence to 32
    "bf16_encoder",
    "bf16_projector",
    "vis_scale",
    "no_embed_scale",  # the projector's output is not multiplied by Gemma's sqrt(hidden)
    "bos",  # tokenizer(prompt, add_special_tokens=True): BOS + prompt ...
    "bos_after_visual",  # ... after the 32 visual tokens
    "prompt",  # the release's prompt string (a space before the newline)
    "lora",
)


class Independent:
    """The release's inference from the facts, in plain torch ops over the snapshot's own modules (SigLIP's
    encoder layers, the LM's forward), loaded here as the reference loads them, not through brain3d."""

    def __init__(self, release: Path):
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer, SiglipModel

        self.vision = {
            dtype: SiglipModel.from_pretrained(release / "vision_model", dtype=dtype).vision_model.eval()
            for dtype in (BF16, torch.float32)
        }
        lm = AutoModelForCausalLM.from_pretrained(release / "language_model", dtype=BF16)
        self.lm = PeftModel.from_pretrained(lm, release / "lora_adapters").eval()  # plain targets, as theirs
        self.tokenizer = AutoTokenizer.from_pretrained(release / "language_model")
        self.ckpt = torch.load(release / PROJECTOR, weights_only=True)

    def grid(self, vt, volume: torch.Tensor, broken: str | None) -> torch.Tensor:
        """The inflated patch convolution plus the fixed position code: (B, C, D', h, w)."""
        conv = vt.embeddings.patch_embedding
        w, p = conv.weight, conv.kernel_size[0]
        grey = w.sum(1, keepdim=True) if broken == "rgb_mean" else w.mean(1, keepdim=True)  # (C, 1, p, p)
        kernel = grey[:, :, None].repeat(1, 1, 2, 1, 1)  # (C, 1, 2, p, p)
        if broken == "depth_repeated":
            kernel[:, :, 1] = 0
        if broken != "depth_divided":
            kernel = kernel / 2
        x = volume
        if broken == "no_pixel_normalisation":
            x = (x - 0.5) / 0.5
        if broken == "no_radiological_flip":
            x = torch.flip(x, dims=(-2, -1))
        pad = 0 if broken == "depth_padding" else 1
        out = F.conv3d(x.to(w.dtype), kernel, conv.bias, stride=(1, p, p), padding=(pad, 0, 0))
        c, dp, hp, wp = out.shape[1:]
        code = torch.zeros(c, dp, hp, wp)
        if broken != "depth_code":
            code += torch.linspace(-1, 1, dp)[None, :, None, None]
        if broken != "y_code":
            code[0] += torch.linspace(-1, 1, hp)[:, None]
        if broken != "x_code":
            code[1] += torch.linspace(-1, 1, wp)[None, :]
        return out + code.to(out.dtype)

    @torch.no_grad()
    def tokens(self, volume: torch.Tensor, broken: str | None = None) -> torch.Tensor:
        """(B, 1, D, H, W) in [0, 1] -> (B, 32, C) pooled encoder tokens."""
        vt = self.vision[torch.float32 if broken == "bf16_encoder" else BF16]
        out = self.grid(vt, volume, broken)
        c, dp, hp, wp = out.shape[1:]
        if broken == "no_2d_positions":
            table = vt.embeddings.position_embedding.weight
            side = int(len(table) ** 0.5)
            grid = table.float().T.reshape(1, c, side, side)
            out = out + F.interpolate(grid, size=(hp, wp), mode="bicubic")[:, :, None].to(out.dtype)
        if broken == "z_major":
            seq = out.permute(0, 4, 3, 2, 1).flatten(1, 3)  # x-major
        else:
            seq = out.flatten(2).transpose(1, 2)  # (B, D'*h*w, C), z-major
        hidden = vt.encoder(inputs_embeds=seq).last_hidden_state
        if broken != "post_layernorm":
            hidden = vt.post_layernorm(hidden)
        if broken == "sequence_pool":
            grid = hidden.transpose(1, 2).reshape(len(hidden), c, dp, hp, wp)
            return F.adaptive_avg_pool3d(grid, (2, 4, 4)).flatten(2).transpose(1, 2)
        return F.adaptive_avg_pool1d(hidden.transpose(1, 2), 32).transpose(1, 2)

    @torch.no_grad()
    def visual(self, tokens: torch.Tensor, broken: str | None = None) -> torch.Tensor:
        """The projector: Linear-GELU-Linear in bf16, times vis_scale cast to bf16."""
        sd = self.ckpt["vision_projector"]
        dtype = torch.float32 if broken == "bf16_projector" else BF16
        h = F.linear(tokens.to(dtype), sd["0.weight"].to(dtype), sd["0.bias"].to(dtype))
        h = F.linear(F.gelu(h), sd["2.weight"].to(dtype), sd["2.bias"].to(dtype)).to(BF16)
        if broken != "vis_scale":
            h = h * torch.tensor(self.ckpt["vis_scale"], dtype=BF16)
        if broken == "no_embed_scale":
            h = h * torch.tensor(self.lm.config.text_config.hidden_size**0.5, dtype=BF16)
        return h

    @torch.no_grad()
    def logits(self, visual: torch.Tensor, broken: str | None = None) -> torch.Tensor:
        """First-step logits of [visual][tokenizer(prompt, add_special_tokens=True)]."""
        prompt = PROMPT.replace(" \n", "\n") if broken == "prompt" else PROMPT
        ids = self.tokenizer(prompt, add_special_tokens=broken != "bos", return_tensors="pt")["input_ids"]
        embed = self.lm.get_input_embeddings()
        text = embed(ids).expand(len(visual), -1, -1)
        if broken == "bos_after_visual":  # BOS first, then the visual tokens, then the prompt
            parts = [text[:, :1], visual, text[:, 1:]]
        else:
            parts = [visual, text]
        if broken == "lora":
            with self.lm.disable_adapter():
                return self.lm(inputs_embeds=torch.cat(parts, 1)).logits[:, -1].float()
        return self.lm(inputs_embeds=torch.cat(parts, 1)).logits[:, -1].float()

    def __call__(self, volume: torch.Tensor, broken: str | None = None):
        tokens = self.tokens(volume, broken)
        visual = self.visual(tokens, broken)
        return tokens.float(), visual.float(), self.logits(visual, broken)


def loader_outputs(model: Brain3D, volume: torch.Tensor):
    """Brain3D's pooled tokens, visual tokens and first-step logits."""
    with torch.no_grad():
        tokens = model.visual(volume)
        prefix = model._prefix(tokens)
        logits = model.lm(inputs_embeds=prefix).logits[:, -1].float()
    return tokens.float(), prefix[:, : tokens.shape[1]].float(), logits


def same(a, b, atol: float = 1e-5) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=atol, rtol=0)


@pytest.fixture(scope="module")
def independent(tiny_release_dir):
    return Independent(tiny_release_dir)


def _loader(release: Path, shape=None) -> Brain3D:
    card = read_card(release)
    if shape is not None:
        card["model"]["volume_shape"] = shape
    return Brain3D.from_card(card)


@pytest.fixture(scope="module")
def small(tiny_release_dir):
    """(volume at SMALL, the loader's outputs on it)."""
    torch.manual_seed(1)
    volume = torch.rand(2, 1, *SMALL)
    return volume, loader_outputs(_loader(tiny_release_dir, SMALL), volume)


def test_the_loader_is_the_releases_inference_at_its_geometry(tiny_release_dir, independent):
    """At 64 x 128 x 128 (65 x 9 x 9 tokens -> 32), the loader's visual tokens and first-step logits are the
    independent computation's, within 1e-5."""
    model = Brain3D.from_pretrained(tiny_release_dir)  # the folder as published: no brain3d.json
    assert model.visual.encoder.grid == (65, 9, 9) and model.variant == "reference"
    torch.manual_seed(0)
    volume = torch.rand(1, 1, 64, 128, 128)
    ours, theirs = loader_outputs(model, volume), independent(volume)
    for name, a, b in zip(("pooled tokens", "visual tokens", "logits"), ours, theirs):
        assert same(a, b), f"{name}: max difference {(a - b).abs().max():.3g}"
    assert ours[1].shape == (1, 32, 32) and ours[2].abs().max() > 0


@pytest.mark.parametrize("broken", [None, *FACTS])
def test_breaking_any_one_fact_breaks_the_match(small, independent, broken):
    """The check above is sensitive to every fact: with one fact broken in the independent computation, the
    logits (and, for the encoder's facts, the tokens) no longer match; unbroken, everything matches."""
    volume, ours = small
    theirs = independent(volume, broken)
    if broken is None:
        assert all(same(a, b) for a, b in zip(ours, theirs))
        return
    assert not same(ours[2], theirs[2], atol=1e-3), f"breaking {broken} left the logits as they were"
    if FACTS.index(broken) < FACTS.index("bf16_projector"):
        assert not same(ours[0], theirs[0]), f"breaking {broken} left the pooled tokens as they were"


# ------------------------------------------------------------------------------------------ the release card
def test_the_card_pins_every_file_and_the_hub_revision(tiny_release_dir):
    card = read_card(tiny_release_dir)
    files = sorted(
        p.relative_to(tiny_release_dir).as_posix()
        for p in tiny_release_dir.rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(tiny_release_dir).parts
    )
    assert sorted(card["sha256"]) == files and "lora_adapters/adapter_model.safetensors" in files
    for rel in files:
        assert card["sha256"][rel] == hashlib.sha256((tiny_release_dir / rel).read_bytes()).hexdigest()
    meta = tiny_release_dir / ".cache/huggingface/download" / f"{PROJECTOR}.metadata"
    assert card["revision"] == meta.read_text().split()[0] and len(card["revision"]) == 40
    assert card["model"]["variant"] == "reference" and card["model"]["volume_shape"] == (64, 128, 128)
    assert card["decoding"]["no_repeat_ngram_size"] == 3 and card["decoding"]["repetition_exempt"] == []
    assert card["decoding"]["max_new_tokens"] == 128 and card["decoding"]["temperature"] == 0.1


def test_an_incomplete_release_or_another_folder_is_one_clear_error(tmp_path, tiny_release_dir):
    with pytest.raises(FileNotFoundError, match="brain3d.json missing"):
        read_card(tmp_path)
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(tiny_release_dir / PROJECTOR, partial / PROJECTOR)
    with pytest.raises(FileNotFoundError, match="lacks vision_model/, language_model/"):
        read_card(partial)


# -------------------------------------------------------------------------------- safe loading of the projector
class Payload:
    """Unpickling this runs `open(marker, "w")`: what a malicious projector_vis_scale.pt would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_payload_is_refused_in_one_line_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / PROJECTOR
    torch.save({"vision_projector": {}, "vis_scale": Payload(marker)}, bad)
    with open(bad.with_suffix(".check"), "wb") as fh:  # the payload is real: plain pickle would run it
        pickle.dump(Payload(tmp_path / "control"), fh)
    pickle.loads(bad.with_suffix(".check").read_bytes())
    assert (tmp_path / "control").exists()
    with pytest.raises(ReleaseError) as err:
        read_projector(bad, 16, 32)
    assert not marker.exists()
    message = str(err.value)
    assert "\n" not in message and "refused" in message and "io.open" in message, message


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


@pytest.mark.parametrize(
    "change,says",
    [
        (lambda sd: {"vision_projector": sd, "vis_scale": 1.0, "extra": torch.zeros(1)}, "expected a dict"),
        (lambda sd: {"vision_projector": {**sd, "4.weight": torch.zeros(1)}, "vis_scale": 1.0}, "state dict"),
        (lambda sd: {"vision_projector": {**sd, "0.weight": torch.zeros(32, 8)}, "vis_scale": 1.0}, "shape"),
        (lambda sd: {"vision_projector": {**sd, "2.bias": [0.0] * 32}, "vis_scale": 1.0}, "float tensor"),
        (lambda sd: {"vision_projector": sd, "vis_scale": "1.0"}, "vis_scale"),
        (lambda sd: {"vision_projector": sd, "vis_scale": float("nan")}, "vis_scale"),
        (lambda sd: [sd], "expected a dict"),
    ],
)
def test_anything_but_the_published_projector_is_refused_in_one_line(tmp_path, change, says):
    sd = {"0.weight": torch.zeros(32, 16), "0.bias": torch.zeros(32), "2.weight": torch.zeros(32, 32)}
    sd["2.bias"] = torch.zeros(32)
    good = read_projector(_save(tmp_path / "good.pt", {"vision_projector": sd, "vis_scale": None}), 16, 32)
    assert float(good["vis_scale"]) == 1.0 and good["fc2.weight"].shape == (32, 32)
    with pytest.raises(ReleaseError, match=says) as err:
        read_projector(_save(tmp_path / "bad.pt", change(dict(sd))), 16, 32)
    assert "\n" not in str(err.value)


def test_a_language_model_saved_quantised_is_refused_on_a_cpu(tmp_path, tiny_release_dir, monkeypatch):
    from brain3d.config import PrecisionError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    release = tmp_path / "BrainGemma3D"
    shutil.copytree(tiny_release_dir, release)
    config = release / "language_model" / "config.json"
    cfg = json.loads(config.read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    config.write_text(json.dumps(cfg))
    with pytest.raises(PrecisionError, match="saved already quantised \\(bitsandbytes\\).*CUDA") as err:
        Brain3D.from_pretrained(release)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------- the LoRA
def test_the_lora_is_loaded_for_the_language_model_whatever_the_key_layout(tmp_path, tiny_release_dir, small):
    """The authors' plain target names also put adapters on MedGemma's own vision tower (unused: left out); the
    language model's adapters load under the key layout of the transformers version that saved them (here the
    pre-4.52 `language_model.model.layers`), giving the same model."""
    from safetensors.torch import load_file, save_file

    saved = load_file(str(tiny_release_dir / "lora_adapters/adapter_model.safetensors"))
    assert any("vision_tower" in k for k in saved) and any("language_model" in k for k in saved)
    old = tmp_path / "BrainGemma3D"
    shutil.copytree(tiny_release_dir, old)
    renamed = {
        k.replace("model.language_model.layers", "language_model.model.layers"): v for k, v in saved.items()
    }
    assert renamed != saved
    save_file(renamed, str(old / "lora_adapters/adapter_model.safetensors"))
    volume, ours = small
    again = loader_outputs(_loader(old, SMALL), volume)
    assert same(again[2], ours[2])
    shutil.rmtree(old / "lora_adapters")
    without = loader_outputs(_loader(old, SMALL), volume)
    assert not same(without[2], ours[2], atol=1e-3)  # the adapter is what the first check read


# ------------------------------------------------------------------------------------- the reference loader
def test_the_reference_loader_transposes_scales_the_whole_volume_and_keeps_the_healthy_defect(tmp_path):
    import nibabel as nib

    from brain3d.baselines.braingemma3d import reference_volume, resize

    rng = np.random.default_rng(0)
    data = rng.random((12, 10, 8)).astype(np.float32) * 100
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])  # stored LAS: as_closest_canonical flips the first axis
    for name in ("sub-01_flair.nii.gz", "healthy/sub-02_flair.nii.gz"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(data, affine), str(tmp_path / name))
    canonical = data[::-1]
    lo, hi = np.percentile(canonical, [1, 99])
    scaled = np.clip((canonical - lo) / (hi - lo), 0, 1)
    tumour = reference_volume(tmp_path / "sub-01_flair.nii.gz", (8, 10, 12))
    np.testing.assert_allclose(tumour, scaled.transpose(2, 1, 0), atol=1e-6)  # already at size: (z, y, x)
    healthy = reference_volume(tmp_path / "healthy/sub-02_flair.nii.gz", (12, 10, 8))
    np.testing.assert_allclose(healthy, scaled[:, ::-1], atol=1e-6)  # flipped on axis 1, not transposed
    small = reference_volume(tmp_path / "sub-01_flair.nii.gz", (4, 5, 6))
    expected = F.interpolate(
        torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 1, 0)))[None, None],
        size=(4, 5, 6),
        mode="trilinear",
        align_corners=False,
    )[0, 0]
    np.testing.assert_allclose(small, expected.numpy(), atol=1e-6)
    assert resize(scaled, scaled.shape).shape == scaled.shape


def test_the_baseline_without_a_snapshot_says_why_in_the_table(tmp_path):
    """The demo profile has no release snapshot: the stage's row in the main table says so, no number."""
    import pandas as pd

    from brain3d import config
    from brain3d.baselines import NotRunnable
    from brain3d.baselines.braingemma3d import ReleaseBaselineConfig, check_runnable
    from brain3d.generation import write_predictions
    from brain3d.metrics.evaluation import evaluate_systems

    root = Path(__file__).resolve().parents[1]
    cfg = config.load(root / "params.yaml", profile="demo")
    rcfg = ReleaseBaselineConfig.from_params(cfg["baselines"]["braingemma3d_release"])
    assert rcfg.loader == "project" and rcfg.volume_shape == (64, 128, 128)
    rcfg.path = str(tmp_path / "BrainGemma3D")
    with pytest.raises(NotRunnable) as err:
        check_runnable(rcfg)
    reason = str(err.value).removeprefix("not run: ")  # as stages/baseline.py records it

    class Test:
        subjects, reports = ["s1", "s2"], ["Left frontal lesion.", "Normal study."]

    pred = tmp_path / "predictions"
    write_predictions(pred, "phase2b", Test, Test.reports, meta={"status": "ok", "baseline": False})
    meta = {"status": "not_run", "reason": reason, "baseline": True}
    write_predictions(pred, "braingemma3d_release", Test, [], meta=meta)
    subjects = pd.DataFrame({"subject": ["s1", "s2"], "cohort": ["tumour", "healthy"]})
    evaluate_systems(
        pred,
        subjects,
        tmp_path / "reports",
        metrics=["bleu1"],
        bertscore_model=None,
        bertscore_layers=None,
        n_resamples=10,
        seed=0,
    )
    main = (tmp_path / "reports/tables/main.md").read_text()
    assert f"| braingemma3d_release | not run: no release snapshot at {rcfg.path}" in main


# ------------------------------------------------------------------------------------------ brain3d report
def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BRAIN3D_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    script = Path(sys.executable).parent / "brain3d"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "brain3d.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """A FLAIR-like head with a left lesion as a NIfTI and as a DICOM series, and a T1-weighted head."""
    import nibabel as nib

    from brain3d.data.atlas import flair_like, mni
    from brain3d.data.dicom import write_series

    atlas = mni(2)
    x, y, z = atlas.world_axes()
    lesion = atlas.brain & (
        (x[:, None, None] + 30) ** 2 + (y[None, :, None] - 10) ** 2 + (z[None, None, :] - 15) ** 2 < 14**2
    )
    folder = tmp_path_factory.mktemp("cohort")
    flair = flair_like(atlas.gm, atlas.wm, atlas.csf) * atlas.brain
    flair[lesion] = 1.0
    img = nib.Nifti1Image((1000 * flair).astype(np.float32), atlas.affine)
    nib.save(img, str(folder / "left.nii.gz"))
    write_series(img, folder / "AX_FLAIR")
    t1 = flair_like(atlas.gm, atlas.wm, atlas.csf, (0.55, 0.85, 0.1)) * atlas.brain
    nib.save(nib.Nifti1Image((1000 * t1).astype(np.int16), atlas.affine), str(folder / "t1.nii.gz"))
    return folder


def test_brain3d_report_takes_the_release_folder_as_published(cohort, tiny_release_dir, tmp_path):
    """NIfTI and DICOM in one call, the FLAIR check still refusing a T1, LIME figures, and every row naming the
    authors' weights with their hub revision and the sha256 of every file of the folder."""
    out, figures = tmp_path / "rows.jsonl", tmp_path / "lime"
    run = _run(
        "report",
        str(cohort),
        "--model",
        str(tiny_release_dir),
        "--skull-stripped",
        "--device",
        "cpu",
        "--max-new-tokens",
        "12",
        "--out",
        str(out),
        "--workers",
        "1",
        "--explain",
        str(figures),
        "--lime-samples",
        "4",
    )
    assert run.returncode == 2, run.stderr  # the T1
    assert "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert lines[0].startswith("precision fallback: 4-bit NF4") and "looks T1-weighted" in lines[1], lines
    assert len(lines) == 2
    rows = {Path(r["scan"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    statuses = {name: row["status"] for name, row in rows.items()}
    assert statuses == {"AX_FLAIR": "ok", "left.nii.gz": "ok", "t1.nii.gz": "failed"}
    card = read_card(tiny_release_dir)
    for name in ("AX_FLAIR", "left.nii.gz"):
        row = rows[name]
        assert row["report"].strip() and row["sequence"] == "FLAIR"
        model = row["model"]
        assert model["profile"] == "release" and "praiselab-picuslab/BrainGemma3D" in model["trained_on"]
        assert model["revision"] == card["revision"] and model["sha256"] == card["sha256"]
        assert model["use"].startswith("research use only")
        assert Path(row["explanation"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run.stdout.count(f"model: {tiny_release_dir.resolve()} (the authors' released weights") == 2


def test_two_releases_that_differ_only_in_their_projector_write_different_reports(tmp_path, tiny_release_dir):
    from brain3d.generation import decoding_from_params

    other = tmp_path / "BrainGemma3D"
    shutil.copytree(tiny_release_dir, other)
    ckpt = torch.load(other / PROJECTOR, weights_only=True)
    torch.manual_seed(5)
    ckpt["vision_projector"] = {k: torch.randn_like(v) * 0.2 for k, v in ckpt["vision_projector"].items()}
    torch.save(ckpt, other / PROJECTOR)
    torch.manual_seed(0)
    volume = torch.rand(1, 1, *SMALL)
    reports = []
    for folder in (tiny_release_dir, other):
        card = read_card(folder)
        card["model"]["volume_shape"] = SMALL
        model = Brain3D.from_card(card)
        decoding = decoding_from_params({**card["decoding"], "max_new_tokens": 24})
        with torch.no_grad():
            reports.append(model.generate(model.visual(volume), decoding, seed=0)[0])
        assert reports[-1] == model.generate(model.visual(volume), decoding, seed=0)[0]  # seeded
    assert reports[0] != reports[1]
    assert read_card(other)["sha256"][PROJECTOR] != read_card(tiny_release_dir)["sha256"][PROJECTOR]


def test_the_release_decodes_with_its_own_defaults_and_the_command_line_still_wins(tiny_release_dir):
    from brain3d import config
    from brain3d.cli import _parser, settings

    cfg = config.load(Path(__file__).resolve().parents[1] / "params.yaml")
    card = read_card(tiny_release_dir)
    decoding, _ = settings(cfg, _parser().parse_args(["report", "scan.nii.gz"]), card)
    assert (decoding.no_repeat_ngram_size, decoding.repetition_exempt, decoding.max_new_tokens) == (
        3,
        (),
        128,
    )
    assert (decoding.temperature, decoding.top_p, decoding.repetition_penalty) == (0.1, 0.9, 1.2)
    assert decoding.min_new_tokens == 10 and decoding.do_sample
    ours, _ = settings(cfg, _parser().parse_args(["report", "scan.nii.gz"]))
    assert ours.repetition_exempt == ("left", "right") != decoding.repetition_exempt  # params.yaml's
    short, _ = settings(cfg, _parser().parse_args(["report", "x.nii.gz", "--max-new-tokens", "7"]), card)
    assert short.max_new_tokens == 7 and short.no_repeat_ngram_size == 3
