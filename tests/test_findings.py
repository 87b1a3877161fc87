"""Findings-grounded phase 1: the report -> findings targets (negation-aware, from text only), the side target
that swaps with the mirrored volume, the paper's loss at findings_weight 0, and a side head that learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import model_config

from brain3d.data.findings import (
    ANATOMY,
    PATHOLOGY,
    SIDES,
    UNDEFINED_SIDE,
    findings_targets,
    mirror_side,
    named_hemispheres,
)
from brain3d.data.reports import HEALTHY_TEMPLATES, swap_laterality
from brain3d.data.split import SplitSubjects
from brain3d.data.views import mirror
from brain3d.training import phases
from brain3d.training.losses import InfoNCE

TEMPERATURE = 0.07  # a test value (the pipeline's is phase1.temperature)
LEFT, RIGHT, BILATERAL, NONE = (SIDES.index(s) for s in ("left", "right", "bilateral", "none"))


def _named(values: tuple[int, ...], keywords: tuple[str, ...]) -> set[str]:
    return {k for k, v in zip(keywords, values) if v}


def test_targets_follow_what_the_report_asserts():
    f = findings_targets(
        "A mass is seen in the left frontal lobe with surrounding edema. No necrosis is seen. "
        "There is no obvious enhancement."
    )
    assert (f.presence, f.side) == (1, LEFT)
    assert _named(f.pathology, PATHOLOGY) == {"mass", "edema"}  # necrosis and enhancement are negated
    assert _named(f.anatomy, ANATOMY) == {"frontal"}
    # a negated side is no side: only the asserted one counts
    assert (
        findings_targets(
            "No lesion in the right hemisphere. A lesion is present in the left temporal lobe."
        ).side
        == LEFT
    )
    assert findings_targets("Bilateral lesion in the parietal lobes with edema.").side == BILATERAL
    assert (
        findings_targets(
            "Lesions are seen in both hemispheres, in the left frontal lobe and in the right "
            "occipital lobe, with edema."
        ).side
        == BILATERAL
    )
    assert findings_targets("A lesion is seen in the midline at the corpus callosum.").side == UNDEFINED_SIDE


@pytest.mark.parametrize(
    "report, named",
    [
        ("Bilateral lesion with edema.", set()),  # bilateral, but no hemisphere named
        ("Lesions in the left frontal and right parietal lobes.", {"left", "right"}),
        ("A left frontal mass compressing the right lateral ventricle.", {"left", "right"}),
        ("A mass in the left frontal lobe; no lesion in the right hemisphere.", {"left"}),
        (HEALTHY_TEMPLATES[0], set()),
    ],
)
def test_the_hemispheres_a_report_names_drop_negated_mentions(report, named):
    assert named_hemispheres(report) == named


@pytest.mark.parametrize("report", HEALTHY_TEMPLATES)
def test_a_healthy_report_is_absent_with_no_side(report):
    f = findings_targets(report)
    assert (f.presence, f.side) == (0, NONE)
    assert not any(f.pathology) and not any(f.anatomy)


@pytest.mark.parametrize(
    "report",
    [
        "A mass in the left frontal lobe.",
        "A lesion in the Right parietal lobe.",
        "Bilateral lesion with edema.",
        "A lesion in the corpus callosum.",
        HEALTHY_TEMPLATES[0],
    ],
)
def test_mirroring_swaps_the_side_target_as_the_report_swap_does(report):
    assert mirror_side(findings_targets(report).side) == findings_targets(swap_laterality(report)).side


def _blob_volume(side: str | None, rng: np.random.Generator, shape=(8, 32, 32)) -> np.ndarray:
    """A dim 'brain' with a bright blob in the left (low W) or right (high W) half, or none."""
    v = np.zeros(shape, np.float32)
    v[1:-1, 4:-4, 4:-4] = 0.3 + 0.05 * rng.standard_normal((shape[0] - 2, shape[1] - 8, shape[2] - 8))
    if side is not None:  # a 4 x 8 x 8 blob, wholly inside its half
        z, y, x = (
            int(rng.integers(1, shape[0] - 5)),
            int(rng.integers(4, shape[1] - 12)),
            int(rng.integers(4, 8)),
        )
        x = x if side == "left" else shape[2] - x - 8
        v[z : z + 4, y : y + 8, x : x + 8] = 1.0
    return v


REPORTS = {
    "left": "A lesion with edema is seen in the left frontal lobe.",
    "right": "A lesion with edema is seen in the right frontal lobe.",
    "bilateral": "Lesions with edema are seen in both frontal lobes, left and right.",
    None: HEALTHY_TEMPLATES[0],
}


def _cohort(tmp_path, name: str, sides: list, seed: int) -> SplitSubjects:
    rng = np.random.default_rng(seed)
    folder = tmp_path / name
    folder.mkdir()
    subjects = [f"{name}{i:03d}" for i in range(len(sides))]
    for sid, side in zip(subjects, sides):
        np.save(folder / f"{sid}.npy", _blob_volume(side, rng))
    return SplitSubjects(subjects, [REPORTS[s] for s in sides], folder)


def test_a_flipped_sample_mirrors_volume_text_and_side_together(tmp_path):
    cohort = _cohort(tmp_path, "flip", ["left", "right", None], seed=0)
    text, flip_text = torch.zeros(3, 4), torch.ones(3, 4)
    targets = phases.findings_tensors(cohort.reports)
    data = phases._Phase1Data(cohort, text, flip_text, targets)
    seen = set()
    torch.manual_seed(0)
    for _ in range(20):
        for i in range(len(cohort)):
            volume, t, target = data[i]
            flipped = bool(t[0] == 1)
            original = torch.from_numpy(cohort.volume(i))
            assert torch.equal(volume[0], mirror(original) if flipped else original)
            want = mirror_side(int(targets["side"][i])) if flipped else int(targets["side"][i])
            assert int(target["side"]) == want
            assert torch.equal(target["pathology"], targets["pathology"][i])
            seen.add((i, flipped))
    assert len(seen) == 6  # both outcomes happened for every sample
    # the flip draws the same random numbers with or without findings targets (weight 0 keeps the paper's RNG)
    plain = phases._Phase1Data(cohort, text, flip_text)
    torch.manual_seed(3)
    a = [float(data[i][1][0]) for i in range(3) for _ in range(5)]
    torch.manual_seed(3)
    b = [float(plain[i][1][0]) for i in range(3) for _ in range(5)]
    assert a == b


class _Tokens(torch.nn.Module):
    """A stand-in visual tokenizer: (B, 1, D, H, W) -> (B, K=4, Cv=6), position-dependent."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 6)
        self.compressor = type("C", (), {"n_tokens": 4})()
        self.width = 6

    def forward(self, volume):
        cells = torch.nn.functional.adaptive_avg_pool3d(volume, (4, 2, 2))  # (B, 1, 4, 2, 2)
        return self.proj(cells.reshape(volume.shape[0], 4, 4))  # (B, 4, 4) -> (B, 4, 6)


