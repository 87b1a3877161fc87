"""DVC stage `corpus`: extra phantom subjects, in no split, that pretrain the demo's SigLIP stand-in (as
MedSigLIP was pretrained on a corpus before the paper used it). Writes data/corpus/{volumes,seg}/<subject>.npy
in the standardised space and data/corpus/manifest.csv (brain3d/data/corpus.py). The paper profile sets
`corpus.n_subjects: 0`: an empty corpus, since MedSigLIP comes pretrained.
"""

import time

from brain3d import entrypoint, paths
from brain3d.data.corpus import generate_corpus


def main() -> None:
    with entrypoint.run("corpus", ("corpus",)) as (cfg, tracker):
        c, pre = cfg["corpus"], cfg["preprocess"]
        t0 = time.perf_counter()
        df = generate_corpus(
            paths.CORPUS,
            n_subjects=c["n_subjects"],
            seed=c["seed"],
            cohort_seed=cfg["download"]["seed"],
            healthy_fraction=c["healthy_fraction"],
            laterality_mix=c["laterality_mix"],
            shape=tuple(pre["shape"]),
            fov_mm=pre["fov_mm"],
            workers=c["workers"],
        )
        counts = df.groupby("laterality").size()
        tracker.log_metrics(
            {
                "n_subjects": len(df),
                "seconds": time.perf_counter() - t0,
                **{f"n_{lat}": int(n) for lat, n in counts.items()},
            }
        )
        print(counts.to_string() if len(df) else "empty corpus (corpus.n_subjects: 0)")


if __name__ == "__main__":
    main()
