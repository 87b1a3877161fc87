"""DVC stage `lime`: 3D LIME for `lime.per_class` test subjects per laterality class + one healthy, with the
phase 2B model; three-plane figures, weights, a contact sheet and faithfulness numbers (reports/lime/). Also
a linear probe of how much side the frozen visual tokens carry, next to hemisphere features and a
supervised 3D CNN as the ceiling (reports/lime/token_probe.json)."""

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from brain3d import entrypoint, fileio, paths, runtime
from brain3d.data import manifest
from brain3d.interpretability.cases import LimeSettings, explain_case, pick_cases
from brain3d.interpretability.figures import save_case_figure, save_contact_sheet
from brain3d.interpretability.probe import laterality_probes
from brain3d.interpretability.targets import randomised_copy
from brain3d.models.model import Brain3D
from brain3d.models.side_cnn import CnnSettings

OUT = Path("reports/lime")


def main() -> None:
    with entrypoint.run("lime", ("lime",)) as (cfg, tracker):
        settings = LimeSettings.from_params(cfg["lime"])
        device = runtime.device()
        model = Brain3D.from_pretrained(paths.model_dir("phase2b"), device)
        randomised = randomised_copy(model, settings.seed)
        splits = pd.read_csv(paths.SPLITS)
        test = splits.query("split == 'test'").merge(manifest.read(paths.MANIFEST)[["subject", "report"]])
        rows, sheet = [], []
        for sid in tqdm(pick_cases(test, cfg["lime"]["per_class"]), desc="lime cases", unit="case"):
            case = test.set_index("subject").loc[sid]
            volume = np.load(paths.VOLUMES / f"{sid}.npy")
            seg_path = paths.SEGS / f"{sid}.npy"
            seg = np.load(seg_path) if seg_path.exists() else None
            with_side = case["laterality"] in ("left", "right")
            result = explain_case(
                model, volume, case["report"], settings, seg=seg, with_side=with_side, randomised=randomised
            )
            rows += [{"subject": sid, "laterality": case["laterality"], **r} for r in result.rows]
            fileio.write_json(
                OUT / "weights" / f"{sid}.json",
                {t: e.weights.tolist() for t, e in result.explanations.items()},
            )
            for target, exp in result.explanations.items():
                title = f"{sid} ({case['laterality']}) · {target}"
                save_case_figure(
                    OUT / "figures" / f"{sid}_{target}.png", volume, exp.voxel_map(result.labels), seg, title
                )
            sheet.append(
                (
                    f"{sid} ({case['laterality']})",
                    volume,
                    result.explanations["report"].voxel_map(result.labels),
                    seg,
                )
            )
        save_contact_sheet(OUT / "contact_sheet.png", sheet)
        table = pd.DataFrame(rows)
        fileio.write_csv(OUT / "faithfulness.csv", table)
        summary = table.groupby(["model", "target"]).mean(numeric_only=True).round(4)
        metrics = {
            f"{m}_{t}_{k}": float(v) for (m, t), r in summary.iterrows() for k, v in r.items() if v == v
        }
        trained = table[table["model"] == "trained"]
        stability = {
            sid: dict(zip(g["target"], g["stability"].round(4))) for sid, g in trained.groupby("subject")
        }
        fileio.write_json(OUT / "faithfulness.json", {**metrics, "stability_per_case": stability})
        tracker.log_metrics(metrics)
        for name in ("faithfulness.csv", "contact_sheet.png", "figures"):
            tracker.log_artifact(OUT / name, "lime" if name != "figures" else "lime/figures")
        print(summary.to_string())

        # side information in the frozen visual tokens vs plain hemisphere asymmetry and a trained 3D CNN
        probe = laterality_probes(
            model.visual,
            splits,
            paths.VOLUMES,
            settings.seed,
            CnnSettings.from_params(cfg["lime"]["cnn"]),
            device,
            tracker.log_metrics,
        )
        fileio.write_json(OUT / "token_probe.json", probe)
        tracker.log_metrics({f"probe_{k}_accuracy": v["accuracy"] for k, v in probe.items()})
        print(
            "laterality probe (test accuracy):",
            {k: round(v["accuracy"], 3) for k, v in probe.items()},
            "chance",
            round(probe["visual_tokens"]["chance"], 3),
        )


if __name__ == "__main__":
    main()
