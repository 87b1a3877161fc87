"""3D LIME promises (brain3d/interpretability): supervoxels tile the brain, LIME finds a planted cause,
batching changes nothing, the faithfulness numbers read right on cases whose answer is known, the
randomised model really is random, and the figures show the three planes the right way round."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from brain3d.interpretability import cases as cases_module
from brain3d.interpretability.cases import LimeSettings, explain_case, pick_cases
from brain3d.interpretability.figures import overlay, save_case_figure, save_contact_sheet
from brain3d.interpretability.lime3d import (
    deletion_auc,
    deletion_curve,
    explain,
    lesion_rank,
    lesion_share,
    perturb,
    supervoxels,
)
from brain3d.interpretability.targets import case_scores, randomised_copy

SMALL = (16, 32, 32)
REPORT = "A mass in the left frontal lobe with surrounding edema."


def brain_like(shape=SMALL, lesion_centre=(0.7, 0.7, 0.25), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """(volume in [0, 1], lesion mask): a textured ellipsoid 'brain' with a bright spherical lesion at the
    given relative (D, H, W) position: by default superior, anterior, on the subject's LEFT (low W)."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    brain = (grid**2).sum(0) <= 0.85**2
    texture = 0.1 * np.sin(5 * grid[0]) * np.cos(4 * grid[1]) + 0.05 * np.sin(7 * grid[2])
    rng = np.random.default_rng(seed)
    volume = np.where(brain, 0.5 + texture + 0.02 * rng.standard_normal(shape), 0.0)
    centre = np.array(lesion_centre) * 2 - 1
    lesion = brain & (np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(0)) < 0.3)
    volume[lesion] = 0.95
    return np.clip(volume, 0.01, 1.0).astype(np.float32) * brain, lesion


@pytest.fixture(scope="module")
def case():
    volume, lesion = brain_like()
    return volume, lesion, supervoxels(volume, 12, 0.05)


# ------------------------------------------------------------------------------------------- supervoxels


@pytest.mark.parametrize("n_segments", [8, 20])
def test_supervoxels_tile_the_brain_in_about_n_segments_connected_pieces(n_segments):
    volume, _ = brain_like()
    labels = supervoxels(volume, n_segments, 0.05)
    assert labels.shape == volume.shape
    assert np.array_equal(labels > 0, volume > 0), "every brain voxel in a supervoxel, nothing outside"
    k = int(labels.max())
    assert n_segments / 2 <= k <= 2 * n_segments, f"{k} supervoxels for n_segments={n_segments}"
    sizes = np.bincount(labels.ravel(), minlength=k + 1)[1:]
    assert (sizes > 0).all(), "labels 1..K must all be used (LIME features index them)"
    for label in range(1, k + 1):
        _, n_parts = ndi.label(labels == label)
        assert n_parts == 1, f"supervoxel {label} is in {n_parts} pieces"


def test_perturb_hides_exactly_the_switched_off_supervoxels(case):
    volume, _, labels = case
    k = int(labels.max())
    keep = np.random.default_rng(1).integers(0, 2, (5, k)).astype(np.float32)
    out = perturb(volume, labels, keep)
    assert out.shape == (5, *volume.shape)
    for b in range(5):
        hidden = np.isin(labels, np.flatnonzero(keep[b] == 0) + 1)
        assert (out[b][hidden] == 0).all()
        assert np.array_equal(out[b][~hidden], volume[~hidden])


# ---------------------------------------------------------------------------------------------- LIME


