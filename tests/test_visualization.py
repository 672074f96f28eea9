"""Attention rollout, patch-to-cell maps, AaPE SBLU parameters, masking examples, efficiency rows and the PNG figures."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import soundfile
import torch
from conftest import tiny_config

from specpatch import (
    AaPEViTForAudioClassification,
    FFTPASTConfig,
    FFTPASTForAudioClassification,
    FFTPAuMForAudioClassification,
    SpecMask,
)
from specpatch.feature_extraction_specpatch import SpecPatchFeatureExtractor
from specpatch.visualization import (
    aape_sblu_parameters,
    attention_rollout,
    attention_rollout_map,
    count_gmacs,
    efficiency_from_benchmarks,
    masking_examples,
    measure_patching_efficiency,
    num_prefix_tokens,
    patch_scores_to_spectrogram,
    plot_aape_parameters,
    plot_attention_rollout,
    plot_masking_comparison,
    plot_patch_efficiency,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _random_attentions(layers, batch, heads, tokens, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, tokens, tokens, generator=generator).softmax(-1) for _ in range(layers)]


def _rollout_reference(attentions, prefix, residual_weight):
    """Abnar & Zuidema's rollout, one clip and one layer at a time, in float64 numpy with explicit loops."""
    attentions = [a.double().numpy() for a in attentions]
    batch, heads, tokens, _ = attentions[0].shape
    out = np.zeros((batch, tokens - prefix))
    for b in range(batch):
        rollout = np.eye(tokens)
        for layer in attentions:
            mean = sum(layer[b, h] for h in range(heads)) / heads
            mixed = residual_weight * np.eye(tokens) + (1 - residual_weight) * mean
            for row in range(tokens):
                mixed[row] /= mixed[row].sum()
            rollout = mixed @ rollout  # later layers act on the left: flow from the inputs up to layer l
        for p in range(tokens - prefix):
            out[b, p] = sum(rollout[q, prefix + p] for q in range(prefix)) / prefix
    return out


@pytest.mark.parametrize("prefix, residual_weight", [(2, 0.5), (1, 0.5), (1, 0.0), (2, 0.8)])
def test_attention_rollout_matches_explicit_reference(prefix, residual_weight):
    attentions = _random_attentions(layers=3, batch=2, heads=3, tokens=prefix + 7)
    scores = attention_rollout(attentions, prefix, residual_weight)
    np.testing.assert_allclose(scores.numpy(), _rollout_reference(attentions, prefix, residual_weight), rtol=1e-5)


def test_attention_rollout_identity_attention_gives_no_flow():
    # Every token attending only to itself: nothing flows from the patches into the class tokens.
    attentions = [torch.eye(9).expand(2, 4, 9, 9) for _ in range(3)]
    assert torch.count_nonzero(attention_rollout(attentions, 2)) == 0


def test_attention_rollout_uniform_attention_spreads_evenly():
    # Uniform attention: patches are exchangeable, so they get equal relevance; rows stay stochastic.
    tokens, prefix = 10, 2
    attentions = [torch.full((1, 2, tokens, tokens), 1.0 / tokens) for _ in range(4)]
    scores = attention_rollout(attentions, prefix)
    torch.testing.assert_close(scores, scores[:, :1].expand_as(scores))
    assert 0 < scores.sum() < 1  # the prefix tokens keep the rest (their own residual share)


def test_attention_rollout_needs_attentions():
    with pytest.raises(ValueError, match="output_attentions"):
        attention_rollout([], 1)


@pytest.mark.parametrize(
    "patch, stride, frames, mel",
    [((4, 4), (3, 3), 20, 12), ((12, 5), (12, 2), 21, 12), ((4, 4), (4, 4), 16, 12)],
)
def test_patch_scores_to_spectrogram_matches_loop(patch, stride, frames, mel):
    grid = ((mel - patch[0]) // stride[0] + 1, (frames - patch[1]) // stride[1] + 1)
    scores = torch.rand(2, grid[0] * grid[1], generator=torch.Generator().manual_seed(1))
    total, count = np.zeros((2, frames, mel)), np.zeros((frames, mel))
    for f in range(grid[0]):
        for t in range(grid[1]):
            cells = (slice(t * stride[1], t * stride[1] + patch[1]), slice(f * stride[0], f * stride[0] + patch[0]))
            total[(slice(None), *cells)] += scores[:, f * grid[1] + t, None, None].numpy()  # frequency-major order
            count[cells] += 1
    expected = np.where(count > 0, total / np.maximum(count, 1), 0.0)
    result = patch_scores_to_spectrogram(scores, patch, stride, frames, mel)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-6)


