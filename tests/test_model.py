"""Model promises, proven on tiny randomly initialised models of the REAL classes (SigLIP, Gemma 3)."""

import re

import pytest
import torch
from conftest import PROMPT, lora_brain3d, model_config
from transformers import SiglipVisionConfig, SiglipVisionModel

from brain3d.models.backbones import load_language_model, load_vision_model
from brain3d.models.compressor import GridPool, PerceiverResampler, SeqPool, grid_positions
from brain3d.models.encoder import InflatedPatchEmbed, PositionalEmbedding3D, VolumeEncoder, token_grid
from brain3d.models.model import CANDIDATES_PER_CALL, Brain3D, Decoding, ModelConfig, VisualTokenizer
from brain3d.models.projector import Projector


def decoding(**settings) -> Decoding:
    """Decoding settings for a test: sampling at temperature 1 with no penalty, 1-3 new tokens, the plain
    decoder; `settings` replace any of them."""
    base = dict(temperature=1.0, top_p=1.0, repetition_penalty=1.0, no_repeat_ngram_size=0, max_new_tokens=3)
    base |= dict(
        min_new_tokens=1, repetition_exempt=(), select="plain", candidates=0, candidate_temperature=1.0
    )
    base |= dict(guide="head")
    return Decoding(**{**base, **settings})


def medsiglip_like(hidden=16, layers=1):
    """MedSigLIP-448's geometry (image 448, patch 14 -> 32x32 position grid) at a tiny width."""
    torch.manual_seed(0)
    return SiglipVisionModel(
        SiglipVisionConfig(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=2,
            image_size=448,
            patch_size=14,
        )
    )


def _windows(size: int, kernel: int, stride: int, pad: int = 0) -> int:
    """How many kernel positions fit along one axis, counted one by one (independent of token_grid)."""
    return sum(1 for start in range(0, size + 2 * pad, stride) if start + kernel <= size + 2 * pad)


def test_paper_shapes_65x9x9_tokens_and_32_visual_tokens():
    """The paper's geometry: 64x128x128 at patch 14, kd=2, depth stride 1, pad 1 gives 65x9x9 = 5265 tokens;
    the counts come from counting kernel positions and from the encoder's own output, not from the config."""
    expected = (_windows(64, 2, 1, 1), _windows(128, 14, 14), _windows(128, 14, 14))
    assert expected == (65, 9, 9)
    assert token_grid((64, 128, 128), patch=14, kd=2, depth_stride=1, depth_pad=1) == expected
    cfg = model_config(volume_shape=(64, 128, 128), compressor="seq_pool", n_tokens=32, grid=(2, 4, 4))
    visual = VisualTokenizer(medsiglip_like(), cfg)
    volume = torch.rand(1, 1, 64, 128, 128)
    with torch.no_grad():
        assert tuple(visual.encoder.patch_embed(volume).shape[2:]) == visual.encoder.grid == expected
        tokens = visual.encoder(volume)
        assert tokens.shape == (1, 65 * 9 * 9, 16) == (1, 5265, 16)
        assert visual(volume).shape == (1, 32, 16)
    assert visual.encoder.pos.spatial.shape == (9, 9, 16)  # 32x32 pretrained grid interpolated to 9x9
    assert visual.encoder.pos.depth.shape == (65, 16)


@pytest.mark.parametrize(
    "shape,kd,stride,pad", [((7, 31, 44), 3, 2, 0), ((9, 29, 57), 2, 3, 1), ((5, 20, 23), 4, 1, 2)]
)
def test_token_grid_is_the_patch_embeddings_output_grid(shape, kd, stride, pad):
    """Shapes that do not divide evenly: token_grid (which sizes the position tables) must equal the grid the
    inflated Conv3d really produces and the count of kernel positions along each axis."""
    conv = _patch_conv(c=4, p=5)
    inflated = InflatedPatchEmbed(conv, kd=kd, depth_stride=stride, depth_pad=pad, inflation="sum")
    with torch.no_grad():
        produced = tuple(inflated(torch.rand(1, 1, *shape)).shape[2:])
    counted = (_windows(shape[0], kd, stride, pad), _windows(shape[1], 5, 5), _windows(shape[2], 5, 5))
    assert token_grid(shape, patch=5, kd=kd, depth_stride=stride, depth_pad=pad) == produced == counted


def test_paper_projector_is_1152_to_2560():
    projector = Projector(1152, 2560, embed_scale=2560**0.5)
    assert (projector.fc1.in_features, projector.fc1.out_features) == (1152, 2560)
    assert (projector.fc2.in_features, projector.fc2.out_features) == (2560, 2560)
    assert projector(torch.randn(2, 32, 1152)).shape == (2, 32, 2560)


def _patch_conv(c=8, p=4):
    torch.manual_seed(0)
    return torch.nn.Conv2d(3, c, kernel_size=p, stride=p)  # a random "pretrained" RGB patch embedding


def _rgb_response(conv, grey):
    """What the 2D model saw: its response to the grey slice (B, 1, H, W) replicated to RGB."""
    return conv(grey.expand(-1, 3, -1, -1))  # (B, C, h, w)


