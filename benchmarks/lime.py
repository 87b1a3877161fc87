"""Benchmark: 3D LIME with our batched `LimeBase` path vs routing the same volume through `lime_image`.

Both explain the same demo-sized volume (the MNI anatomy in FLAIR-like contrast with a left frontal
lesion, preprocessed to 32x64x64) over the same SLIC supervoxels (lime.n_segments / compactness from
params.yaml), with the same number of samples, batch size, hidden value (0) and scoring function, side by
side in one process. `lime_image.LimeImageExplainer` takes the (D, H, W) volume as an "image" (W acts as
its channel axis) and a `segmentation_fn` returning the supervoxels, so its per-sample loop builds the
same perturbed volumes ours builds in one vectorised step.

Scores: a fixed, seeded small 3D conv net (cheap, deterministic), or with `--model DIR` a trained Brain3D's
teacher-forced log-likelihood of a report (what the `lime` stage explains). A second table times a no-op
score, i.e. the pipelines' own overhead.

`--stability 50,100,200,400`: instead, how stable our explanation is at each number of samples (Spearman rank
correlation of the supervoxel weights from two seeds, as the `lime` stage records per case) and what it costs;
the smallest count reaching .9 is the cost of one stable explanation.

    python benchmarks/lime.py [--samples 100] [--repeats 3] [--model models/phase2b] [--stability 50,100,200]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np

# This file is named lime.py: drop its folder from the path so that `import lime` finds the lime package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

REPORT = "A heterogeneous hyperintense lesion is seen in the left frontal lobe with surrounding edema."


def demo_volume(shape: tuple[int, int, int]) -> np.ndarray:
    import nibabel as nib

    from brain3d.data.atlas import flair_like, mni
    from brain3d.data.preprocess import standardize

    atlas = mni(2)
    flair = flair_like(atlas.gm, atlas.wm, atlas.csf) * atlas.brain
    x, y, z = atlas.world_axes()
    flair[
        atlas.brain
        & ((x[:, None, None] + 30) ** 2 + (y[None, :, None] - 25) ** 2 + (z[None, None, :] - 20) ** 2 < 15**2)
    ] = 1.0
    return standardize(nib.Nifti1Image(flair.astype(np.float32), atlas.affine), shape, atlas.brain)


def conv_net_score(seed: int = 0):
    """(B, D, H, W) -> (B,): a fixed random 3D conv net (about 14 M multiply-adds per 32x64x64 volume)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv3d(1, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv3d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv3d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(32, 1),
    ).eval()

    def score(volumes: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(volumes, dtype=np.float32))[:, None]
            return net(x)[:, 0].numpy().astype(np.float64)

    return score


def model_score(model_dir: str, device: str):
    from brain3d.interpretability.targets import case_scores
    from brain3d.models.model import Brain3D

    model = Brain3D.from_pretrained(model_dir, device)
    return case_scores(model, REPORT, with_side=False)[1], tuple(model.visual.encoder.volume_shape)


def ours(volume, labels, score, n_samples, batch_size, seed) -> np.ndarray:
    from brain3d.interpretability.lime3d import explain

    return explain(volume, labels, score, n_samples=n_samples, batch_size=batch_size, seed=seed)[0].weights


def via_lime_image(volume, labels, score, n_samples, batch_size, seed) -> np.ndarray:
    from lime.lime_image import LimeImageExplainer

    k = int(labels.max())
    explainer = LimeImageExplainer(kernel_width=0.25, random_state=seed)
    with contextlib.redirect_stderr(io.StringIO()):  # its per-sample tqdm bar
        exp = explainer.explain_instance(
            volume,
            lambda imgs: score(imgs)[:, None],
            labels=(0,),
            top_labels=None,
            hide_color=0,
            num_features=k + 1,
            num_samples=n_samples,
            batch_size=batch_size,
            segmentation_fn=lambda _: labels,
        )
    weights = np.zeros(k + 1)  # feature 0 is the background (already 0: hiding it changes nothing)
    for index, weight in exp.local_exp[0]:
        weights[index] = weight
    return weights[1:]