def test_weight_zero_is_the_papers_infonce_and_the_parts_add_up():
    torch.manual_seed(0)
    volume, text = torch.randn(5, 1, 8, 8, 8), torch.randn(5, 12)
    reports = [
        REPORTS["left"],
        REPORTS["right"],
        REPORTS[None],
        REPORTS["left"],
        "A lesion in the corpus callosum.",
    ]
    plain = phases.ContrastiveModel(_Tokens(), 12)
    assert plain.findings is None
    want = InfoNCE(TEMPERATURE)(plain.head(plain.visual(volume).mean(dim=1)), text)
    got = phases.phase1_loss(InfoNCE(TEMPERATURE), 0.0)(plain, (volume, text))
    assert isinstance(got, torch.Tensor) and torch.equal(got, want)

    model = phases.ContrastiveModel(_Tokens(), 12, findings=True)
    model.visual.load_state_dict(plain.visual.state_dict())
    model.head.load_state_dict(plain.head.state_dict())
    total, parts = phases.phase1_loss(InfoNCE(TEMPERATURE), 2.5)(
        model, (volume, text, phases.findings_tensors(reports))
    )
    assert torch.equal(parts["infonce"], want)
    findings = sum(parts[f"findings_{k}"] for k in ("side", "presence", "anatomy", "pathology"))
    assert float(total.detach()) == pytest.approx(float(want.detach() + 2.5 * findings), rel=1e-6)
    assert all(float(parts[f"findings_{k}"]) > 0 for k in ("side", "presence", "anatomy", "pathology"))