@pytest.mark.parametrize("kd", [2, 3])
@pytest.mark.parametrize("inflation", ["mean", "sum", "center"])
def test_inflation_on_a_depth_constant_volume_keeps_the_2d_scale_except_mean(inflation, kd):
    conv = _patch_conv()
    inflated = InflatedPatchEmbed(conv, kd=kd, depth_stride=1, depth_pad=1, inflation=inflation)
    grey = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        out3d = inflated(grey[:, :, None].expand(1, 1, 5, 16, 16))  # (1, 8, D', 4, 4): every slice the same
        out2d = _rgb_response(conv, grey)  # (1, 8, 4, 4)
    bias = conv.bias[None, :, None, None].detach()
    expected = {"sum": out2d, "center": out2d, "mean": bias + (out2d - bias) / 3}[inflation]
    interior = out3d[
        :, :, 1:-1
    ]  # tokens whose kernel lies inside the volume (away from the zero depth padding)
    assert interior.shape[2] >= 2
    for z in range(interior.shape[2]):
        assert torch.allclose(interior[:, :, z], expected, atol=1e-5), (inflation, kd, z)


def test_center_inflation_has_one_nonzero_depth_frame_and_differs_from_sum_on_varying_depth():
    conv, kd = _patch_conv(), 3
    center = InflatedPatchEmbed(conv, kd=kd, depth_stride=1, depth_pad=1, inflation="center")
    summed = InflatedPatchEmbed(conv, kd=kd, depth_stride=1, depth_pad=1, inflation="sum")
    frames = center.proj.weight.abs().sum(dim=(0, 1, 3, 4))  # (kd,)
    assert torch.count_nonzero(frames) == 1 and frames[kd // 2] > 0
    volume = torch.rand(1, 1, 5, 16, 16)  # every slice different
    with torch.no_grad():
        out_c, out_s = center(volume), summed(volume)  # (1, 8, 5, 4, 4)
        for z in range(1, 4):  # kernel frames z-1, z, z+1: all inside the volume
            slices = [_rgb_response(conv, volume[:, :, k]) for k in (z - 1, z, z + 1)]
            assert torch.allclose(out_c[:, :, z], slices[1], atol=1e-5)  # the centre slice alone
            assert torch.allclose(out_s[:, :, z], sum(slices) / kd, atol=1e-5)  # the kd slices' mean response
            assert not torch.allclose(out_c[:, :, z], out_s[:, :, z], atol=1e-2)


def test_unknown_inflation_names_the_valid_ones():
    with pytest.raises(ValueError, match="mean, sum, center.*'average'"):
        InflatedPatchEmbed(_patch_conv(), kd=2, depth_stride=1, depth_pad=1, inflation="average")


@pytest.mark.parametrize("inflation", ["mean", "sum", "center"])
def test_mirrored_volume_gives_mirrored_tokens(inflation):
    """Left-right mirroring commutes with the patch embedding when each patch is uniform (a patch's own
    content then has no side), so the token grid keeps the volume's orientation."""
    inflated = InflatedPatchEmbed(_patch_conv(), kd=2, depth_stride=1, depth_pad=1, inflation=inflation)
    volume = (
        torch.rand(1, 1, 5, 4, 4).repeat_interleave(4, dim=3).repeat_interleave(4, dim=4)
    )  # (1, 1, 5, 16, 16)
    with torch.no_grad():
        tokens, mirrored = inflated(volume), inflated(torch.flip(volume, dims=(4,)))  # (1, 8, 6, 4, 4)
    assert torch.allclose(mirrored, torch.flip(tokens, dims=(4,)), atol=1e-6)
    assert not torch.allclose(mirrored, tokens, atol=1e-3)  # the volume is not symmetric: a real check


def test_inflation_and_variant_round_trip_through_the_card_and_old_cards_load_as_mean_paper(tmp_path):
    import json

    from brain3d.models.checkpoint import CARD, read_card, write_card

    cfg = model_config(inflation="center")
    (tmp_path / "visual.safetensors").write_bytes(b"")  # the card pins what it names: it must exist
    write_card(
        tmp_path,
        phase="phase1",
        model_cfg=cfg,
        backbones={"vision": tmp_path, "lm": tmp_path},
        visual=tmp_path / "visual.safetensors",
        projector=None,
    )
    card = read_card(tmp_path)
    assert ModelConfig(**card["model"]) == cfg
    visual = VisualTokenizer(
        medsiglip_like(), ModelConfig(**card["model"])
    )  # the card's mode reaches the encoder
    assert torch.count_nonzero(visual.encoder.patch_embed.proj.weight[:, :, 0]) == 0
    old = json.loads((tmp_path / CARD).read_text())
    del old["model"]["inflation"], old["model"]["variant"]  # a card written before both keys existed
    (tmp_path / CARD).write_text(json.dumps(old))
    loaded = ModelConfig(**read_card(tmp_path)["model"])
    assert (loaded.inflation, loaded.variant) == ("mean", "paper")


def test_the_reference_variant_adds_a_fixed_code_and_saves_no_position_weights():
    """model.variant `reference` (the authors' release): no learned or 2D positions (nothing in the state dict),
    the fixed linspace code instead; the volume is not flipped, so a mirrored volume gives other tokens than the
    paper variant's mirrored ones would. An unknown variant is refused by name."""
    paper = VisualTokenizer(medsiglip_like(), model_config(compressor="seq_pool"))
    reference = VisualTokenizer(medsiglip_like(), model_config(compressor="seq_pool", variant="reference"))
    assert any(k.startswith("encoder.pos.") for k in paper.state_dict())
    assert not any(k.startswith("encoder.pos.") for k in reference.state_dict())
    code = reference.encoder.pos.code  # (D', h, w, C) for the 9 x 2 x 2 grid of 8 x 28 x 28
    assert code.shape == (9, 2, 2, 16)
    assert torch.allclose(code[:, 0, 0, 5], torch.linspace(-1, 1, 9))  # depth ramp on every channel
    assert torch.allclose(code[4, :, 0, 0], torch.tensor([-1.0, 1.0]))  # + y on channel 0 (z = 0 there)
    assert torch.allclose(code[4, 0, :, 1], torch.tensor([-1.0, 1.0]))  # + x on channel 1
    with pytest.raises(ValueError, match="model.variant must be one of paper, reference, not 'theirs'"):
        VisualTokenizer(medsiglip_like(), model_config(variant="theirs"))


def test_positional_embedding_keeps_the_pretrained_grid_when_sizes_match():
    table = torch.randn(16, 4)
    pos = PositionalEmbedding3D(table, (3, 4, 4))
    assert torch.allclose(pos.spatial.reshape(16, 4), table)
    assert torch.count_nonzero(pos.depth) == 0  # learnable, starts neutral
    out = pos(torch.zeros(1, 3, 4, 4, 4))
    assert torch.allclose(out[0, 2], table.reshape(4, 4, 4))  # broadcast over depth


def test_grid_pool_keeps_left_and_right_apart_but_seq_pool_mixes_them():
    grid = (2, 4, 4)
    tokens = torch.zeros(1, 2 * 4 * 4, 3)
    left = tokens.clone().reshape(1, 2, 4, 4, 3)
    left[:, :, :, :2] = 1.0  # W index 0..1 = subject's left
    left = left.reshape(1, 32, 3)
    right = torch.flip(left.reshape(1, 2, 4, 4, 3), dims=(3,)).reshape(1, 32, 3)
    gp, sp = GridPool((1, 1, 2)), SeqPool(2)
    assert not torch.allclose(gp(left, grid), gp(right, grid))
    assert torch.allclose(sp(left, grid), sp(right, grid))  # the paper's 1D pool cannot tell them apart


def _mirror_grid(tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    b, n, c = tokens.shape
    return torch.flip(tokens.reshape(b, *grid, c), dims=(3,)).reshape(b, n, c)  # W: left <-> right


def test_perceiver_gives_k_tokens_at_the_papers_grid_and_trains():
    torch.manual_seed(0)
    perceiver = PerceiverResampler(32, 16)
    assert len(perceiver.layers) == 2
    tokens = torch.randn(2, 65 * 9 * 9, 16, requires_grad=True)
    out = perceiver(tokens, (65, 9, 9))
    assert out.shape == (2, 32, 16)
    assert not torch.allclose(out[0], out[1], atol=1e-4)  # each volume its own tokens
    out.square().sum().backward()
    assert tokens.grad.abs().sum() > 0 and perceiver.latents.grad.abs().sum() > 0


def test_perceiver_tells_a_mirrored_grid_apart_through_its_position_code():
    """Attention is blind to token order: the position code is what lets the K latents know left from right.
    Zeroing it makes a mirrored token grid give the same output (the check below can fail)."""
    torch.manual_seed(0)
    grid = (2, 4, 6)
    perceiver = PerceiverResampler(8, 16).eval()
    tokens = torch.randn(1, 48, 16)
    with torch.no_grad():
        out, mirrored = perceiver(tokens, grid), perceiver(_mirror_grid(tokens, grid), grid)
        assert (out - mirrored).abs().max() > 1e-2
        perceiver.position.weight.zero_()
        perceiver.position.bias.zero_()
        blind, blind_mirrored = perceiver(tokens, grid), perceiver(_mirror_grid(tokens, grid), grid)
    assert torch.allclose(blind, blind_mirrored, atol=1e-5)


def test_grid_positions_are_z_major_and_mirror_in_x():
    pos = grid_positions((2, 3, 4), n_freqs=2)
    assert pos.shape == (24, 12)
    cube = pos.reshape(2, 3, 4, 3, 4)  # (z, y, x, axis, sin/cos x freq)
    assert torch.allclose(
        cube[:, :, :, 2, :2], -torch.flip(cube, dims=(2,))[:, :, :, 2, :2], atol=1e-6
    )  # sin odd
    assert torch.allclose(cube[0, :, :, 0], cube[0, :1, :1, 0].expand(3, 4, 4))  # z constant within a slice


def test_perceiver_round_trips_through_the_visual_tokenizer_state(tmp_path):
    from safetensors.torch import load_file, save_file

    cfg = model_config(inflation="sum", compressor="perceiver")
    visual = VisualTokenizer(medsiglip_like(), cfg).eval()
    save_file(visual.state_dict(), tmp_path / "visual.safetensors")
    torch.manual_seed(1)
    again = VisualTokenizer(medsiglip_like(), cfg).eval()
    again.load_state_dict(load_file(tmp_path / "visual.safetensors"))
    volume = torch.rand(1, 1, 8, 28, 28)
    with torch.no_grad():
        assert visual(volume).shape == (1, 4, 16)
        assert torch.equal(visual(volume), again(volume))


def test_encoder_runs_on_the_demo_stand_in_geometry(tiny_siglip_dir):
    vision = load_vision_model(tiny_siglip_dir)
    encoder = VolumeEncoder(
        vision, (8, 32, 32), kd=2, depth_stride=2, depth_pad=0, inflation="sum", variant="paper"
    )
    assert encoder.grid == (4, 4, 4)
    assert encoder(torch.rand(2, 1, 8, 32, 32)).shape == (2, 64, 32)


def test_multimodal_gemma3_is_loaded_with_its_weights(tiny_gemma3_dir):
    from safetensors.torch import load_file

    saved = load_file(str(tiny_gemma3_dir / "model.safetensors"))
    lm = load_language_model(tiny_gemma3_dir)
    assert lm.decoder_prefix == "model.language_model"
    q = lm.causal.model.layers[0].self_attn.q_proj.weight
    key = next(k for k in saved if re.search(r"language_model\..*layers\.0\.self_attn\.q_proj\.weight$", k))
    assert torch.equal(q, saved[key]), "the LM was not loaded from the checkpoint"
    assert lm.full.model.vision_tower is None  # dropped: Brain3D has its own 3D encoder


def test_loading_a_multimodal_checkpoint_as_causal_lm_would_lose_its_weights(tiny_gemma3_dir):
    """The pitfall the loader avoids: Gemma3ForCausalLM on a MedGemma-style checkpoint."""
    from safetensors.torch import load_file
    from transformers import Gemma3ForCausalLM
    from transformers.utils import logging

    saved = load_file(str(tiny_gemma3_dir / "model.safetensors"))
    key = next(k for k in saved if re.search(r"language_model\..*layers\.0\.self_attn\.q_proj\.weight$", k))
    logging.set_verbosity_error()
    try:  # it loads without an error (a version that refused outright would fail here: re-check the loader)
        wrong = Gemma3ForCausalLM.from_pretrained(tiny_gemma3_dir)
    finally:
        logging.set_verbosity_warning()
    assert not torch.equal(wrong.model.layers[0].self_attn.q_proj.weight, saved[key])


def test_lora_targets_the_language_model_only(tiny_gemma3_dir):
    from peft import LoraConfig, get_peft_model

    lm = load_language_model(tiny_gemma3_dir, keep_vision=True)
    names = [n for n, _ in lm.full.named_modules()]
    plain = [n for n in names if n.split(".")[-1] in ("q_proj", "k_proj", "v_proj", "o_proj")]
    assert any("vision_tower" in n for n in plain), "fixture must have a vision tower with q/k/v projections"
    peft_model = get_peft_model(lm.full, LoraConfig(r=4, lora_alpha=8, target_modules=lm.lora_target_regex()))
    targets = {n.rsplit(".lora_A", 1)[0] for n, _ in peft_model.named_modules() if n.endswith("lora_A")}
    assert targets, "no LoRA layer was created"
    assert not any("vision" in t for t in targets)
    assert all(re.search(r"language_model\.layers\.\d+\.self_attn\.[qkvo]_proj$", t) for t in targets)
    assert len(targets) == 4 * lm.causal.config.num_hidden_layers


@pytest.fixture
def brain3d(tiny_gemma3_dir):
    torch.manual_seed(0)
    lm = load_language_model(tiny_gemma3_dir)
    return Brain3D(lm, vision_width=16, prompt=PROMPT)


def test_labels_cover_only_report_tokens(brain3d):
    z = torch.randn(2, 32, 16)
    embeds, attention, labels = brain3d._teacher_forcing(z, ["Left frontal lesion.", "Normal study."])
    n_prefix = 32 + len(brain3d.prompt_ids)
    assert embeds.shape[1] == labels.shape[1] == attention.shape[1]
    assert (labels[:, :n_prefix] == -100).all()
    report_tokens = brain3d.tokenizer("Normal study.", add_special_tokens=False)["input_ids"]
    assert (labels[1] != -100).sum() == len(report_tokens) + 1  # + EOS
    assert labels[1, n_prefix + len(report_tokens)] == brain3d.eos_id


def test_calibrate_puts_visual_tokens_on_the_text_scale(brain3d):
    z = torch.randn(4, 32, 16) * 7
    target = brain3d.text_rms()
    brain3d.projector.calibrate(z, target)
    rms = brain3d.projector(z).pow(2).mean().sqrt().item()
    assert abs(rms - target) / target < 1e-3


def test_loss_backpropagates_into_projector_only_when_lm_frozen(brain3d):
    loss = brain3d(torch.randn(2, 32, 16), ["Left frontal lesion.", "Normal study."])
    loss.backward()
    assert brain3d.projector.fc1.weight.grad is not None
    assert all(p.grad is None for p in brain3d.lm.parameters())


def test_batched_generation_equals_one_at_a_time(brain3d):
    z = torch.randn(3, 32, 16)
    greedy = decoding(
        repetition_penalty=1.2,
        no_repeat_ngram_size=3,
        max_new_tokens=12,
        min_new_tokens=2,
        repetition_exempt=("left", "right"),
        do_sample=False,
    )
    batched = brain3d.generate(z, greedy)
    single = [brain3d.generate(z[i : i + 1], greedy)[0] for i in range(3)]
    assert batched == single
    assert brain3d.log_likelihood(z, batched).shape == (3,)


def test_summed_log_likelihood_is_the_mean_times_the_report_tokens_and_eos(brain3d):
    z = torch.randn(2, 32, 16)
    reports = ["No lesion.", "A lesion is seen in the left frontal lobe with marked edema."]
    mean, total = brain3d.log_likelihood(z, reports), brain3d.log_likelihood(z, reports, reduction="sum")
    n = torch.tensor([len(brain3d.tokenizer(r, add_special_tokens=False)["input_ids"]) + 1 for r in reports])
    assert torch.allclose(total, mean * n, atol=1e-4) and n[1] > n[0]
    with pytest.raises(ValueError, match="reduction"):
        brain3d.log_likelihood(z, reports, reduction="max")


def test_exempt_repetition_penalty_is_transformers_penalty_except_for_exempt_ids():
    from transformers import RepetitionPenaltyLogitsProcessor

    from brain3d.models.model import ExemptRepetitionPenalty

    torch.manual_seed(0)
    ids, scores = torch.tensor([[3, 5, 5, 7], [1, 2, 3, 4]]), torch.randn(2, 10)
    reference = RepetitionPenaltyLogitsProcessor(1.3)(ids, scores.clone())
    assert torch.equal(ExemptRepetitionPenalty(1.3, [])(ids, scores.clone()), reference)
    spared = ExemptRepetitionPenalty(1.3, [5, 2])(ids, scores.clone())
    for row, token in ((0, 5), (1, 2)):
        assert spared[row, token] == scores[row, token] != reference[row, token]
    unspared = torch.ones_like(scores, dtype=torch.bool)
    unspared[0, 5] = unspared[1, 2] = False
    assert torch.equal(spared[unspared], reference[unspared])


def test_repetition_exempt_spares_every_spelling_of_the_side_words(brain3d):
    from brain3d.models.model import word_token_ids

    tok = brain3d.tokenizer
    ids = word_token_ids(tok, ["left", "right"])
    assert ids and {tok.decode([i]).strip().lower() for i in ids} <= {"left", "right"}
    for i in range(len(tok)):  # every entry that is exactly the word, however the vocabulary spells it
        assert (i in ids) == (tok.decode([i]).strip().lower() in ("left", "right"))
    exempt = decoding(
        repetition_penalty=1.2,
        no_repeat_ngram_size=3,
        max_new_tokens=4,
        repetition_exempt=("left",),
        do_sample=False,
    )
    kwargs = exempt.kwargs(tok)
    assert "repetition_penalty" not in kwargs and len(kwargs["logits_processor"]) == 1
    with pytest.raises(ValueError, match="tokenizer"):
        exempt.kwargs()


# ------------------------------------------------------------------------------- precision: no silent fallback
def test_4bit_without_cuda_refuses_unless_a_fallback_is_allowed(tiny_gemma3_dir, monkeypatch, capsys):
    from brain3d import runtime
    from brain3d.config import PrecisionError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "FALLBACKS", [])
    with pytest.raises(PrecisionError, match="4-bit NF4.*allow_cpu_fallback: true"):
        load_language_model(tiny_gemma3_dir, load_in_4bit=True)
    assert runtime.FALLBACKS == []
    lm = load_language_model(tiny_gemma3_dir, load_in_4bit=True, allow_cpu_fallback=True)
    assert lm.causal.lm_head.weight.dtype == torch.float32  # unquantised, as said
    assert len(runtime.FALLBACKS) == 1 and "unquantised" in runtime.FALLBACKS[0]
    assert capsys.readouterr().err.count("precision fallback: 4-bit NF4") == 1


def test_a_stage_records_its_precision_fallback_in_mlflow(tmp_path, monkeypatch):
    from contextlib import contextmanager

    from brain3d import entrypoint, runtime

    logged = {}

    class Recorder:
        def log_params(self, params):
            logged.update(params)

        def log_metrics(self, metrics, step=None):
            pass

    @contextmanager
    def fake_run(name, params=None, tags=None):
        yield Recorder()

    import shutil
    from pathlib import Path

    shutil.copy(Path(__file__).parents[1] / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(entrypoint, "mlflow_run", fake_run)
    monkeypatch.setattr(runtime, "FALLBACKS", [])
    with entrypoint.run("phase2b", ("phase2b",)):
        runtime.precision_fallback("4-bit NF4 needs CUDA", allow=True)
    assert logged["precision_fallback"] == "4-bit NF4 needs CUDA"


def test_training_autocasts_to_bf16_exactly_when_the_weights_are_bf16(monkeypatch, tmp_path):
    import accelerate
    from accelerate.state import AcceleratorState

    from brain3d.training.loop import TrainConfig, fit

    seen = []
    real = accelerate.Accelerator

    def spy(*args, **kwargs):
        seen.append(kwargs["mixed_precision"])
        return real(*args, **kwargs)

    monkeypatch.setattr(accelerate, "Accelerator", spy)
    data = [(torch.randn(4), torch.randn(1)) for _ in range(4)]
    cfg = TrainConfig(
        epochs=1, batch_size=2, lr=1e-3, grad_accum=1, weight_decay=0.0, warmup_frac=0.0, patience=1, seed=0
    )
    for dtype in (torch.float32, torch.bfloat16):
        AcceleratorState._reset_state(reset_partial_state=True)  # one precision per process, as in a stage
        model = torch.nn.Linear(4, 1).to(dtype)
        loss = lambda m, b, dtype=dtype: (m(b[0].to(dtype)).float() - b[1]).square().mean()  # noqa: E731
        fit(
            model,
            [{"params": list(model.parameters()), "lr": 1e-3}],
            loss,
            data,
            data,
            lambda items: tuple(torch.stack(x) for x in zip(*items)),
            cfg,
            state_dir=tmp_path / str(dtype),
        )
    AcceleratorState._reset_state(reset_partial_state=True)
    assert seen == ["no", "bf16"]


def test_a_bf16_backbone_encodes_and_generates_outside_autocast(tiny_siglip_dir, tiny_gemma3_dir):
    """The paper loads both backbones in bfloat16; token caching and generation run without autocast, so the
    inflated patch embedding and the projected visual tokens must follow the backbones' dtype (the paper
    rehearsal found both in float32: a dtype error at the first LayerNorm, and at the LM's first projection)."""
    vision = load_vision_model(tiny_siglip_dir, dtype=torch.bfloat16)
    cfg = model_config(volume_shape=(8, 32, 32))
    visual = VisualTokenizer(vision, cfg).eval()
    assert visual.encoder.patch_embed.proj.weight.dtype == torch.bfloat16
    lm = load_language_model(tiny_gemma3_dir, dtype=torch.bfloat16)
    model = Brain3D(lm, visual.width, PROMPT).eval()  # the projector stays float32 (it is trained)
    with torch.no_grad():
        tokens = visual(torch.rand(2, 1, 8, 32, 32))
        assert len(model.generate(tokens, decoding(min_new_tokens=3, do_sample=False))) == 2
        assert torch.isfinite(model.log_likelihood(tokens, ["left frontal lesion"] * 2)).all()


def test_the_stand_in_tokenizer_keeps_gemma_turn_and_image_markers_whole(tiny_tokenizer, tiny_gemma3_dir):
    """Gemma's chat turns and image placeholders are single special tokens (the slice baselines' prompt and
    stop token rely on it), also in the tokenizer saved with the Gemma 3 stand-in."""
    from transformers import AutoTokenizer

    text = "<start_of_turn>user\nx<end_of_turn><start_of_image>"
    for tok in (tiny_tokenizer, AutoTokenizer.from_pretrained(tiny_gemma3_dir)):
        tokens = tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])
        assert tokens[0] == "<start_of_turn>" and tokens[-2:] == ["<end_of_turn>", "<start_of_image>"]
        assert len(tok) == 400  # no new entries: the markers were in the trained vocabulary