def test_num_prefix_tokens():
    assert num_prefix_tokens(tiny_config("fftp_ast")) == 2
    assert num_prefix_tokens(tiny_config("aape_vit")) == 1
    with pytest.raises(ValueError, match="attention maps"):
        num_prefix_tokens(tiny_config("fftp_aum"))


def test_rollout_map_of_fftp_ast_is_constant_over_mel_and_matches_rollout():
    model = FFTPASTForAudioClassification(tiny_config("fftp_ast")).eval()  # patches 128 x 10, time stride 4
    inputs = torch.randn(1, 64, 128)
    relevance = attention_rollout_map(model, inputs)
    assert relevance.shape == (1, 64, 128)
    torch.testing.assert_close(relevance, relevance[..., :1].expand_as(relevance))  # full-frequency patches
    with torch.no_grad():
        scores = attention_rollout(model(inputs, output_attentions=True).attentions, 2)
    # 14 patches of 10 frames every 4: frames 0-3 lie in the first patch only, 58-61 in the last only, 62-63 in none.
    torch.testing.assert_close(relevance[0, :4, 0], scores[0, 0].expand(4))
    torch.testing.assert_close(relevance[0, 58:62, 0], scores[0, -1].expand(4))
    assert (relevance[0, 62:] == 0).all()


def test_rollout_map_of_square_ast_leaves_uncovered_cells_empty():
    config = FFTPASTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, patch_size=16,
        frequency_stride=10, time_stride=10, max_length=64,
    )  # fmt: skip
    relevance = attention_rollout_map(FFTPASTForAudioClassification(config).eval(), torch.randn(1, 64, 128))
    assert (relevance[0, :, 126:] == 0).all() and (relevance[0, 56:, :] == 0).all()  # beyond the last patches
    assert (relevance[0, :56, :126] > 0).all()


def test_rollout_map_of_aape_vit_is_blockwise():
    model = AaPEViTForAudioClassification(tiny_config("aape_vit")).eval()
    relevance = attention_rollout_map(model, torch.randn(1, 64, 128))[0]
    blocks = relevance.reshape(4, 16, 8, 16)  # (time patches, frames, frequency patches, mel bins)
    torch.testing.assert_close(blocks, blocks[:, :1, :, :1].expand_as(blocks))


def test_aape_sblu_parameters_are_the_lambda_encoders_bounded_estimates():
    model = AaPEViTForAudioClassification(tiny_config("aape_vit")).eval()
    with torch.no_grad():  # lay the Lambda encoder's raw outputs away from the initial constant bias
        model.aape_vit.embeddings.lambda_encoder.output_projection.weight.normal_(0, 1)
    inputs = torch.randn(2, 64, 128)
    parameters = aape_sblu_parameters(model, inputs)
    embeddings, sblu = model.aape_vit.embeddings, model.aape_vit.embeddings.sblu
    with torch.no_grad():
        tokens, grid = embeddings.patch_embeddings(inputs)
        raw = embeddings.lambda_encoder(tokens + embeddings.position_embeddings_for(grid))
    hidden = sblu.hidden_channels
    raw = raw.reshape(2, grid[0], grid[1], 2 * hidden).permute(0, 1, 3, 2)  # (batch, N_f, 2H, N_t)
    expected_decay = torch.nn.functional.softplus(raw[:, :, :hidden]) + sblu.decay_min
    expected_frequency = torch.pi / 16 + (torch.pi - torch.pi / 16) * torch.sigmoid(raw[:, :, hidden:])
    assert parameters["decay"].shape == (2, 8, hidden, 4) and parameters["grid"] == (8, 4)
    torch.testing.assert_close(parameters["decay"], expected_decay)
    torch.testing.assert_close(parameters["frequency"], expected_frequency)
    assert parameters["decay"].std() > 0.01  # input-dependent, not the initial constant
    assert parameters["frequency_band"] == pytest.approx((torch.pi / 16, torch.pi))


