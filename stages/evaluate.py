"""DVC stage `evaluate`: every system's predictions on the test subjects -> per-sample metrics, bootstrap
CIs, reports/tables/main.{md,csv,tex}, paired differences phase 2B minus every other system, forest plot,
metrics.json."""

import pandas as pd

from brain3d import entrypoint, fileio, paths
from brain3d.metrics.evaluation import evaluate_systems


def main() -> None:
    with entrypoint.run("evaluate", ("evaluate",)) as (cfg, tracker):
        e = cfg["evaluate"]
        test = pd.read_csv(paths.SPLITS).query("split == 'test'")[["subject", "cohort", "laterality"]]
        evaluate_systems(
            paths.PREDICTIONS,
            test,
            paths.REPORTS,
            bertscore_model=e["bertscore_model"],
            bertscore_layers=e["bertscore_layers"],
            n_resamples=e["n_resamples"],
            seed=e["seed"],
        )
        metrics = fileio.read_json(paths.REPORTS / "metrics.json")
        tracker.log_metrics(
            {
                f"{system}.{k}": v
                for system, values in metrics.items()
                if isinstance(values, dict)
                for k, v in values.items()
                if isinstance(v, (int, float))
            }
        )
        for name in ("tables", "figures", "per_sample", "metrics.json"):
            tracker.log_artifact(paths.REPORTS / name, name if name != "metrics.json" else None)
        print((paths.REPORTS / "tables" / "main.md").read_text())


if __name__ == "__main__":
    main()
