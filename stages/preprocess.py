"""DVC stage `preprocess`: skull strip, canonical RAS, percentile clip/scale, resample to
`preprocess.shape`, FLAIR check (brain3d/data/sequence.py); per-subject QC (data/preprocessed/qc.csv, with the
sequence each scan looks like and its fitted tissue intensities) and a QC montage (qc.png)."""

from pathlib import Path

from brain3d import entrypoint
from brain3d.data import manifest
from brain3d.data.preprocess import preprocess_cohort, preprocess_settings
from brain3d.data.qc import montage

OUT = Path("data/preprocessed")


def main() -> None:
    with entrypoint.run("preprocess", ("preprocess",)) as (cfg, tracker):
        p = cfg["preprocess"]
        df = manifest.read("data/raw/manifest.csv")
        qc, ok = preprocess_cohort(
            df,
            Path.cwd(),
            OUT,
            shape=tuple(p["shape"]),
            workers=p["workers"],
            on_error=p["on_error"],
            **preprocess_settings(p),
        )
        montage(OUT, ok, OUT / "qc.png")
        n_bad = int((qc["status"] != "ok").sum())
        seconds = qc.loc[qc["status"] == "ok", "seconds"].astype(float) if "seconds" in qc else None
        tracker.log_metrics(
            {
                "n_ok": len(ok),
                "n_error": n_bad,
                "seconds_per_volume": float(seconds.mean()) if seconds is not None else 0.0,
            }
        )
        tracker.log_artifact(OUT / "qc.csv")
        tracker.log_artifact(OUT / "qc.png")
        if n_bad:
            print(f"preprocess: {n_bad} subject(s) skipped, see {OUT / 'qc.csv'}")


if __name__ == "__main__":
    main()