def test_aape_sblu_parameters_non_adaptive_and_standard():
    model = AaPEViTForAudioClassification(tiny_config("aape_vit", patch_embedding_type="aape_nonadaptive")).eval()
    parameters = aape_sblu_parameters(model, torch.randn(1, 64, 128))
    decay, frequency = model.aape_vit.embeddings.sblu.fixed_parameters()
    torch.testing.assert_close(parameters["frequency"][0, :, :, 2], frequency.detach().reshape(8, -1))
    torch.testing.assert_close(parameters["decay"], parameters["decay"][..., :1].expand_as(parameters["decay"]))
    standard = AaPEViTForAudioClassification(tiny_config("aape_vit", patch_embedding_type="standard"))
    with pytest.raises(ValueError, match="no SBLU"):
        aape_sblu_parameters(standard, torch.randn(1, 64, 128))
    with pytest.raises(ValueError, match="AaPE-ViT"):
        aape_sblu_parameters(FFTPASTForAudioClassification(tiny_config("fftp_ast")), torch.randn(1, 64, 128))


def test_masking_examples_mask_what_they_report():
    spectrogram = torch.randn(200, 128, generator=torch.Generator().manual_seed(0))
    examples = masking_examples(spectrogram, seed=3)
    (spec_mask_name, (masked, mask)), (augment_name, (augmented, augment_mask)) = examples.items()
    assert spec_mask_name.startswith("SpecMask") and augment_name.startswith("SpecAugment")
    assert int(mask.sum()) >= round(0.2 * 200 * 128)  # Algorithm 1 stops once the budget is reached
    torch.testing.assert_close(masked[~mask], spectrogram[~mask])
    assert torch.allclose(masked[mask], spectrogram.mean().expand(int(mask.sum())))
    # SpecAugment's mask is a union of full-height time bands and full-length frequency bands.
    rows, columns = augment_mask.all(1), augment_mask.all(0)
    torch.testing.assert_close(augment_mask, rows[:, None] | columns[None, :])
    again = masking_examples(spectrogram, seed=3)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(examples.values(), again.values()))


def test_count_gmacs_counts_linear_layers_and_patch_conv():
    config = tiny_config("fftp_ast", num_labels=5)  # 32 wide, 2 layers, MLP 64, 128 x 10 patches, stride 4
    model = FFTPASTForAudioClassification(config).eval()
    tokens, width, inner = config.num_patches + 2, 32, 64
    expected = tokens * 2 * (4 * width * width + 2 * width * inner) + config.num_patches * width * 1280 + width * 5
    assert count_gmacs(model, torch.randn(2, 64, 128)) == pytest.approx(expected / 1e9)


@pytest.mark.parametrize("bimamba_type", ["fo-bi", "bi-bi"])
def test_count_gmacs_of_fftp_aum_is_the_same_with_the_scan_stand_in(bimamba_type):
    model = FFTPAuMForAudioClassification(tiny_config("fftp_aum", bimamba_type=bimamba_type)).eval()
    inputs = torch.randn(1, 64, 128)
    with torch.no_grad():
        before = model(inputs).logits
    exact = count_gmacs(model, inputs, skip_selective_scan=False)
    assert count_gmacs(model, inputs) == exact > 0
    assert "_scan" not in vars(model.fftp_aum.layers[0].mixer)  # the real scan is back
    with torch.no_grad():
        torch.testing.assert_close(model(inputs).logits, before, rtol=0, atol=0)


def test_measure_patching_efficiency_rows():
    rows = measure_patching_efficiency(
        "fftp_ast",
        presets=["square-1212", "fftp-248"],
        config_overrides={
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
        },
        repeats=1,
    )
    assert [(r["config"], r["patches"]) for r in rows] == [("square-1212", 1212), ("fftp-248", 248)]
    assert all(r["gmacs"] > 0 and r["latency_s"] > 0 for r in rows)
    with pytest.raises(ValueError, match="presets"):
        measure_patching_efficiency("fftp_ast", presets=["fftp-1"])
    with pytest.raises(ValueError, match="model_type"):
        measure_patching_efficiency("aape_vit")


def _benchmark_json():
    patching = {
        "rows": [
            {"config": "square-1212", "patches": 1212, "gmacs_paper": 103.35, "gmacs_full": 130.0, "latency_s": 1.0},
            {"config": "fftp-248", "patches": 248, "gmacs_paper": 21.48, "gmacs_full": 22.0, "latency_s": 0.2},
        ]
    }
    aum = {
        "model": {"square-1212": {"patches": 1212, "latency_s": 0.5}, "fftp-96": {"patches": 96, "latency_s": 0.05}}
    }
    return patching, aum


def test_efficiency_from_benchmarks(tmp_path):
    patching, aum = _benchmark_json()
    (tmp_path / "p.json").write_text(json.dumps(patching))
    results = efficiency_from_benchmarks(tmp_path / "p.json", aum)
    assert results["FFTP-AST"][1] == {"config": "fftp-248", "patches": 248, "gmacs": 21.48, "latency_s": 0.2}
    assert results["FFTP-AuM"][1]["gmacs"] is None and results["FFTP-AuM"][1]["patches"] == 96
    with pytest.raises(ValueError, match="at least one"):
        efficiency_from_benchmarks()
    with pytest.raises(ValueError, match="rows"):
        efficiency_from_benchmarks({"model": {}})