def timed(fn, repeats: int, *args) -> tuple[float, np.ndarray]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=None, help="default: params.yaml lime.n_samples")
    parser.add_argument("--repeats", type=int, default=3, help="timings are the median of this many runs")
    parser.add_argument("--model", default=None, help="a trained model directory (default: a fixed conv net)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--stability", default=None, help="comma-separated sample counts: stability vs cost")
    args = parser.parse_args()

    from brain3d import config, runtime
    from brain3d.interpretability.cases import LimeSettings
    from brain3d.interpretability.lime3d import supervoxels

    runtime.setup(args.threads)
    settings = LimeSettings.from_params(config.load("params.yaml")["lime"])  # the active profile's values
    n_samples = args.samples or settings.n_samples
    if args.model:
        score, shape = model_score(args.model, args.device)
        score_name = f"teacher-forced log-likelihood, {args.model}"
    else:
        score, shape = conv_net_score(), (32, 64, 64)
        score_name = "fixed 3-layer 3D conv net"
    volume = demo_volume(shape)
    labels = supervoxels(volume, settings.n_segments, settings.compactness)
    k = int(labels.max())
    score(volume[None])  # warm-up (first-call allocations)

    if args.stability:
        stability_table(
            volume, labels, score, score_name, [int(n) for n in args.stability.split(",")], settings
        )
        return
    print(
        f"volume {'x'.join(map(str, volume.shape))}, {k} supervoxels (n_segments {settings.n_segments}), "
        f"{n_samples} samples, batch {settings.batch_size}, {args.threads} thread(s), median of {args.repeats}"
    )
    rows = []
    for name, fn in (
        ("score: " + score_name, score),
        ("score: no-op (pipeline overhead)", lambda v: v[:, 0, 0, 0] * 0),
    ):
        common = (volume, labels, fn, n_samples, settings.batch_size, settings.seed)
        t_lime, w_lime = timed(via_lime_image, args.repeats, *common)
        t_ours, w_ours = timed(ours, args.repeats, *common)
        t_score, _ = timed(
            lambda f: [
                f(np.repeat(volume[None], min(settings.batch_size, n_samples - i), 0))
                for i in range(0, n_samples, settings.batch_size)
            ],
            args.repeats,
            fn,
        )
        r = np.corrcoef(w_ours, w_lime)[0, 1] if w_ours.std() > 0 and w_lime.std() > 0 else float("nan")
        rows.append((name, t_ours, t_lime, t_score, r))
    width = max(len(row[0]) for row in rows)
    print(
        f"{'':{width}s} {'ours (s)':>9s} {'lime_image (s)':>15s} {'speed-up':>9s} {'scoring alone (s)':>18s} "
        f"{'weight corr':>12s}"
    )
    for name, t_ours, t_lime, t_score, r in rows:
        corr = f"{r:12.3f}" if r == r else f"{'-':>12s}"
        print(f"{name:{width}s} {t_ours:9.3f} {t_lime:15.3f} {t_lime / t_ours:8.2f}x {t_score:18.3f} {corr}")


def stability_table(volume, labels, score, score_name: str, counts: list[int], settings) -> None:
    from brain3d.interpretability.lime3d import stability

    print(f"{score_name}: {int(labels.max())} supervoxels; stability = Spearman of two seeds' weights")
    print(f"{'samples':>8s} {'stability':>10s} {'seconds':>8s}")
    stable = None
    for n in counts:
        t0 = time.perf_counter()
        a = ours(volume, labels, score, n, settings.batch_size, settings.seed)
        seconds = time.perf_counter() - t0
        b = ours(volume, labels, score, n, settings.batch_size, settings.seed + 1)
        rho = stability(a, b)
        print(f"{n:8d} {rho:10.3f} {seconds:8.2f}")
        if stable is None and rho >= 0.9:
            stable = (n, seconds)
    if stable:
        print(f"one stable explanation (stability >= .9): {stable[0]} samples, {stable[1]:.2f} s")
    else:
        print("no tested count reached stability .9")


if __name__ == "__main__":
    main()