def test_lime_recovers_planted_attributions_one_explanation_per_column(case):
    """Column 0 depends only on supervoxel a (up), column 1 only on supervoxel b (down)."""
    volume, _, labels = case
    k = int(labels.max())
    a, b = 3, k - 1
    in_a, in_b = labels == a, labels == b

    def score(volumes):
        return np.stack([volumes[:, in_a].mean(1), 2.0 - 3.0 * volumes[:, in_b].mean(1)], axis=1)

    up, down = explain(volume, labels, score, n_samples=64, batch_size=16, seed=0)
    assert int(np.argmax(up.weights)) == a - 1 and up.weights[a - 1] > 0
    others = np.delete(up.weights, a - 1)
    assert np.abs(others).max() < 0.05 * up.weights[a - 1]
    assert int(np.argmin(down.weights)) == b - 1 and down.weights[b - 1] < 0
    assert np.abs(np.delete(down.weights, b - 1)).max() < 0.05 * abs(down.weights[b - 1])
    assert up.r2 > 0.95 and down.r2 > 0.95
    assert up.score == pytest.approx(volume[in_a].mean(), rel=1e-5)  # sample 0 is the intact volume
    assert up.samples.shape == (64, k) and (up.samples[0] == 1).all()
    assert (
        np.allclose(up.voxel_map(labels)[in_a], up.weights[a - 1])
        and (up.voxel_map(labels)[labels == 0] == 0).all()
    )


def test_batched_lime_equals_one_volume_at_a_time(case):
    volume, _, labels = case
    rng = np.random.default_rng(0)
    w = rng.standard_normal(labels.max() + 1)
    calls = []

    def score(volumes):
        calls.append(len(volumes))
        return np.array([(v * w[labels]).sum() for v in volumes])  # per-volume: batching cannot leak

    batched = explain(volume, labels, score, n_samples=40, batch_size=16, seed=5)[0]
    assert calls == [16, 16, 8]
    calls.clear()
    single = explain(volume, labels, score, n_samples=40, batch_size=1, seed=5)[0]
    assert calls == [1] * 40
    assert np.array_equal(batched.samples, single.samples)
    assert np.allclose(batched.sample_scores, single.sample_scores)
    assert np.allclose(batched.weights, single.weights)


# -------------------------------------------------------------------------------------- faithfulness


def test_lesion_share_on_known_attributions(case):
    volume, _, labels = case
    k = int(labels.max())
    lesion_labels = [3, 4]
    lesion = np.isin(labels, lesion_labels)
    brain = labels > 0
    chance = lesion.sum() / brain.sum()
    only_lesion = np.zeros(k)
    only_lesion[np.array(lesion_labels) - 1] = [0.5, 2.0]
    only_lesion[0] = -5.0  # negative attribution never counts
    assert lesion_share(labels, only_lesion, lesion) == pytest.approx((1.0, chance))
    uniform = np.ones(k)
    assert lesion_share(labels, uniform, lesion)[0] == pytest.approx(chance)  # no information = chance
    outside = np.ones(k)
    outside[np.array(lesion_labels) - 1] = 0.0
    assert lesion_share(labels, outside, lesion)[0] == 0.0
    assert lesion_share(labels, -np.ones(k), lesion) == pytest.approx((0.0, chance))  # nothing positive
    # a lesion reaching outside the brain: chance counts brain voxels only
    assert lesion_share(labels, uniform, lesion | (labels == 0))[1] == pytest.approx(chance)


def test_lesion_rank_is_the_rank_of_the_supervoxel_holding_most_of_the_lesion(case):
    _, _, labels = case
    k = int(labels.max())
    lesion = (labels == 4) | (
        (labels == 3) & (np.cumsum(labels == 3).reshape(labels.shape) <= 1)
    )  # 4 + a voxel of 3
    weights = np.linspace(1.0, 0.0, k)  # supervoxel 1 ranks first, k last
    assert lesion_rank(labels, weights, lesion) == 4
    weights[3] = 2.0
    assert lesion_rank(labels, weights, lesion) == 1
    weights[3] = -1.0
    assert lesion_rank(labels, weights, lesion) == k
    with pytest.raises(ValueError, match="outside every supervoxel"):
        lesion_rank(labels, weights, labels == 0)