def test_save_pretrained_round_trips_a_brain3d_with_its_lora_through_one_directory(
    tmp_path, tiny_siglip_dir, tiny_gemma3_dir
):
    """`from_pretrained` rebuilds the saved model: same weights (visual, projector, LoRA: a LoRA left out would
    change the likelihood, its B matrices being non-zero), same report likelihood, and a card whose file paths
    are relative, so the directory can move with its backbones."""
    import json

    from brain3d.models.checkpoint import read_card

    torch.manual_seed(3)
    cfg = model_config(inflation="sum")
    model, lora = lora_brain3d(tiny_siglip_dir, tiny_gemma3_dir, cfg, b_std=0.05)
    model.eval()
    with torch.no_grad():
        model.projector.vis_scale.fill_(0.7)
    backbones = {
        "vision": str(tiny_siglip_dir),
        "lm": str(tiny_gemma3_dir),
        "dtype": "float32",
        "load_in_4bit": False,
    }
    from brain3d.fileio import IntegrityError, save_safetensors
    from brain3d.models.side_cnn import LateralityCNN

    detector = LateralityCNN([2, 3], 2)
    with torch.no_grad():
        detector.trunk[1].weight.normal_()  # not the default initialisation
    save_safetensors(tmp_path / "detector.safetensors", detector.state_dict())
    model.save_pretrained(
        tmp_path / "m",
        phase="phase2b",
        model_cfg=cfg,
        backbones=backbones,
        adapter=lora,
        detector=(tmp_path / "detector.safetensors", {"channels": [2, 3], "downsample": 2}),
    )

    loaded = Brain3D.from_pretrained(tmp_path / "m")
    assert not loaded.training and loaded.visual is not None
    for mine, theirs in ((model.visual, loaded.visual), (model.projector, loaded.projector)):
        a, b = mine.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    volume = torch.rand(2, 1, 8, 28, 28)
    report = ["Mass lesion in the left frontal lobe.", "No abnormality."]
    with torch.no_grad():
        expected = model.log_likelihood(model.visual(volume), report)
        got = loaded.log_likelihood(loaded.visual(volume), report)
    assert torch.allclose(expected, got, atol=1e-5)
    card = json.loads((tmp_path / "m" / "brain3d.json").read_text())
    assert card["visual"] == "visual.safetensors" and card["adapter"] == "adapter"
    a, b = detector.state_dict(), loaded.detector.state_dict()  # the side detector, with its BatchNorm stats
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert card["detector"] == "../detector.safetensors" and "../detector.safetensors" in card["sha256"]
    readme = (tmp_path / "m" / "README.md").read_text()  # the human-readable model card
    assert (
        readme.startswith("# Brain3D, phase2b")
        and "adapter `adapter`" in readme
        and "Research use only" in readme
    )
    assert ModelConfig(**read_card(tmp_path / "m")["model"]) == cfg
    (tmp_path / "m" / "brain3d.json").write_text(json.dumps({**card, "adapter": None}))
    with torch.no_grad():
        without_lora = Brain3D.from_pretrained(tmp_path / "m").log_likelihood(model.visual(volume), report)
    assert not torch.allclose(expected, without_lora, atol=1e-3)  # the adapter is what the first check read
    with pytest.raises(ValueError, match="no visual tokenizer"):
        Brain3D(model.language_model, model.visual.width, cfg.prompt).save_pretrained(
            tmp_path / "n", phase="phase2a", model_cfg=cfg, backbones=backbones
        )
    save_safetensors(tmp_path / "detector.safetensors", LateralityCNN([2, 3], 2).state_dict())
    with pytest.raises(IntegrityError, match="detector.safetensors"):  # pinned like every file it loads
        Brain3D.from_pretrained(tmp_path / "m")


