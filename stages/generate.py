"""DVC stage `generate@<system>`: reports for every test subject with one trained model, written to
reports/predictions/<system>.jsonl (+ <system>.json metadata).

    python -m stages.generate <system> <model> [shuffled] [plain]

`shuffled` is the image-shuffled control: each subject gets another test subject's visual tokens, so a
system that truly reads the image must beat it. `plain` decodes as the paper does, whatever `generate.select`
says (the paper row beside findings-consistent decoding).
"""

import sys

import pandas as pd
import torch

from brain3d import entrypoint, paths, runtime
from brain3d.data import manifest
from brain3d.data.split import SplitSubjects
from brain3d.generation import decoding_from_params, derangement, generate_reports, write_predictions
from brain3d.models.model import Brain3D

DESCRIPTIONS = {
    "phase1": "Brain3D after phase 1 only (contrastive encoder, untrained projector)",
    "phase2a": "Brain3D after phase 2A (projector warm-up)",
    "phase2b": "Brain3D full (phase 2B: projector + LoRA)",
    "phase2b_plain": "Brain3D full with the paper's plain decoder (no findings-consistent selection)",
    "phase2b_shuffled": "control: phase 2B fed another test subject's visual tokens",
}


def main() -> None:
    system, model_name = sys.argv[1], sys.argv[2]
    shuffled = len(sys.argv) > 3 and sys.argv[3].lower() in ("true", "shuffled")
    plain = len(sys.argv) > 4 and sys.argv[4] == "plain"
    with entrypoint.run(f"generate@{system}", ("generate",)) as (cfg, tracker):
        g = {**cfg["generate"], **({"select": "plain"} if plain else {})}
        model = Brain3D.from_pretrained(paths.model_dir(model_name), runtime.device())
        test = SplitSubjects.load(
            pd.read_csv(paths.SPLITS), manifest.read(paths.MANIFEST), "test", paths.VOLUMES
        )
        volumes = test.volumes()
        tokens = model.visual.encode(volumes)
        if shuffled:  # the tokens and, for the detector guide, the volumes of another subject
            perm = derangement(len(test), g["seed"])
            tokens, volumes = tokens[torch.from_numpy(perm)], [volumes[i] for i in perm]
        preds = generate_reports(
            model,
            tokens,
            decoding_from_params(g),
            batch_size=g["batch_size"],
            seed=g["seed"],
            desc=system,
            volumes=volumes,
        )
        description = DESCRIPTIONS.get(system, f"{model_name}{' (shuffled control)' if shuffled else ''}")
        write_predictions(
            paths.PREDICTIONS,
            system,
            test,
            preds,
            meta={"status": "ok", "reason": "", "baseline": False, "description": description},
        )
        tracker.log_metrics({"n_test": len(test)})
        tracker.log_artifact(paths.PREDICTIONS / f"{system}.jsonl", "predictions")


if __name__ == "__main__":
    main()