def test_corpus_rows_teach_presence_and_side_and_leave_infonce_anatomy_pathology_alone():
    torch.manual_seed(0)
    reports = [REPORTS["left"], REPORTS["right"], REPORTS[None]]
    volumes = np.random.default_rng(0).random((4, 8, 8, 8), dtype=np.float32)
    corpus = phases._CorpusFindings(list(volumes[3:]), [BILATERAL], width=12, flip=True)
    seen = set()
    for _ in range(20):
        volume, text, target = corpus[0]
        flipped = not torch.equal(volume[0], torch.from_numpy(volumes[3]))
        assert flipped <= torch.equal(volume[0], mirror(torch.from_numpy(volumes[3])))
        assert int(target["side"]) == BILATERAL and float(target["presence"]) == 1
        assert float(target["paired"]) == 0
        assert not text.any()
        seen.add(flipped)
    assert seen == {True, False}
    assert int(phases._CorpusFindings([volumes[0]], [LEFT], 12, flip=False)[0][2]["side"]) == LEFT
    assert float(phases._CorpusFindings([volumes[0]], [NONE], 12, flip=False)[0][2]["presence"]) == 0

    model = phases.ContrastiveModel(_Tokens(), 12, findings=True)
    text = torch.randn(3, 12)
    paired = phases.findings_tensors(reports) | {"paired": torch.ones(3)}
    row = phases._collate_phase1(
        [
            (torch.from_numpy(v)[None], text[i], {k: t[i] for k, t in paired.items()})
            for i, v in enumerate(volumes[:3])
        ]
    )
    mixed = phases._collate_phase1(
        [*[(row[0][i], row[1][i], {k: t[i] for k, t in row[2].items()}) for i in range(3)], corpus[0]]
    )
    loss = phases.phase1_loss(InfoNCE(TEMPERATURE), 1.0)
    _, alone = loss(model, row)
    _, both = loss(model, mixed)
    # the corpus row has no report for InfoNCE, anatomy or pathology to read; it carries presence and side
    for k in ("infonce", "findings_anatomy", "findings_pathology"):
        assert float(both[k]) == pytest.approx(float(alone[k]), rel=1e-5)
    for k in ("findings_side", "findings_presence"):
        assert float(both[k]) != pytest.approx(float(alone[k]), rel=1e-5)


def test_side_head_beats_chance_on_held_out_volumes(tmp_path, tiny_siglip_dir, tiny_gemma3_dir):
    from brain3d.models.backbones import load_language_model, load_vision_model
    from brain3d.models.model import VisualTokenizer
    from brain3d.training.loop import TrainConfig

    torch.manual_seed(0)
    cfg = model_config(volume_shape=(8, 32, 32), n_tokens=8, grid=(2, 2, 2), prompt="")
    visual = VisualTokenizer(load_vision_model(tiny_siglip_dir), cfg)
    lm = load_language_model(tiny_gemma3_dir)
    train = _cohort(tmp_path, "train", ["left", "right"] * 10 + [None] * 4, seed=1)
    val = _cohort(tmp_path, "val", ["left", "right", None, "left", "right", None], seed=2)
    test_sides = ["left", "right"] * 8 + [None] * 4
    test = _cohort(tmp_path, "test", test_sides, seed=3)
    train_cfg = TrainConfig(
        epochs=8, batch_size=8, lr=1e-2, grad_accum=1, weight_decay=0.01, warmup_frac=0.1, patience=8, seed=0
    )
    model, result = phases.train_phase1(
        visual,
        lm,
        train,
        val,
        train_cfg,
        temperature=TEMPERATURE,
        laterality_flip=True,
        findings_weight=1.0,
        state_dir=tmp_path / "state",
    )
    assert {"train_findings_side", "val_findings_side", "val_infonce"} <= set(result.history[0])
    model.eval()
    with torch.no_grad():
        x = torch.from_numpy(np.stack([test.volume(i) for i in range(len(test))]))[:, None]
        predicted = model.findings(model.visual(x))["side"].argmax(dim=1)
    truth = torch.tensor([SIDES.index(s or "none") for s in test_sides])
    accuracy = float((predicted == truth).float().mean())
    assert accuracy >= 0.85, f"side accuracy {accuracy:.2f} on held-out volumes (chance 0.40)"


def test_balanced_side_weights_give_each_side_class_the_same_total():

    left, right, both = (SIDES.index(s) for s in ("left", "right", "bilateral"))
    side = torch.tensor([left] * 6 + [right] * 3 + [both] + [UNDEFINED_SIDE] * 2)
    w = phases.balanced_side_weights(side)
    totals = {c: float(w[c]) * int((side == c).sum()) for c in (left, right, both)}
    assert (
        totals[left] == pytest.approx(totals[right]) == pytest.approx(totals[both]) == pytest.approx(10 / 3)
    )
    assert float(w[SIDES.index("none")]) == 0  # absent from these targets

    logits = {"side": torch.randn(len(side), len(SIDES)), "presence": torch.zeros(len(side), 1)}
    logits |= {k: torch.zeros(len(side), 7) for k in ("anatomy", "pathology")}
    targets = {"side": side, "presence": torch.ones(len(side)), "anatomy": torch.zeros(len(side), 7)}
    targets["pathology"] = torch.zeros(len(side), 7)
    plain = phases.findings_loss(logits, targets)["side"]
    ok = side != UNDEFINED_SIDE
    assert float(plain) == pytest.approx(float(F.cross_entropy(logits["side"][ok], side[ok])))
    weighted = phases.findings_loss(logits, targets, w)["side"]
    want = F.cross_entropy(logits["side"][ok], side[ok], weight=w)  # torch's weighted mean
    assert float(weighted) == pytest.approx(float(want)) and float(weighted) != pytest.approx(float(plain))


