"""A miniature paper world: what a researcher downloads for `profile: paper`, in the real layouts, made of
phantom anatomy and tiny randomly initialised models of the real classes. Nothing in it is a result; it
exists so that the paper profile's every stage and loading call can run (tests/test_rehearsal.py) before
anyone spends GPU hours or signs a data licence.

    python -m brain3d.rehearsal OUT [--n-tumour 9] [--n-healthy 3] [--seed 11]

writes under OUT:
- `brats2020/BraTS20_Training_XXX/BraTS20_Training_XXX_{flair,t1,t1ce,t2,seg}.nii.gz`: the CBICA layout,
  240 x 240 x 155 at 1 mm, skull-stripped, BraTS labels 1/2/4 (t1/t1ce/t2 are copies of the FLAIR: no stage
  reads them); `name_mapping.csv` and `survival_info.csv` beside them, as in the release;
- `TextBraTSData/BraTS20_Training_XXX/BraTS20_Training_XXX_flair_text.txt`: each case's report;
- `ds000221/`: BIDS, `participants.tsv` and `sub-XXXXXX/ses-01/anat/sub-XXXXXX_ses-01_acq-highres_FLAIR.nii.gz`
  (with skull, in the phantom's scanner pose and storage order), plus a T1w that must be ignored;
- `models/medsiglip-448` (SiglipModel, image 448, patch 14) and `models/medgemma-1.5-4b-it`
  (Gemma3ForConditionalGeneration: SigLIP tower at 896 / patch 14, 256 tokens per image, Gemma's special
  and image tokens, a Gemma3Processor with its chat template): the real classes and geometry at tiny widths,
  saved with `save_pretrained` as the hub snapshots are;
- `models/BrainGemma3D`: a miniature of the authors' released model in its published layout (`write_release`:
  those two snapshots as vision_model/ and language_model/, projector_vis_scale.pt, lora_adapters/).

`paper_architectures(scale)` gives the same two configurations at the real widths ("real": MedSigLIP-448's
so400m tower, MedGemma-1.5-4B's Gemma 3 text model), which benchmarks/paper_gpu.py builds with random weights.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from brain3d.data.phantom import SubjectSpec, simulate_brain, simulate_subject
from brain3d.data.reports import healthy_report

BRATS_SHAPE = (240, 240, 155)  # BraTS 2020: 1 mm, SRI24-aligned
# BraTS 2020's stored orientation (LPS+ in RAS world terms: x and y flipped); the origin puts the grid centre
# at the brain's centre
BRATS_AXES = np.diag([-1.0, -1.0, 1.0])
SIDES = ("left", "right", "bilateral")
REAL_VOCAB = 262_208  # MedGemma-1.5-4B-IT's embedding rows
PROMPT_TEXT = "Generate a radiology report for this brain MRI FLAIR scan. You are an expert neuroradiologist."

# Vision: SigLIP so400m/14 (MedSigLIP-448 and MedGemma's tower share it). Text: Gemma 3 4B.
_REAL = {
    "siglip_vision": dict(
        hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16
    ),
    "siglip_text": dict(
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=27,
        num_attention_heads=16,
        max_position_embeddings=64,
    ),
    "gemma_text": dict(
        hidden_size=2560,
        intermediate_size=10240,
        num_hidden_layers=34,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        sliding_window=1024,
        max_position_embeddings=131072,
    ),
}
_TINY = {
    "siglip_vision": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
    "siglip_text": dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=64,
    ),
    "gemma_text": dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=512,
        max_position_embeddings=32768,
    ),
}


def paper_architectures(scale: str) -> dict[str, dict]:
    """Config kwargs of MedSigLIP-448 and MedGemma-1.5-4B-IT: the real geometry (MedSigLIP image 448, MedGemma
    image 896, patch 14, 256 tokens per image) at the "real" widths or at "tiny" ones."""
    widths = {"real": _REAL, "tiny": _TINY}[scale]
    return {
        "medsiglip": dict(
            vision=dict(widths["siglip_vision"], image_size=448, patch_size=14),
            text=dict(widths["siglip_text"]),
        ),
        "medgemma": dict(
            vision=dict(widths["siglip_vision"], image_size=896, patch_size=14),
            text=dict(widths["gemma_text"]),
            mm_tokens_per_image=256,
        ),
    }


# ----------------------------------------------------------------------------------------------- datasets
def _brats_grid(volume_affine: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The 1 mm BraTS grid (BRATS_AXES) whose centre is the brain mask's centre of mass in world mm."""
    centre_vox = np.argwhere(mask).mean(axis=0)
    centre = volume_affine[:3, :3] @ centre_vox + volume_affine[:3, 3]
    affine = np.eye(4)
    affine[:3, :3] = BRATS_AXES
    affine[:3, 3] = centre - BRATS_AXES @ ((np.array(BRATS_SHAPE) - 1) / 2)
    return affine


def _resample(data: np.ndarray, affine: np.ndarray, target: np.ndarray, order: int) -> np.ndarray:
    from scipy import ndimage as ndi

    to_source = np.linalg.inv(affine) @ target
    return ndi.affine_transform(
        data,
        to_source[:3, :3],
        to_source[:3, 3],
        output_shape=BRATS_SHAPE,
        order=order,
        mode="constant",
        cval=0,
        prefilter=False,
    )


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))


