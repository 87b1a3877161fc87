"""DVC stage `phase1`: contrastive grounding of the inflated 3D encoder against the frozen LM (InfoNCE), and
with `phase1.findings_weight` > 0 findings grounding (its head is saved as findings.safetensors); with
`phase1.side_refit_epochs` > 0 the head's side read-out is then refit on the frozen tokens of the train split
and the corpus (data/corpus: the demo's extra phantoms, sides from their ground truth; empty on the paper).
With `phase1.corpus_findings` the corpus subjects also join phase 1's training as report-less rows: the
findings head's presence and side losses reach the encoder through them.

With `detector.epochs` > 0 it also trains the side detector, a 3D CNN on the volumes of the train split and the
corpus with their known sides (brain3d/models/side_cnn.py), saved as detector.safetensors: findings-consistent
decoding with `generate.guide: detector` holds the reports to it.

Also saves the seeded, RMS-calibrated projector that phase 2A starts from: with it, `models/phase1` is the
paper's "Phase 1 only" system (trained encoder, untrained projector).
"""

import pandas as pd
import torch

from brain3d import entrypoint, fileio, paths
from brain3d.cache import cache_dir
from brain3d.data import manifest
from brain3d.data.findings import SIDES, UNDEFINED_SIDE, side_index
from brain3d.data.split import SplitSubjects
from brain3d.models.backbones import read_backbones
from brain3d.models.model import Brain3D, ModelConfig, load_backbones
from brain3d.models.side_cnn import CnnSettings, train_cnn
from brain3d.runtime import device, is_main_process, seed_everything
from brain3d.training import phases
from brain3d.training.loop import TrainConfig

OUT = paths.model_dir("phase1")


def main() -> None:
    with entrypoint.run("phase1", ("model", "phase1", "detector")) as (cfg, tracker):
        p, model_cfg, bb = cfg["phase1"], ModelConfig.from_params(cfg), read_backbones(paths.BACKBONES)
        seed_everything(p["seed"])
        visual, lm = load_backbones(bb, model_cfg)
        splits, df = pd.read_csv(paths.SPLITS), manifest.read(paths.MANIFEST)
        train, val = (SplitSubjects.load(splits, df, s, paths.VOLUMES) for s in ("train", "val"))
        corpus, corpus_volumes, corpus_segs = manifest.read_corpus(paths.CORPUS)
        corpus_sides = [side_index(lat) for lat in corpus["laterality"]]
        key = phases.run_key(
            {"model": cfg["model"], "phase1": p, "shape": cfg["preprocess"]["shape"]},
            [paths.BACKBONES, paths.SPLITS, paths.MANIFEST]
            + ([paths.CORPUS / manifest.CORPUS_MANIFEST] if p["corpus_findings"] else []),
        )
        model, result = phases.train_phase1(
            visual,
            lm,
            train,
            val,
            TrainConfig.from_params(p),
            temperature=p["temperature"],
            laterality_flip=p["laterality_flip"],
            findings_weight=p["findings_weight"],
            side_balance=p["side_balance"],
            corpus=(corpus_volumes, corpus_sides) if p["corpus_findings"] else None,
            corpus_segs=corpus_segs,
            cell_weight=p["cell_weight"],
            bilateral_weight=p["bilateral_weight"],
            state_dir=cache_dir("phase1", key),
            tracker=tracker,
        )
        if not is_main_process():
            return
        volumes = [train.volume(i) for i in range(len(train))] + corpus_volumes
        sides = phases.findings_tensors(train.reports)["side"].tolist() + corpus_sides
        if p["side_refit_epochs"] and model.findings is not None:  # the head's side read-out, more subjects
            refit = phases.refit_side(
                model.findings,
                visual,
                volumes,
                sides,
                epochs=p["side_refit_epochs"],
                lr=p["side_refit_lr"],
                seed=p["seed"],
            )
            if tracker is not None:
                tracker.log_metrics(refit)
        torch.manual_seed(p["seed"])
        brain3d = Brain3D(lm, visual.width, model_cfg.prompt, visual=visual, variant=model_cfg.variant)
        z = visual.encode([train.volume(i) for i in range(min(16, len(train)))])
        brain3d.projector.calibrate(z, brain3d.text_rms())
        fileio.save_safetensors(OUT / "head.safetensors", model.head.state_dict())
        findings = None
        if model.findings is not None:  # (B, K, Cv) tokens -> presence, side, anatomy, pathology logits
            findings = OUT / "findings.safetensors"
            fileio.save_safetensors(findings, model.findings.state_dict())
        detector = None
        if cfg["detector"][
            "epochs"
        ]:  # the side detector: the volumes with a known side (not a midline lesion)
            settings = CnnSettings.from_params(cfg["detector"])
            known = [i for i, s in enumerate(sides) if s != UNDEFINED_SIDE]
            net = train_cnn(
                [volumes[i] for i in known],
                [SIDES[sides[i]] for i in known],
                settings,
                seed=p["seed"],
                device=device(),
                log=None
                if tracker is None
                else lambda m, epoch: tracker.log_metrics(
                    {f"detector_{k}": v for k, v in m.items()}, step=epoch
                ),
            )
            detector = (
                OUT / "detector.safetensors",
                {"channels": settings.channels, "downsample": settings.downsample},
            )
            fileio.save_safetensors(detector[0], net.state_dict())
        brain3d.save_pretrained(
            OUT, phase="phase1", model_cfg=model_cfg, backbones=bb, findings=findings, detector=detector
        )
        phases.write_training_record("phase1", result, paths.CURVES, paths.TRAINING, tracker)


if __name__ == "__main__":
    main()