def test_the_side_refit_learns_sides_from_mirrors_and_moves_only_the_side_rows(tmp_path, tiny_siglip_dir):
    from brain3d.models.backbones import load_vision_model
    from brain3d.models.findings_head import FindingsHead
    from brain3d.models.model import VisualTokenizer

    torch.manual_seed(0)
    cfg = model_config(volume_shape=(8, 32, 32), n_tokens=8, grid=(2, 2, 2), prompt="")
    visual = VisualTokenizer(load_vision_model(tiny_siglip_dir), cfg).eval()
    head = FindingsHead(8, visual.width)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    # every training lesion is on the left: the right side is learnt from the mirrored copies alone
    train_sides = ["left"] * 16 + [None] * 4
    train = _cohort(tmp_path, "train", train_sides, seed=1)
    stats = phases.refit_side(
        head,
        visual,
        [train.volume(i) for i in range(len(train))],
        [SIDES.index(s or "none") for s in train_sides],
        epochs=60,
        lr=1e-2,
        seed=0,
    )
    assert set(stats) == {"side_refit_acc_left", "side_refit_acc_right", "side_refit_acc_none"}
    test_sides = ["left", "right"] * 8 + [None] * 4
    test = _cohort(tmp_path, "test", test_sides, seed=3)
    with torch.no_grad():
        tokens = visual.encode([test.volume(i) for i in range(len(test))])
        predicted = head(tokens)["side"].argmax(dim=1)
    truth = torch.tensor([SIDES.index(s or "none") for s in test_sides])
    right = truth == SIDES.index("right")
    assert float((predicted == truth).float().mean()) >= 0.85
    assert float((predicted[right] == truth[right]).float().mean()) >= 0.75  # never seen unmirrored
    rows = slice(1, 1 + len(SIDES))
    after = head.state_dict()
    assert not torch.equal(after["linear.weight"][rows], before["linear.weight"][rows])
    keep = torch.ones(len(before["linear.bias"]), dtype=torch.bool)
    keep[rows] = False
    assert torch.equal(after["linear.weight"][keep], before["linear.weight"][keep])
    assert torch.equal(after["linear.bias"][keep], before["linear.bias"][keep])
    assert torch.equal(after["norm.weight"], before["norm.weight"])


def test_cell_fractions_are_the_lesion_share_of_each_token_region_as_the_encoder_sees_it(tiny_siglip_dir):
    from brain3d.models.backbones import load_vision_model
    from brain3d.models.model import VisualTokenizer

    cfg = model_config(volume_shape=(8, 32, 32), n_tokens=8, grid=(2, 2, 2), prompt="")
    visual = VisualTokenizer(load_vision_model(tiny_siglip_dir), cfg)
    mask = torch.zeros(1, 8, 32, 32)
    mask[0, :, :16, :16] = 1  # every slice, the first half of H and of W: one quarter of the volume
    cells = visual.cell_fractions(mask).reshape(2, 2, 2)  # (z, y, x) token grid
    # the paper variant feeds radiological slices (H and W flipped): the lesion lands in the last row and column
    assert torch.allclose(cells[:, 1, 1], torch.ones(2)) and float(cells.sum()) == pytest.approx(2.0)
    mirrored = visual.cell_fractions(mirror(mask)).reshape(2, 2, 2)
    assert torch.equal(mirrored, cells.flip(-1))  # a mirrored volume moves its lesion to the other column
    assert not visual.cell_fractions(torch.zeros(1, 8, 32, 32)).any()
    perceiver = VisualTokenizer(
        load_vision_model(tiny_siglip_dir),
        model_config(compressor="perceiver", **{"volume_shape": (8, 32, 32), "n_tokens": 8, "prompt": ""}),
    )
    with pytest.raises(ValueError, match="perceiver"):
        perceiver.cell_fractions(mask)