def write_brats_case(number: int, side: str, seed: int, brats: Path, textbrats: Path, scratch: Path) -> None:
    """BraTS20_Training_<number>: a phantom tumour brain, skull-stripped on the BraTS grid, and its report."""
    spec = SubjectSpec(f"case-{number:03d}", number, seed, "tumour", side)
    report = simulate_subject(spec, scratch)["report"]  # same brain and lesions as simulate_brain (one spec)
    flair, seg, brain, affine = simulate_brain(spec)
    target = _brats_grid(affine, brain)
    mask = _resample(brain.astype(np.uint8), affine, target, order=0) > 0
    flair = np.where(mask, _resample(flair.astype(np.float32), affine, target, order=1), 0)
    flair = np.clip(np.rint(flair), 0, None).astype(np.int16)
    seg = (_resample(seg, affine, target, order=0) * mask).astype(np.uint8)
    sid = f"BraTS20_Training_{number:03d}"
    for modality in ("flair", "t1", "t1ce", "t2"):
        _save(brats / sid / f"{sid}_{modality}.nii.gz", flair, target)
    _save(brats / sid / f"{sid}_seg.nii.gz", seg, target)
    (textbrats / sid).mkdir(parents=True, exist_ok=True)
    (textbrats / sid / f"{sid}_flair_text.txt").write_text(report + "\n", encoding="utf-8")


def write_ds000221_subject(index: int, seed: int, ds: Path, scratch: Path) -> str:
    """sub-<id>: a healthy phantom head (skull, pose, storage order) as a ses-01 high-res FLAIR; its id."""
    subject = f"{10000 + index:06d}"
    spec = SubjectSpec(f"sub-{subject}", 1000 + index, seed, "healthy", "none")
    simulate_subject(spec, scratch)
    anat = ds / f"sub-{subject}" / "ses-01" / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    shutil.copy(
        scratch / spec.subject / "flair.nii.gz", anat / f"sub-{subject}_ses-01_acq-highres_FLAIR.nii.gz"
    )
    shutil.copy(
        scratch / spec.subject / "flair.nii.gz", anat / f"sub-{subject}_ses-01_acq-mp2rage_T1w.nii.gz"
    )
    return subject


# ------------------------------------------------------------------------------------------------- models
def write_snapshots(
    models: Path, texts: list[str], seed: int = 0, scale: str = "tiny", device: str = "cpu"
) -> tuple[Path, Path]:
    """medsiglip-448 and medgemma-1.5-4b-it snapshot folders of random weights: the real classes and geometry at
    `scale` ("tiny" widths, or the "real" ones, built in bf16 on `device` and sized to MedGemma's 262,208-token
    vocabulary), with a stand-in tokenizer trained on `texts`."""
    import torch
    from transformers import SiglipConfig, SiglipModel

    from brain3d.models.foundation import build_gemma3, save_gemma3, save_siglip, train_tokenizer

    arch = paper_architectures(scale)
    tokenizer = train_tokenizer(texts, 400)
    ids = dict(
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision_dir, lm_dir = models / "medsiglip-448", models / "medgemma-1.5-4b-it"
    t = arch["medgemma"]["text"]
    gemma_arch = dict(
        hidden=t["hidden_size"],
        intermediate=t["intermediate_size"],
        layers=t["num_hidden_layers"],
        heads=t["num_attention_heads"],
        kv_heads=t["num_key_value_heads"],
        head_dim=t["head_dim"],
        max_positions=t["max_position_embeddings"],
        sliding_window=t["sliding_window"],
        mm_tokens_per_image=arch["medgemma"]["mm_tokens_per_image"],
        **({"vocab_size": REAL_VOCAB} if scale == "real" else {}),
    )
    dtype = torch.bfloat16 if scale == "real" else torch.float32
    default = torch.get_default_dtype()
    torch.manual_seed(seed)
    try:
        torch.set_default_dtype(dtype)
        with torch.device(device):
            siglip = SiglipModel(
                SiglipConfig(
                    vision_config=arch["medsiglip"]["vision"],
                    text_config={**arch["medsiglip"]["text"], "vocab_size": len(tokenizer), **ids},
                )
            )
            save_siglip(siglip, tokenizer, vision_dir)
            del siglip
            gemma = build_gemma3(tokenizer, arch["medgemma"]["vision"], gemma_arch)
            save_gemma3(gemma, tokenizer, lm_dir)
            del gemma
    finally:
        torch.set_default_dtype(default)
    for folder in (vision_dir, lm_dir):  # what `hf download --local-dir` leaves: the snapshot's commit
        meta = folder / ".cache" / "huggingface" / "download" / "config.json.metadata"
        meta.parent.mkdir(parents=True, exist_ok=True)
        commit = hashlib.sha1(f"brain3d-rehearsal {folder.name} {seed}".encode()).hexdigest()
        meta.write_text(f"{commit}\n\n0\n")
    return vision_dir, lm_dir


# the authors' LoRA (SPEC §4b): plain module names, so MedGemma's own vision tower gets adapters too
RELEASE_LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "k_proj", "o_proj"])


