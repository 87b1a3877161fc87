"""Baselines: the slice-sequence prompt on a tiny Gemma 3 of the real class, Med3DVLM's input and gate."""

import functools
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from brain3d.baselines import NotRunnable, slices
from brain3d.baselines.med3dvlm import Med3DVLMConfig, check_runnable, env_commands, prepare_input
from brain3d.baselines.slices import SlicePrompt, SliceSequence, load_processor
from brain3d.models.backbones import load_language_model

PROMPT = SlicePrompt("Axial FLAIR slices follow, inferior to superior.", "Write the report.", n_slices=3)


def volume_with_left_lesion(shape=(8, 32, 32)):
    v = np.full(shape, 0.3, np.float32)
    v[7, 20:26, 2:8] = 1.0  # superior slice 7, anterior (high H), subject's LEFT (low W)
    return v


def decoding(max_new_tokens: int = 6):
    """The project's `generate` settings (params.yaml), shortened: what every system decodes with."""
    from brain3d import config
    from brain3d.generation import decoding_from_params

    g = config.load(Path(__file__).resolve().parents[1] / "params.yaml")["generate"]
    return decoding_from_params({**g, "max_new_tokens": max_new_tokens, "min_new_tokens": 1})


@pytest.fixture(scope="module")
def seq(tiny_gemma3_dir):
    torch.manual_seed(0)
    lm = load_language_model(tiny_gemma3_dir, keep_vision=True)
    return SliceSequence(lm, load_processor(tiny_gemma3_dir), PROMPT, decoding=decoding())


def test_slice_prompt_layout(seq):
    enc = seq.encode([volume_with_left_lesion()])
    tok = seq.processor.tokenizer
    ids = enc["input_ids"][0].tolist()
    image_id = tok.convert_tokens_to_ids("<image_soft_token>")
    per_image = seq.lm.full.config.mm_tokens_per_image
    assert ids.count(image_id) == 3 * per_image
    assert enc["pixel_values"].shape[0] == 3
    text = tok.decode(ids)
    positions = [
        text.index(s)
        for s in ("Axial FLAIR slices follow", "SLICE 1", "SLICE 2", "SLICE 3", "Write the report.")
    ]
    assert positions == sorted(positions), "instruction first, slices in order, question last"
    assert text.index("SLICE 1") < text.index("<start_of_image>") < text.index("SLICE 2")


def test_slices_are_spread_from_inferior_to_superior_in_the_radiological_view():
    assert PROMPT.slice_indices(8) == [0, 4, 7]
    content = PROMPT.messages(volume_with_left_lesion())[0]["content"]
    images = [c["image"] for c in content if c["type"] == "image"]
    assert all(im.dtype == np.uint8 and im.shape == (32, 32, 3) for im in images)
    # the lesion is only on the last (superior) slice: anterior -> top rows, subject's left -> right columns
    rows, cols = np.nonzero(images[-1][..., 0] > 200)
    assert rows.max() < 16 and cols.min() >= 16


def test_prediction_and_masked_loss(seq, monkeypatch):
    """The fine-tuning loss labels the report (and the turn's end) only: the instruction, the slice labels, the
    image tokens and the right padding are -100, read from the labels the model is really given."""
    out = seq.predict([volume_with_left_lesion()] * 2, batch_size=2, seed=0, progress=False)
    assert len(out) == 2 and all(isinstance(t, str) for t in out)

    seen = {}
    forward = seq.lm.full.forward

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return forward(*args, **kwargs)

    monkeypatch.setattr(seq.lm.full, "forward", spy)
    reports = ["Left frontal lesion.", "A large mass is seen in the right temporal lobe with edema."]
    loss = seq.loss([volume_with_left_lesion()] * 2, reports)
    assert torch.isfinite(loss) and loss > 0
    tok = seq.processor.tokenizer
    ids, attention, labels = seen["input_ids"], seen["attention_mask"], seen["labels"]
    image_id = tok.convert_tokens_to_ids("<image_soft_token>")
    assert (attention[0] == 0).any(), "the shorter report must be padded for the check to mean anything"
    for i, report in enumerate(reports):
        kept = (labels[i] != -100).nonzero()[:, 0].tolist()
        assert kept == list(range(kept[0], int(attention[i].sum()))), "one run, ending at the last real token"
        assert torch.equal(labels[i, kept], ids[i, kept])
        assert (ids[i, : kept[0]] == image_id).any() and not (ids[i, kept] == image_id).any(), (
            "image labelled"
        )
        assert tok.decode(ids[i, : kept[0]]).endswith("<start_of_turn>model\n"), (
            "the prompt is not all masked"
        )
        assert tok.decode(ids[i, kept]).strip() == f"{report}<end_of_turn>"


