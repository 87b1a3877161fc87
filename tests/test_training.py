"""Training promises: InfoNCE really trains at batch >= 2, the loop resumes exactly after an interruption."""

import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from brain3d.training.loop import CHECKPOINT, TrainConfig, fit, read_checkpoint
from brain3d.training.losses import InfoNCE

TEMPERATURE = 0.07  # a test value (the pipeline's is phase1.temperature)


def test_infonce_refuses_a_batch_of_one():
    with pytest.raises(ValueError, match="at least 2"):
        InfoNCE(TEMPERATURE)(torch.randn(1, 8), torch.randn(1, 8))


def test_infonce_prefers_matched_pairs():
    torch.manual_seed(0)
    text = torch.randn(6, 16)
    matched = InfoNCE(TEMPERATURE)(text + 0.01 * torch.randn(6, 16), text)
    shuffled = InfoNCE(TEMPERATURE)(text[torch.tensor([1, 2, 3, 4, 5, 0])], text)
    assert matched < 0.05 < shuffled


def _problem():
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    return TensorDataset(x[:48], y[:48]), TensorDataset(x[48:], y[48:])


def _collate(items):
    xs, ys = zip(*items)
    return torch.stack(xs), torch.stack(ys)


def _train(state_dir, fail_at_epoch=None, epochs=4):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.1), nn.Linear(8, 1))
    calls = {"epoch_batches": 0}

    def loss_fn(m, batch):
        x, y = batch
        calls["epoch_batches"] += int(m.training)
        if m.training and fail_at_epoch is not None and calls["epoch_batches"] > (fail_at_epoch - 1) * 6:
            raise KeyboardInterrupt
        return nn.functional.mse_loss(m(x), y)

    cfg = TrainConfig(
        epochs=epochs,
        batch_size=8,
        lr=0.05,
        grad_accum=1,
        weight_decay=0.01,
        warmup_frac=0.25,
        patience=10,
        seed=42,
    )
    train, val = _problem()
    result = fit(
        model,
        [{"params": list(model.parameters()), "lr": cfg.lr}],
        loss_fn,
        train,
        val,
        _collate,
        cfg,
        state_dir=state_dir,
        progress=False,
    )
    return model, result


def test_loss_falls(tmp_path):
    _, result = _train(tmp_path / "a")
    assert result.history[-1]["val_loss"] < 0.5 * result.history[0]["val_loss"]


def test_interrupted_training_resumes_to_the_same_weights(tmp_path):
    full, full_result = _train(tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "cut", fail_at_epoch=3)  # dies during epoch 3
    assert [r["epoch"] for r in read_checkpoint(tmp_path / "cut")["state"]["history"]] == [1, 2]
    resumed, resumed_result = _train(tmp_path / "cut")
    assert [r["epoch"] for r in resumed_result.history] == [1, 2, 3, 4]
    # the history (a DVC plot, written as a CSV) comes back with the fresh run's column order
    assert [list(r) for r in resumed_result.history] == [list(r) for r in full_result.history]
    assert list(full_result.history[0])[:4] == ["epoch", "train_loss", "val_loss", "lr"]
    assert [list(r) for r in _train(tmp_path / "full")[1].history] == [list(r) for r in full_result.history]
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)
    assert resumed_result.best_val == pytest.approx(full_result.best_val, rel=1e-5)


