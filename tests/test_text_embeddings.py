"""Phase 1's text side (brain3d.training.phases.text_embeddings): one vector per report from the frozen LM, the
last hidden state averaged over the report's own tokens (not BOS, not padding), on the tiny Gemma 3."""

from __future__ import annotations

import pytest
import torch
from conftest import REPORTS

from brain3d.models.backbones import load_language_model
from brain3d.training.phases import text_embeddings


@pytest.fixture(scope="module")
def lm(tiny_gemma3_dir):
    return load_language_model(tiny_gemma3_dir)


def test_one_embedding_of_the_hidden_size_per_report(lm):
    out = text_embeddings(lm, REPORTS)
    assert out.shape == (len(REPORTS), lm.hidden_size) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1], atol=1e-4)  # different reports, different vectors


def test_a_report_embeds_the_same_alone_or_padded_in_a_batch(lm):
    short, long = "Normal study.", REPORTS[1]
    ids = [lm.tokenizer(r, add_special_tokens=False)["input_ids"] for r in (short, long)]
    assert len(ids[1]) > len(ids[0]) + 5  # the short one gets real padding in the batch
    alone = text_embeddings(lm, [short])
    batched = text_embeddings(lm, [short, long])
    assert torch.allclose(alone[0], batched[0], atol=1e-5), (alone[0] - batched[0]).abs().max()
    assert torch.allclose(text_embeddings(lm, [long])[0], batched[1], atol=1e-5)
    assert torch.allclose(text_embeddings(lm, REPORTS, batch_size=1), text_embeddings(lm, REPORTS), atol=1e-5)


@torch.no_grad()
def test_bos_is_not_averaged_in(lm):
    report = REPORTS[2]
    ids = [lm.tokenizer.bos_token_id] + lm.tokenizer(report, add_special_tokens=False)["input_ids"]
    hidden = lm.causal.model(input_ids=torch.tensor([ids])).last_hidden_state[0].float()
    got = text_embeddings(lm, [report])[0]
    assert torch.allclose(got, hidden[1:].mean(0), atol=1e-5), "not the mean over the report's tokens"
    assert not torch.allclose(got, hidden.mean(0), atol=1e-3)  # with BOS it would differ (a real check)