def test_deletion_curve_falls_fastest_in_the_order_that_explains_the_score(case):
    volume, lesion, labels = case
    k = int(labels.max())

    def score(volumes):  # lesion signal left in the volume
        return volumes[:, lesion].sum(1)

    per_label = np.array([volume[lesion & (labels == i)].sum() for i in range(1, k + 1)])
    best = np.argsort(-per_label)
    curve = deletion_curve(volume, labels, best, score, steps=4)
    assert curve.shape == (5, 1)
    assert curve[0, 0] == pytest.approx(volume[lesion].sum(), rel=1e-5)
    expected = volume[lesion].sum() - np.concatenate([[0], np.cumsum(per_label[best[:4]])])
    assert np.allclose(curve[:, 0], expected, rtol=1e-4, atol=1e-3)
    assert (np.diff(curve[:, 0]) <= 1e-4).all()
    assert np.allclose(deletion_curve(volume, labels, best, score)[-1], 0.0, atol=1e-3)  # all hidden
    worst = best[::-1]
    assert deletion_auc(curve[:, 0]) > deletion_auc(deletion_curve(volume, labels, worst, score, 4)[:, 0])
    assert deletion_auc(np.array([3.0])) == 0.0
    assert deletion_auc(np.array([3.0, 2.0, 0.0])) == pytest.approx(2.0)


def test_explain_case_faithfulness_rows_on_a_case_with_a_known_answer(monkeypatch):
    """A 'model' whose report score is the lesion signal and whose side score ignores the image: the
    report attribution concentrates on the lesion (far above chance: a supervoxel is larger than the small
    lesion, so the share cannot reach 1) and beats random deletion; a randomised model that only looks at
    a corner of the brain puts none of its positive mass there."""
    volume, lesion = brain_like()
    seg = lesion.astype(np.uint8) * 2
    corner = (volume > 0) & (np.indices(volume.shape)[2] > 24)

    def fake_scores(model, report, with_side):
        def score(volumes):
            signal = volumes[:, lesion].mean(1) if model == "trained" else volumes[:, corner].mean(1)
            return np.stack([signal, np.full(len(volumes), 0.3)], 1) if with_side else signal[:, None]

        return (["report", "side"] if with_side else ["report"]), score

    monkeypatch.setattr(cases_module, "case_scores", fake_scores)
    settings = LimeSettings(
        n_segments=12, compactness=0.05, n_samples=48, batch_size=16, deletion_steps=4, seed=42
    )
    result = explain_case("trained", volume, REPORT, settings, seg=seg, with_side=True, randomised="random")
    assert set(result.explanations) == {"report", "side"}
    rows = {(r["model"], r["target"]): r for r in result.rows}
    assert set(rows) == {
        ("trained", "report"),
        ("trained", "side"),
        ("randomised", "report"),
        ("randomised", "side"),
    }
    trained = rows[("trained", "report")]
    assert trained["lesion_share"] > 4 * trained["lesion_chance"]
    assert trained["lesion_chance"] == pytest.approx(lesion.sum() / (volume > 0).sum())
    assert trained["deletion_drop"] > trained["deletion_drop_random_order"] >= 0  # hiding only removes signal
    assert trained["r2"] > 0.9
    assert rows[("randomised", "report")]["lesion_share"] < trained["lesion_chance"]
    assert trained["lesion_rank"] == 1 and trained["lesion_top1"] == 1.0
    assert rows[("randomised", "report")]["lesion_rank"] > 1
    assert rows[("trained", "side")]["deletion_drop"] == pytest.approx(0.0, abs=1e-9)  # constant score
    assert np.abs(result.explanations["side"].weights).max() < 1e-9
    # the trained model's rows say how two LIME seeds agree (here one supervoxel carries all the signal, so the
    # others' order is noise); the randomised model's rows carry none
    assert -1 <= trained["stability"] <= 1 and "stability" not in rows[("randomised", "report")]


def test_stability_is_the_rank_correlation_of_two_seeds_and_grows_with_samples():
    """Every supervoxel matters, each by a different amount: two seeds agree on the order, better with more
    samples."""
    from brain3d.interpretability.lime3d import explain, stability, supervoxels

    a = np.array([0.1, 0.5, -0.2, 0.9])
    assert stability(a, 2 * a + 1) == pytest.approx(1.0) and stability(a, -a) == pytest.approx(-1.0)
    volume, _ = brain_like()
    labels = supervoxels(volume, 12, 0.05)
    k = int(labels.max())
    means = lambda v: np.stack([v[:, labels == j + 1].mean(1) for j in range(k)], 1)  # noqa: E731
    score = lambda v: (means(v) @ np.linspace(-1, 1, k))[:, None]  # noqa: E731

    def agree(n):
        runs = [explain(volume, labels, score, n_samples=n, batch_size=16, seed=s)[0].weights for s in (1, 2)]
        return stability(*runs)

    few, many = agree(16), agree(128)
    assert many > 0.95 and many >= few