def test_resume_state_is_one_file_and_a_torn_or_foreign_one_starts_afresh(tmp_path, capsys):
    """The state of an epoch is one atomically replaced file; a truncated file, a file of another model, or
    one whose counters disagree is said in one line and the training starts again from epoch 1."""
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "cut", fail_at_epoch=3)
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == [CHECKPOINT]
    blob = (tmp_path / "cut" / CHECKPOINT).read_bytes()
    ckpt = read_checkpoint(tmp_path / "cut")
    ckpt["state"]["epoch"] = 3  # counters of epoch 3 over the history of epoch 2
    torn = {**ckpt, "state": json.dumps(ckpt["state"])}
    foreign = {**torn, "state": json.dumps({**ckpt["state"], "epoch": 2})}
    foreign["last"] = {k: v[..., :1] for k, v in ckpt["last"].items()}  # another model's shapes
    cases = {"truncated": blob[: len(blob) // 2], "garbage": b"not a checkpoint"}
    for name, obj in (("counters", torn), ("shapes", foreign)):
        torch.save(obj, tmp_path / name)
        cases[name] = (tmp_path / name).read_bytes()
    capsys.readouterr()
    for name, data in cases.items():
        (tmp_path / "cut" / CHECKPOINT).write_bytes(data)
        _, result = _train(tmp_path / "cut")
        said = capsys.readouterr().out
        assert "is inconsistent or corrupt" in said and "starting afresh" in said, (name, said)
        assert "Traceback" not in said and len(said.strip().splitlines()) >= 1
        assert [r["epoch"] for r in result.history] == [1, 2, 3, 4], name


def test_sample_weights_set_how_often_each_sample_is_drawn_at_the_same_number_of_steps(tmp_path):
    """Weights 0 for half the samples: they are never drawn; the epoch still has len(train) samples."""
    train = TensorDataset(torch.arange(40, dtype=torch.float32)[:, None], torch.zeros(40, 1))
    seen: list[int] = []

    def loss_fn(m, batch):
        if m.training:
            seen.extend(int(v) for v in batch[0][:, 0])
        return nn.functional.mse_loss(m(batch[0]), batch[1])

    cfg = TrainConfig(
        epochs=2, batch_size=8, lr=0.01, grad_accum=1, weight_decay=0.0, warmup_frac=0.0, patience=5, seed=0
    )
    weights = [0.0] * 20 + [1.0] * 20
    fit(
        nn.Linear(1, 1),
        [{"params": [], "lr": 0.01}],
        loss_fn,
        train,
        train,
        _collate,
        cfg,
        state_dir=tmp_path / "w",
        progress=False,
        sample_weights=weights,
    )
    assert len(seen) == 2 * 40 and min(seen) >= 20
    with pytest.raises(ValueError, match="weights"):
        fit(
            nn.Linear(1, 1),
            [{"params": [], "lr": 0.01}],
            loss_fn,
            train,
            train,
            _collate,
            cfg,
            state_dir=tmp_path / "bad",
            progress=False,
            sample_weights=[1.0] * 3,
        )


def test_normal_and_bilateral_reports_are_weighted_from_the_report_text():
    from brain3d.training.phases import draw_weights

    reports = [
        "A lesion is seen in the left frontal lobe with edema.",
        "No mass lesion, edema or necrosis. Normal study.",
        "There is no abnormal FLAIR hyperintensity.",
        "Bilateral frontal lesions with edema crossing the corpus callosum.",
        "A lesion in the right parietal lobe; no lesion in the left hemisphere.",
    ]
    assert draw_weights(reports, 3.0) == [1.0, 3.0, 3.0, 1.0, 1.0]
    assert draw_weights(reports, 3.0, 2.0) == [1.0, 3.0, 3.0, 2.0, 1.0]
    assert draw_weights(reports, 1.0) is None  # the paper's uniform shuffling
    for bad in ((0.0, 1.0), (1.0, -1.0)):
        with pytest.raises(ValueError):
            draw_weights(reports, *bad)


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    train, val = _problem()
    cfg = TrainConfig(
        epochs=30, batch_size=8, lr=5.0, grad_accum=1, weight_decay=0.01, warmup_frac=0.0, patience=2, seed=42
    )  # diverges after a while
    result = fit(
        model,
        [{"params": list(model.parameters()), "lr": cfg.lr}],
        lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]),
        train,
        val,
        _collate,
        cfg,
        state_dir=tmp_path,
        progress=False,
    )
    vals = [r["val_loss"] for r in result.history]
    assert result.best_val == min(vals)
    assert result.stopped_early and len(vals) < cfg.epochs, "lr 5.0 diverges: the run must stop early"
    assert len(vals) - result.best_epoch == cfg.patience
    assert vals[result.best_epoch - 1] == min(vals)  # best_epoch counts from 1


def test_validation_batches_never_leave_one_sample_alone():
    """InfoNCE is undefined on one sample: 3 validation subjects at batch size 2 stopped phase 1 of the paper
    rehearsal. A trailing batch of one joins the batch before it; nothing is dropped or repeated."""
    from brain3d.training.loop import val_batches

    assert val_batches(3, 2) == [[0, 1, 2]]
    assert val_batches(9, 4) == [[0, 1, 2, 3], [4, 5, 6, 7, 8]]
    assert val_batches(20, 8) == [list(range(8)), list(range(8, 16)), list(range(16, 20))]  # demo: unchanged
    assert val_batches(1, 8) == [[0]]
    for n, b in ((3, 2), (9, 4), (17, 16), (5, 1)):
        flat = [i for batch in val_batches(n, b) for i in batch]
        assert flat == list(range(n)) and all(len(x) >= min(2, n) or b == 1 for x in val_batches(n, b))