def _assert_png(path):
    with open(path, "rb") as handle:
        data = handle.read()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 20_000, (path, len(data))


def test_figures_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    generator = torch.Generator().manual_seed(0)
    log_mel = torch.randn(120, 128, generator=generator)
    relevance = torch.rand(120, 128, generator=generator)
    _assert_png(plot_attention_rollout(log_mel, {"a": relevance, "b": relevance**2}, tmp_path / "r.png", 100))
    spec_mask = SpecMask(budget=3000, max_height=128, max_width=30)
    examples = masking_examples(log_mel, spec_mask=spec_mask)
    _assert_png(plot_masking_comparison(log_mel, examples, tmp_path / "m.png", title="masks"))
    model = AaPEViTForAudioClassification(tiny_config("aape_vit")).eval()
    parameters = aape_sblu_parameters(model, torch.randn(1, 64, 128))
    _assert_png(plot_aape_parameters(parameters, tmp_path / "a.png", log_mel=log_mel[:64]))
    _assert_png(plot_patch_efficiency(efficiency_from_benchmarks(*_benchmark_json()), tmp_path / "sub" / "e.png"))
    with pytest.raises(ValueError, match="shape"):
        plot_attention_rollout(log_mel, {"a": relevance[:10]}, tmp_path / "bad.png")


def _load_script():
    spec = importlib.util.spec_from_file_location("visualize_script", os.path.join(REPO, "examples", "visualize.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_visualize_cli_on_saved_checkpoints(tmp_path):
    pytest.importorskip("matplotlib")
    script = _load_script()
    audio = script.synthetic_clip(seconds=0.7, seed=1)
    soundfile.write(tmp_path / "clip.wav", audio, 16000)
    for name, config, frontend in (
        ("ast", tiny_config("fftp_ast"), "kaldi"),
        ("aape", tiny_config("aape_vit"), "logmel"),
    ):
        model_class = FFTPASTForAudioClassification if name == "ast" else AaPEViTForAudioClassification
        model_class(config).save_pretrained(tmp_path / name)
        SpecPatchFeatureExtractor(max_length=64, frontend=frontend).save_pretrained(tmp_path / name)
    clip = str(tmp_path / "clip.wav")
    rollout = script.main(
        ["rollout", "--model", f"FFTP={tmp_path / 'ast'}", "--model", str(tmp_path / "aape"), "--audio", clip,
         "--output", str(tmp_path / "rollout.png")]
    )  # fmt: skip
    aape = script.main(
        ["aape", "--model", str(tmp_path / "aape"), "--audio", clip, "--output", str(tmp_path / "a.png")]
    )
    masks = script.main(["masks", "--audio", clip, "--output", str(tmp_path / "m.png")])
    patching, aum = _benchmark_json()
    (tmp_path / "p.json").write_text(json.dumps(patching))
    (tmp_path / "aum.json").write_text(json.dumps(aum))
    efficiency = script.main(
        ["efficiency", "--patching-json", str(tmp_path / "p.json"), "--aum-json", str(tmp_path / "aum.json"),
         "--aum-size", "none", "--output", str(tmp_path / "e.png"), "--save-json", str(tmp_path / "rows.json")]
    )  # fmt: skip
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert sorted(rows) == ["FFTP-AST (ViT-B)", "FFTP-AuM"]
    assert [row["gmacs"] for row in rows["FFTP-AuM"]] == [None, None]  # bench_aum counts no GMACs
    aum_rows = [{"config": "fftp-96", "patches": 96, "gmacs": None, "latency_s": 0.1}]
    script.fill_aum_gmacs(aum_rows, "tiny")  # what the default --aum-size tiny adds
    assert 0.1 < aum_rows[0]["gmacs"] < 2
    run_all_json = {"raw": {"patching": {"data": patching}, "aum": {"data": aum}}}
    (tmp_path / "run_all.json").write_text(json.dumps(run_all_json))
    efficiency += script.main(
        ["efficiency", "--run-all-json", str(tmp_path / "run_all.json"), "--aum-size", "none", "--output",
         str(tmp_path / "e2.png")]
    )  # fmt: skip
    for path in rollout + aape + masks + efficiency:
        _assert_png(path)