def test_pick_cases_is_deterministic_per_laterality_class():
    import pandas as pd

    test = pd.DataFrame(
        {
            "subject": [f"s{i:02d}" for i in range(12)],
            "cohort": ["tumour"] * 9 + ["healthy"] * 3,
            "laterality": ["right", "left", "bilateral"] * 3 + ["none"] * 3,
        }
    ).sample(frac=1, random_state=0)
    assert pick_cases(test, 2) == ["s01", "s04", "s00", "s03", "s02", "s05", "s09"]
    assert pick_cases(test, 1) == ["s01", "s00", "s02", "s09"]


def test_settings_from_params_ignore_other_keys_and_need_every_field():
    section = {
        "per_class": 2,
        "n_segments": 7,
        "compactness": 0.1,
        "n_samples": 9,
        "batch_size": 4,
        "deletion_steps": 3,
        "seed": 1,
    }
    s = LimeSettings.from_params(section)
    assert (s.n_segments, s.n_samples, s.compactness) == (7, 9, 0.1)
    with pytest.raises(ValueError, match="params: missing compactness"):
        LimeSettings.from_params({k: v for k, v in section.items() if k != "compactness"})


# -------------------------------------------------------------------------- the real (tiny) Brain3D


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from brain3d.models.model import Brain3D

    torch.manual_seed(0)
    return Brain3D.from_pretrained(tiny_model_dir, "cpu")


@pytest.fixture(scope="module")
def demo_case(model):
    volume, lesion = brain_like(model.visual.encoder.volume_shape)
    return volume, lesion, supervoxels(volume, 8, 0.05)


def test_model_scores_of_a_batch_equal_one_volume_at_a_time(model, demo_case):
    volume, _, labels = demo_case
    names, score = case_scores(model, REPORT, with_side=True)
    assert names == ["report", "side"]
    keep = np.random.default_rng(0).integers(0, 2, (3, labels.max())).astype(np.float32)
    volumes = perturb(volume, labels, keep)
    batched = score(volumes)
    assert batched.shape == (3, 2) and np.isfinite(batched).all()
    single = np.concatenate([score(volumes[i : i + 1]) for i in range(3)])
    assert np.allclose(batched, single, atol=1e-4)
    with torch.no_grad():  # the side column is the log-odds of the stated side vs the swapped one
        z = model.visual(torch.from_numpy(volumes[:1])[:, None])
        right = REPORT.replace("left", "right")
        expected = (model.log_likelihood(z, [REPORT]) - model.log_likelihood(z, [right])).item()
    assert batched[0, 1] == pytest.approx(expected, abs=1e-4)
    assert batched[0, 0] < 0  # a mean log-likelihood
    assert not np.allclose(batched[:, 0], batched[0, 0]), "hiding supervoxels must move the score"


def test_randomised_copy_rerandomises_the_image_path_and_leaves_the_model_alone(model, demo_case):
    volume, _, _ = demo_case
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    score_before = case_scores(model, REPORT, False)[1](volume[None])
    clone = randomised_copy(model, seed=0)
    after = dict(model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before), "the trained model was modified"
    assert np.allclose(case_scores(model, REPORT, False)[1](volume[None]), score_before)

    trained_visual = dict(model.visual.named_parameters())
    random_visual = dict(clone.visual.named_parameters())
    assert random_visual.keys() == trained_visual.keys()
    changed = [n for n, p in random_visual.items() if p.dim() >= 2 and not torch.equal(p, trained_visual[n])]
    matrices = [n for n, p in random_visual.items() if p.dim() >= 2]
    assert changed == matrices, f"not re-initialised: {sorted(set(matrices) - set(changed))}"
    assert not torch.equal(clone.visual.encoder.pos.depth, model.visual.encoder.pos.depth)
    assert not torch.equal(clone.projector.fc1.weight, model.projector.fc1.weight)
    assert clone.projector.vis_scale.item() == model.projector.vis_scale.item()
    assert clone.lm is model.lm, "the language model (and its LoRA) is shared, not re-initialised"
    assert not np.allclose(case_scores(clone, REPORT, False)[1](volume[None]), score_before, atol=1e-4)
    again = randomised_copy(model, seed=0)
    assert all(torch.equal(p, dict(again.visual.named_parameters())[n]) for n, p in random_visual.items())


