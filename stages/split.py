"""DVC stage `split`: subject-level train/val/test split (`split.fractions`), stratified by cohort x laterality
(data/splits.csv)."""

from pathlib import Path

from brain3d import entrypoint, fileio
from brain3d.data import manifest
from brain3d.data.split import stratified_split

OUT = Path("data/splits.csv")


def main() -> None:
    with entrypoint.run("split", ("split",)) as (cfg, tracker):
        p = cfg["split"]
        df = manifest.read("data/preprocessed/manifest.csv")
        splits = stratified_split(df, fractions=tuple(p["fractions"]), seed=p["seed"])
        fileio.write_csv(OUT, splits)
        table = splits.groupby(["split", "cohort", "laterality"]).size().unstack(fill_value=0)
        tracker.log_metrics({f"n_{s}": int((splits["split"] == s).sum()) for s in ("train", "val", "test")})
        tracker.log_artifact(OUT)
        print(table.to_string())


if __name__ == "__main__":
    main()