def _record_revision(folder: Path, commit: str) -> None:
    """The bookkeeping `hf download --local-dir` leaves: .cache/huggingface/download/<file>.metadata per file,
    the snapshot's commit on its first line."""
    files = [p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).parts[0] != ".cache"]
    for path in files:
        meta = (
            folder / ".cache" / "huggingface" / "download" / f"{path.relative_to(folder).as_posix()}.metadata"
        )
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(f"{commit}\n\n0\n")


def write_release(out: Path, vision: Path, lm: Path, *, seed: int = 0, lora: bool = True) -> Path:
    """A miniature BrainGemma3D release in the published layout (brain3d/models/release.py): `vision` (a SigLIP
    snapshot) as vision_model/; `lm` (a multimodal Gemma 3 snapshot) as language_model/, its tokenizer adding BOS
    as Gemma's does; a random Linear-GELU-Linear projector and vis_scale saved as the release saves them
    (torch.save of a dict); with `lora`, a LoRA made as the authors made theirs (RELEASE_LORA on the LM loaded
    whole, random B), saved by PEFT; and a recorded hub revision. Returns `out`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from torch import nn
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from brain3d.models import release

    out = Path(out)
    for src, name in ((vision, "vision_model"), (lm, "language_model")):
        shutil.copytree(src, out / name, ignore=shutil.ignore_patterns(".cache"))
    tokenizer = AutoTokenizer.from_pretrained(out / "language_model")
    tokenizer.add_bos_token = True
    tokenizer.save_pretrained(out / "language_model")
    width = AutoConfig.from_pretrained(vision).vision_config.hidden_size
    hidden = AutoConfig.from_pretrained(lm).text_config.hidden_size
    torch.manual_seed(seed)
    projector = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, hidden))
    vis_scale = 0.5 + float(torch.rand(()))
    torch.save({"vision_projector": projector.state_dict(), "vis_scale": vis_scale}, out / release.PROJECTOR)
    if lora:
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(out / "language_model"), LoraConfig(**RELEASE_LORA)
        )
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0.0, 0.05)
        model.save_pretrained(out / release.LORA)
    _record_revision(out, hashlib.sha1(f"brain3d-rehearsal release {seed}".encode()).hexdigest())
    return out


def write_world(
    out: Path, *, n_tumour: int = 9, n_healthy: int = 3, seed: int = 11, sides: tuple[str, ...] = SIDES
) -> dict[str, Path]:
    """The miniature paper world under `out` (see the module docstring); returns its folders by params key.
    Tumour sides cycle through `sides` (left, right, bilateral)."""
    out = Path(out)
    dirs = {
        "brats_dir": out / "brats2020",
        "textbrats_dir": out / "TextBraTSData",
        "ds000221_dir": out / "ds000221",
        "vision": out / "models" / "medsiglip-448",
        "lm": out / "models" / "medgemma-1.5-4b-it",
        "release": out / "models" / "BrainGemma3D",
    }
    with tempfile.TemporaryDirectory() as scratch:
        for n in range(1, n_tumour + 1):
            write_brats_case(
                n, sides[(n - 1) % len(sides)], seed, dirs["brats_dir"], dirs["textbrats_dir"], Path(scratch)
            )
        subjects = [
            write_ds000221_subject(i, seed, dirs["ds000221_dir"], Path(scratch))
            for i in range(1, n_healthy + 1)
        ]
    ids = [f"BraTS20_Training_{n:03d}" for n in range(1, n_tumour + 1)]
    (dirs["brats_dir"] / "name_mapping.csv").write_text(
        "Grade,BraTS_2020_subject_ID\n" + "".join(f"HGG,{i}\n" for i in ids)
    )
    (dirs["brats_dir"] / "survival_info.csv").write_text("Brats20ID,Age,Survival_days,Extent_of_Resection\n")
    (dirs["ds000221_dir"] / "participants.tsv").write_text(
        "participant_id\tgender\tage\n" + "".join(f"sub-{s}\tF\t25-30\n" for s in subjects)
    )
    (dirs["ds000221_dir"] / "dataset_description.json").write_text(
        '{"Name": "miniature ds000221 (phantom heads)", "BIDSVersion": "1.8.0"}\n'
    )
    reports = [p.read_text(encoding="utf-8") for p in sorted(dirs["textbrats_dir"].rglob("*_flair_text.txt"))]
    texts = reports + [healthy_report(s) for s in subjects] + [PROMPT_TEXT]
    write_snapshots(out / "models", texts * 3, seed)
    write_release(dirs["release"], dirs["vision"], dirs["lm"], seed=seed)
    return dirs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m brain3d.rehearsal", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--n-tumour", type=int, default=9)
    parser.add_argument("--n-healthy", type=int, default=3)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    for key, path in write_world(
        args.out, n_tumour=args.n_tumour, n_healthy=args.n_healthy, seed=args.seed
    ).items():
        print(f"{key}: {path}")


if __name__ == "__main__":
    main()