def test_explain_case_with_the_tiny_model_gives_every_row(model, demo_case):
    volume, lesion, _ = demo_case
    settings = LimeSettings(
        n_segments=8, compactness=0.05, n_samples=8, batch_size=8, deletion_steps=3, seed=42
    )
    result = explain_case(
        model,
        volume,
        REPORT,
        settings,
        seg=lesion.astype(np.uint8),
        with_side=True,
        randomised=randomised_copy(model, seed=0),
    )
    assert result.labels.shape == volume.shape
    assert len(result.rows) == 4
    for row in result.rows:
        assert {"lesion_share", "lesion_chance", "deletion_drop", "deletion_drop_random_order"} <= row.keys()
        assert all(np.isfinite(v) for k, v in row.items() if k not in ("model", "target"))
    exp = result.explanations["report"]
    assert exp.weights.shape == (result.labels.max(),) and np.abs(exp.weights).sum() > 0


# ------------------------------------------------------------------------------------------- figures


def _axes_images(volume, attribution, seg):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3)
    overlay(axes, volume, attribution, seg, "case")
    out = [
        (ax.get_title(), [np.asarray(im.get_array()) for im in ax.images], len(ax.collections)) for ax in axes
    ]
    plt.close(fig)
    return out


def test_overlay_draws_three_planes_in_radiological_orientation():
    """Lesion and attribution superior, anterior, on the subject's LEFT: shown up, anterior up/left, and
    on the viewer's RIGHT in axial and coronal (radiological convention)."""
    volume, lesion = brain_like()
    attribution = np.where(lesion, 1.0, 0.0) - 0.2 * ((volume > 0) & ~lesion)
    (t_ax, ims_ax, c_ax), (t_co, ims_co, c_co), (t_sa, ims_sa, c_sa) = _axes_images(
        volume, attribution, lesion
    )
    assert "axial" in t_ax and t_co == "coronal" and t_sa == "sagittal"
    assert all(len(ims) == 2 for ims in (ims_ax, ims_co, ims_sa))  # grey volume + attribution overlay
    assert min(c_ax, c_co, c_sa) >= 1  # the true lesion is outlined

    def centre(image):
        return np.argwhere(np.asarray(image) > 0.5).mean(0) / np.array(image.shape)

    row, col = centre(ims_ax[1])
    assert col > 0.55 and row < 0.45, "axial: subject's left on the viewer's right, anterior up"
    row, col = centre(ims_co[1])
    assert col > 0.55 and row < 0.45, "coronal: subject's left on the viewer's right, superior up"
    row, col = centre(ims_sa[1])
    assert col < 0.45 and row < 0.45, "sagittal: anterior on the left, superior up"
    assert ims_ax[1].max() == pytest.approx(1.0) and ims_ax[1].min() == pytest.approx(-0.2)


def test_figures_are_pngs(tmp_path):
    import matplotlib.image as mpimg

    volume, lesion = brain_like()
    attribution = np.where(lesion, 1.0, 0.0).astype(np.float32)
    path = tmp_path / "fig" / "case.png"
    save_case_figure(path, volume, attribution, lesion.astype(np.uint8), "case")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = mpimg.imread(path)
    assert image.shape[1] > 2.5 * image.shape[0]  # three planes side by side
    assert image[..., :3].std() > 0.05  # not blank
    save_case_figure(tmp_path / "no_seg.png", volume, -attribution, None, "all negative")  # no lesion known
    sheet = tmp_path / "sheet.png"
    save_contact_sheet(sheet, [("a", volume, attribution, lesion), ("b", volume, attribution, None)])
    rows = mpimg.imread(sheet)
    assert rows.shape[0] > rows.shape[1] * 0.5  # two rows of three planes
    assert not list(tmp_path.glob("**/*.tmp*")), "atomic writes leave no temporaries"
