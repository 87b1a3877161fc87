"""DVC stage `download`: the cohort and its manifest (data/raw/manifest.csv).

demo: generates the phantom cohort. paper: verifies (and optionally fetches) BraTS 2020, TextBraTS and
OpenNeuro ds000221 at the locations given in params, failing with one message that lists what is missing.
"""

from pathlib import Path

from brain3d import entrypoint
from brain3d.data import manifest

OUT = Path("data/raw")


def main() -> None:
    with entrypoint.run("download", ("download",)) as (cfg, tracker):
        params = cfg["download"]
        root = Path.cwd()
        if params["source"] == "phantom":
            from brain3d.data.phantom import generate_cohort

            df = generate_cohort(
                OUT / "phantom",
                n_subjects=params["n_subjects"],
                seed=params["seed"],
                healthy_fraction=params["healthy_fraction"],
                laterality_mix=params["laterality_mix"],
                workers=params["workers"],
                root=root,
            )
        elif params["source"] == "real":
            from brain3d.data.sources import build_real_cohort

            df = build_real_cohort(
                params, root, fetch=params["fetch"], max_voxels=cfg["preprocess"]["max_voxels"]
            )
        else:
            raise SystemExit(f"download.source must be 'phantom' or 'real', got '{params['source']}'")
        errors = manifest.validate(df, root)
        if errors:
            raise manifest.CohortError(errors)
        df = manifest.write(OUT / "manifest.csv", df)
        counts = df.groupby(["cohort", "laterality"]).size()
        tracker.log_metrics(
            {"n_subjects": len(df), **{f"n_{c}_{lat}": int(n) for (c, lat), n in counts.items()}}
        )
        tracker.log_artifact(OUT / "manifest.csv")
        print(counts.to_string())


if __name__ == "__main__":
    main()