def test_the_answer_is_found_without_processing_the_slices_twice(seq, monkeypatch):
    """The loss finds where the report starts from the ids of the one encoding; counting the tokens of a second,
    prompt-only encoding (64 slices processed again) gives the same labels."""
    seen, calls = [], []
    forward, encode = seq.lm.full.forward, seq.encode

    def spy(*args, **kwargs):
        seen.append(kwargs["labels"].clone())
        return forward(*args, **kwargs)

    def counted(*args, **kwargs):
        calls.append(args)
        return encode(*args, **kwargs)

    monkeypatch.setattr(seq.lm.full, "forward", spy)
    monkeypatch.setattr(seq, "encode", counted)
    reports = ["Left frontal lesion.", "A large mass is seen in the right temporal lobe with edema."]
    fast = seq.loss([volume_with_left_lesion()] * 2, reports)
    assert len(calls) == 1, "the slices were encoded twice"
    monkeypatch.setattr(slices, "_answer_start", lambda ids, header: None)  # as if the tokenizer merged it
    slow = seq.loss([volume_with_left_lesion()] * 2, reports)
    assert len(calls) == 3
    assert torch.equal(seen[0], seen[1]) and torch.equal(fast, slow)


def test_the_slice_model_decodes_with_the_generate_settings_penalising_only_its_report(seq, monkeypatch):
    """Every system decodes alike: sampling, no-repeat n-grams, length and the side-sparing repetition penalty
    of the `generate` section; the penalty skips the chat prompt (which names "lesion", "edema" ...)."""
    from brain3d.models.model import ExemptRepetitionPenalty

    seen = {}

    def fake_generate(**kwargs):
        seen.update(kwargs)
        return torch.cat([kwargs["input_ids"], kwargs["input_ids"][:, -2:]], dim=1)

    monkeypatch.setattr(seq.lm.full, "generate", fake_generate)
    seq.predict([volume_with_left_lesion()], batch_size=1, seed=0, progress=False)
    d = seq.decoding
    assert (seen["temperature"], seen["top_p"], seen["no_repeat_ngram_size"], seen["do_sample"]) == (
        d.temperature,
        d.top_p,
        d.no_repeat_ngram_size,
        True,
    )
    assert "repetition_penalty" not in seen
    (penalty,) = seen["logits_processor"]
    assert isinstance(penalty, ExemptRepetitionPenalty) and penalty.penalty == d.repetition_penalty
    assert penalty.prompt_length == seen["input_ids"].shape[1] and len(penalty.exempt) > 0
    scores = torch.zeros(1, 10)
    assert torch.equal(penalty(seen["input_ids"], scores), scores), "prompt tokens are not penalised"


def test_med3dvlm_input_shape_range_and_orientation():
    x = prepare_input(volume_with_left_lesion(), shape=(16, 64, 64))
    assert x.shape == (1, 16, 64, 64) and x.dtype == np.float32
    assert x.min() == 0.0 and x.max() == pytest.approx(1.0)
    d, r, c = np.unravel_index(np.argmax(x[0]), x[0].shape)
    assert d > 8 and r < 32 and c >= 32  # superior; anterior rows first; subject's left in high columns (LPS)
    assert prepare_input(volume_with_left_lesion()).shape == (1, 128, 256, 256)