def test_cell_targets_come_with_corpus_rows_only_and_flip_with_the_volume(tmp_path):
    torch.manual_seed(0)
    paired = _cohort(tmp_path, "paired", ["left", "right", None], seed=0)
    volume = paired.volume(0)
    as_is, mirrored = torch.tensor([[0.0, 0.02, 0.0, 0.005]]), torch.tensor([[0.02, 0.0, 0.005, 0.0]])
    corpus = phases._CorpusFindings([volume], [LEFT], 12, flip=True, cells=(as_is, mirrored))
    for _ in range(20):
        got, _, target = corpus[0]
        flipped = not torch.equal(got[0], torch.from_numpy(volume))
        assert (
            torch.equal(target["cells"], (mirrored if flipped else as_is)[0]) and float(target["celled"]) == 1
        )
        assert int(target["side"]) == (mirror_side(LEFT) if flipped else LEFT)

    findings = phases.findings_tensors(paired.reports)
    paired_set = phases._Phase1Data(paired, torch.randn(3, 12), None, findings, n_cells=4)
    assert float(paired_set[0][2]["celled"]) == 0 and not paired_set[0][2]["cells"].any()
    model = phases.ContrastiveModel(_Tokens(), 12, findings=True, cells=True)
    loss = phases.phase1_loss(InfoNCE(TEMPERATURE), 1.0, cell_weight=2.0)
    batch = phases._collate_phase1([paired_set[i] for i in range(3)] + [corpus[0]])
    _, parts = loss(model, batch)
    _, logits = model(batch[0])
    want = 2.0 * F.binary_cross_entropy_with_logits(
        logits["cells"][3:], (batch[2]["cells"][3:] / 0.01).clamp(max=1)
    )
    assert (
        float(parts["findings_cells"]) == pytest.approx(float(want.detach()), rel=1e-5)
        and float(want.detach()) > 0
    )
    _, without = phases.phase1_loss(InfoNCE(TEMPERATURE), 1.0, cell_weight=2.0)(
        model, phases._collate_phase1([paired_set[i] for i in range(3)] + [paired_set[0]])
    )
    assert float(without["findings_cells"]) == 0  # paired rows carry no cell targets


def test_phase1_draws_bilateral_rows_more_often_and_refuses_bad_weights(tmp_path, monkeypatch):
    seen = {}

    def fake_fit(model, params, loss_fn, train_set, val_set, collate, cfg, **kw):
        seen.update(kw, train=train_set)
        return None

    monkeypatch.setattr(phases, "fit", fake_fit)
    monkeypatch.setattr(phases, "text_embeddings", lambda lm, reports: torch.zeros(len(reports), 12))
    lm = type("LM", (), {"full": torch.nn.Linear(1, 1), "hidden_size": 12})()
    train = _cohort(tmp_path, "train", ["left", "bilateral", None], seed=1)
    val = _cohort(tmp_path, "val", ["left", None], seed=2)
    cfg = type("Cfg", (), {"batch_size": 2, "lr": 1e-3})()
    corpus = ([np.zeros((8, 8, 8), np.float32)] * 2, [BILATERAL, NONE])
    segs = [np.zeros((8, 8, 8), np.uint8), np.ones((8, 8, 8), np.uint8)]
    kw = dict(temperature=TEMPERATURE, laterality_flip=False, findings_weight=1.0, state_dir=tmp_path)
    monkeypatch.setattr(
        _Tokens,
        "cell_fractions",
        lambda self, m: m.float().mean((1, 2, 3))[:, None].repeat(1, 4),
        raising=False,
    )
    phases.train_phase1(
        _Tokens(),
        lm,
        train,
        val,
        cfg,
        corpus=corpus,
        corpus_segs=segs,
        bilateral_weight=3.0,
        cell_weight=1.0,
        **kw,
    )
    assert seen["sample_weights"] == [
        1.0,
        3.0,
        1.0,
        3.0,
        1.0,
    ]  # train left, bilateral, none; corpus bil, none
    assert [float(seen["train"][i][2]["celled"]) for i in range(5)] == [0, 0, 0, 1, 1]
    phases.train_phase1(_Tokens(), lm, train, val, cfg, corpus=corpus, **kw)
    assert seen["sample_weights"] is None and "celled" not in seen["train"][0][2]
    for bad in ({"bilateral_weight": 0.0}, {"cell_weight": -1.0}):
        with pytest.raises(ValueError, match="bilateral_weight"):
            phases.train_phase1(_Tokens(), lm, train, val, cfg, **kw, **bad)
    with pytest.raises(ValueError, match="findings_weight"):
        phases.train_phase1(
            _Tokens(), lm, train, val, cfg, **{**kw, "findings_weight": 0.0}, bilateral_weight=2.0
        )