def test_a_model_directory_refuses_files_that_changed_since_it_was_written(
    tmp_path, tiny_siglip_dir, tiny_gemma3_dir
):
    """Phases 2A/2B refer to phase 1's visual weights and to the backbones instead of copying them; the card pins
    each by sha256, so a phase 1 re-run alone, or a copied directory pointing at other backbones, is refused with
    one line naming the file and the hash it was trained with."""
    import json
    import shutil

    from brain3d.fileio import IntegrityError, sha256_file
    from brain3d.models.checkpoint import read_card

    lm_dir = shutil.copytree(tiny_gemma3_dir, tmp_path / "lm")
    cfg = model_config()
    model, lora = lora_brain3d(tiny_siglip_dir, lm_dir, cfg, b_std=0.05)
    backbones = {"vision": str(tiny_siglip_dir), "lm": str(lm_dir), "dtype": "float32", "load_in_4bit": False}
    model.save_pretrained(tmp_path / "phase1", phase="phase1", model_cfg=cfg, backbones=backbones)
    visual = tmp_path / "phase1" / "visual.safetensors"
    model.save_pretrained(
        tmp_path / "phase2b", phase="phase2b", model_cfg=cfg, backbones=backbones, visual=visual, adapter=lora
    )
    pins = json.loads((tmp_path / "phase2b" / "brain3d.json").read_text())["sha256"]
    trained_with = sha256_file(visual)
    assert pins["../phase1/visual.safetensors"] == trained_with
    assert {"../lm/config.json", "../lm/model.safetensors", "projector.safetensors"} <= set(pins)
    assert any(k.startswith("adapter/") for k in pins)
    Brain3D.from_pretrained(tmp_path / "phase2b")  # unchanged: loads

    with torch.no_grad():  # phase 1 re-run alone: other visual weights under the same name
        next(model.visual.parameters()).add_(0.01)
    model.save_pretrained(tmp_path / "phase1", phase="phase1", model_cfg=cfg, backbones=backbones)
    with pytest.raises(IntegrityError) as refused:
        Brain3D.from_pretrained(tmp_path / "phase2b")
    message = str(refused.value)
    assert "phase1/visual.safetensors" in message and trained_with[:16] in message and "\n" not in message
    assert "dvc repro phase2b" in message

    model.save_pretrained(tmp_path / "phase1b", phase="phase1", model_cfg=cfg, backbones=backbones)
    card = json.loads((tmp_path / "phase2b" / "brain3d.json").read_text())
    card["visual"] = "../phase1b/visual.safetensors"  # a card pointed at unpinned weights
    (tmp_path / "phase2b" / "brain3d.json").write_text(json.dumps(card))
    with pytest.raises(IntegrityError, match="pins no hash"):
        Brain3D.from_pretrained(tmp_path / "phase2b")
    assert read_card(tmp_path / "phase2b")["sha256"] == pins

    config = lm_dir / "config.json"  # another backbone behind the same path
    config.write_text(config.read_text().replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": 1e-05'))
    with pytest.raises(IntegrityError, match="lm/config.json"):
        Brain3D.from_pretrained(tmp_path / "phase1")


def test_findings_consistent_decoding_keeps_what_agrees_and_resamples_the_rest(brain3d, monkeypatch):
    """`generate.select: findings`: a report that agrees with the findings head is the plain decoder's; one that
    disagrees is sampled again (at the candidate temperature, at most `candidates` times) until one agrees, else
    the one that agrees best (presence, then side, then the hemispheres named) is kept; a bilateral finding
    agrees only with a report that names both hemispheres; candidates come CANDIDATES_PER_CALL per row and call;
    `plain` never resamples."""
    import dataclasses

    from brain3d.models.findings_head import FindingsHead

    left, right, both = (f"A lesion in the {s} frontal lobe." for s in ("left", "right", "bilateral"))
    named = "A lesion in the left frontal lobe and a lesion in the right parietal lobe."
    normal = "No lesion. Normal study."
    rounds = {  # what the sampler writes for each row, call after call (the first call: the plain decoder)
        0: [left],  # agrees with the head at once
        1: [normal, both, named],  # bilateral, then both hemispheres named: the second further sample agrees
        2: [normal, left, left, left],  # a lesion, never the wanted side: the first with the lesion is kept
        3: [left, left, left, left],  # the head says no lesion; nothing agrees: the plain report stays
        4: [normal, right, both, both],  # the side but never the hemispheres: the first bilateral one is kept
    }
    calls: list[tuple[list[int], float]] = []
    drawn = dict.fromkeys(rounds, 0)

    def sample(self, z, decoding, seed):  # each row's next text, in the order its copies come
        rows = [int(v) for v in z[:, 0, 0]]
        calls.append((rows, decoding.temperature))
        texts = [rounds[r][min(drawn[r] + rows[:j].count(r), len(rounds[r]) - 1)] for j, r in enumerate(rows)]
        for r in rows:
            drawn[r] += 1
        return texts

    monkeypatch.setattr(Brain3D, "_sample", sample)
    head = FindingsHead(32, 16)
    wanted = ["left", "bilateral", "right", "none", "bilateral"]
    monkeypatch.setattr(FindingsHead, "decide", lambda self, z: [wanted[int(v)] for v in z[:, 0, 0]])
    brain3d.findings = head
    z = torch.zeros(5, 32, 16)
    z[:, 0, 0] = torch.arange(5)
    findings = decoding(temperature=0.1, top_p=0.9, max_new_tokens=8, select="findings", candidates=5)
    assert CANDIDATES_PER_CALL == 4
    assert brain3d.generate(z, findings) == [left, named, left, left, both]
    assert calls[0] == ([0, 1, 2, 3, 4], 0.1) and all(t == 1.0 for _, t in calls[1:])
    # 4 candidates of each row that disagrees in one call, then the fifth of those that still disagree
    assert calls[1][0] == [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4
    assert calls[2][0] == [2, 3, 4] and len(calls) == 3

    calls.clear()
    drawn.update(dict.fromkeys(rounds, 0))
    plain = dataclasses.replace(findings, select="plain")
    assert brain3d.generate(z, plain) == [left, normal, normal, left, normal]
    assert len(calls) == 1
    brain3d.findings = None
    with pytest.raises(ValueError, match="findings head"):
        brain3d.generate(z, findings)


def test_the_detector_guide_holds_reports_to_the_side_cnn_on_the_volumes(brain3d, monkeypatch):
    """`generate.guide: detector`: the reports are held to what phase 1's side detector reads from the volumes
    (not to the findings head); it needs the detector and the volume of every row, and names what is missing."""
    import dataclasses

    import numpy as np

    from brain3d.models.side_cnn import LateralityCNN

    left, right = (f"A lesion in the {s} frontal lobe." for s in ("left", "right"))
    monkeypatch.setattr(
        Brain3D,
        "_sample",
        lambda self, z, decoding, seed: [left] * len(z) if z.shape[0] == 2 else [right] * len(z),
    )
    brain3d.findings = None  # the head is not read
    brain3d.detector = LateralityCNN([2], 1)
    calls = []

    def forward(self, x):  # "right" for every volume
        calls.append(tuple(x.shape))
        return torch.tensor([[0.0, 5.0, 0.0, 0.0]]).expand(len(x), -1)

    monkeypatch.setattr(LateralityCNN, "forward", forward)
    guided = dataclasses.replace(decoding(select="findings", candidates=4), guide="detector")
    volumes = [np.zeros((4, 6, 8), np.float32)] * 2
    z = torch.zeros(2, 32, 16)
    assert brain3d.wanted(z, "detector", volumes) == ["right", "right"]
    assert brain3d.generate(z, guided, volumes=volumes) == [right, right]  # resampled until it agrees
    assert calls and calls[0][0] == 2 and calls[0][2:] == (4, 6, 8)
    with pytest.raises(ValueError, match="volume of every row"):
        brain3d.generate(z, guided)
    with pytest.raises(ValueError, match="'head' or 'detector'"):
        brain3d.wanted(z, "oracle", volumes)
    brain3d.detector = None
    with pytest.raises(ValueError, match="side detector"):
        brain3d.generate(z, guided, volumes=volumes)