def test_med3dvlm_is_opt_in_and_says_why_it_cannot_run(tmp_path):
    ask = dict(question="Describe the findings.", max_new_tokens=8)
    base = dict(path=str(tmp_path / "absent"), revision="abc123", **ask)
    with pytest.raises(NotRunnable, match="remote code not allowed"):
        check_runnable(Med3DVLMConfig(**base, allow_remote_code=False))
    with pytest.raises(NotRunnable, match="no revision pinned"):
        check_runnable(Med3DVLMConfig(path=base["path"], revision=None, allow_remote_code=True, **ask))
    with pytest.raises(NotRunnable, match="checkpoint not available"):
        check_runnable(Med3DVLMConfig(**base, allow_remote_code=True))
    snap = tmp_path / "snap"
    (snap / ".cache/huggingface/download").mkdir(parents=True)
    for name in ("config.json", "vision_tower.bin"):
        (snap / name).write_text("{}")
    (snap / ".cache/huggingface/download/config.json.metadata").write_text("def456\nother\n")
    with pytest.raises(NotRunnable, match="differs from the pinned abc123"):
        check_runnable(Med3DVLMConfig(path=str(snap), revision="abc123", allow_remote_code=True, **ask))
    assert (
        check_runnable(Med3DVLMConfig(path=str(snap), revision="def456", allow_remote_code=True, **ask))
        == snap
    )


def test_med3dvlm_runs_in_its_own_environment(tmp_path):
    cmds = env_commands(tmp_path / "env")
    assert cmds[0][1:3] == ["-m", "venv"]
    assert any("transformers==4.48.3" in c for c in cmds[-1])
    assert all(str(tmp_path / "env" / "bin" / "python") == c[0] for c in cmds[1:])


def test_the_paper_geometry_64_slices_of_256_image_tokens(paper_snapshots, monkeypatch):
    """The paper profile's slice prompt (64 slices of a 64 x 128 x 128 volume, 256 image tokens each: 16 384
    of a ~16.6k-token prompt) through the MedGemma snapshot's real processor and classes: encoded once for the
    loss, whose answer start is read from that encoding's ids, and decoded. The paper rehearsal
    (tests/test_rehearsal.py) runs the slice stages on fewer slices; this carries the geometry."""
    _, lm_dir = paper_snapshots
    lm = load_language_model(lm_dir, keep_vision=True)
    prompt = SlicePrompt("Axial FLAIR slices follow.", "Write the report.", n_slices=64)
    seq = SliceSequence(lm, load_processor(lm_dir), prompt, decoding=decoding(max_new_tokens=2))
    volume = np.random.default_rng(0).random((64, 128, 128), dtype=np.float32)
    assert prompt.slice_indices(64) == list(range(64))

    seen, calls = {}, []
    forward, encode = seq.lm.full.forward, seq.encode

    @functools.wraps(forward)  # generate() reads the forward's signature
    def spy(*args, **kwargs):
        seen.update(kwargs)
        return forward(*args, **kwargs)

    def counted(*args, **kwargs):
        out = encode(*args, **kwargs)
        calls.append(out)
        return out

    monkeypatch.setattr(seq.lm.full, "forward", spy)
    monkeypatch.setattr(seq, "encode", counted)
    report = "A lesion is seen in the left frontal lobe."
    with torch.no_grad():
        loss = seq.loss([volume], [report])
    assert torch.isfinite(loss) and len(calls) == 1, "the 64 slices were encoded more than once"
    tok = seq.processor.tokenizer
    ids, labels = seen["input_ids"][0], seen["labels"][0]
    assert seq.lm.full.config.mm_tokens_per_image == 256
    assert int((ids == tok.convert_tokens_to_ids("<image_soft_token>")).sum()) == 64 * 256
    assert tuple(seen["pixel_values"].shape) == (64, 3, 896, 896)
    text = tok.decode(ids)
    assert [text.index(f"SLICE {n}\n") for n in (1, 2, 63, 64)] == sorted(
        text.index(f"SLICE {n}\n") for n in (1, 2, 63, 64)
    )
    kept = (labels != -100).nonzero()[:, 0]
    assert kept[0] > 64 * 256 and tok.decode(ids[kept]).strip() == f"{report}<end_of_turn>"

    t0 = time.perf_counter()
    (text_out,) = seq.predict([volume], batch_size=1, seed=0, progress=False)
    print(f"generation {time.perf_counter() - t0:.1f} s")
    assert isinstance(text_out, str) and len(calls) == 2
    prefill = calls[1]["input_ids"][0]  # the generation prompt: every slice, then the model's turn
    assert int((prefill == tok.convert_tokens_to_ids("<image_soft_token>")).sum()) == 64 * 256
    assert tok.decode(prefill[-8:]).endswith("<start_of_turn>model\n")
