"""AaPE-ViT: configuration, patch-embedding parameter counts, shapes of every patch embedding type, position
embeddings, masked-token dropping, classification, layer-wise lr decay, probing features, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_config
from huggingface_hub.errors import StrictDataclassError

from specpatch.configuration_aape_vit import AaPEViTConfig
from specpatch.masking import inverse_block_mask, mask_to_indices
from specpatch.modeling_aape_vit import (
    AaPEViTEmbeddings,
    AaPEViTForAudioClassification,
    AaPEViTForPreTraining,
    AaPEViTModel,
    sincos_position_embeddings_2d,
)
from specpatch.sblu import sblu_conv

PATCH_EMBEDDING_TYPES = ["standard", "aape_nonadaptive", "aape"]


def tiny(**kwargs) -> AaPEViTConfig:
    """128 mel bins x 64 frames, 16 x 16 patches: an 8 x 4 grid of 32 tokens (the shared tiny AaPE-ViT, 2 views)."""
    return tiny_config(
        "aape_vit", **{"num_views": 2, "mask_block_size_range": [2, 3], "contrastive_projection_dim": 16, **kwargs}
    )


def test_defaults_are_vit_b_on_8_x_38_patches():
    config = AaPEViTConfig()
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (768, 12, 12)
    assert config.patch_grid == (8, 38) and config.num_patches == 304 and config.layer_norm_eps == 1e-6
    assert config.patch_embedding_type == "aape" and config.lambda_num_layers == 3


def test_patch_embedding_parameter_counts_match_the_paper():
    counts = {
        kind: AaPEViTEmbeddings(AaPEViTConfig(patch_embedding_type=kind)).num_patch_embedding_parameters()
        for kind in PATCH_EMBEDDING_TYPES
    }
    # Standard: Conv2d(1, 768, 16, 16) + 304 x 768 position embeddings = the paper's 0.43M exactly.
    assert counts["standard"] == 16 * 16 * 768 + 768 + 304 * 768 == 430_848
    # Tables V-VI: 1.16M non-adaptive, 1.86M adaptive (to the paper's two decimals).
    assert round(counts["aape_nonadaptive"] / 1e6, 2) == 1.16
    assert round(counts["aape"] / 1e6, 2) == 1.86
    # Lambda encoder with L = 3: Linear(768, 128) + 3 ViT blocks of width 128 + LayerNorm + Linear(128, 32).
    lambda_encoder = AaPEViTEmbeddings(AaPEViTConfig()).lambda_encoder
    block = 4 * 128 * 128 + 4 * 128 + 2 * 128 * 512 + 512 + 128 + 4 * 128
    assert sum(p.numel() for p in lambda_encoder.parameters()) == 768 * 128 + 128 + 3 * block + 256 + 128 * 32 + 32


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"patch_embedding_type": "fancy"}, "patch_embedding_type"),
        ({"hidden_size": 30, "num_attention_heads": 4}, "divisible"),
        ({"sblu_stride": 3}, "sblu_stride"),
        ({"num_mel_bins": 120}, "num_mel_bins"),
        ({"mask_ratio": 1.0}, "mask_ratio"),
        ({"mask_block_size_range": [4, 2]}, "mask_block_size_range"),
        ({"ema_momentum_start": 0.999, "ema_momentum_end": 0.99}, "EMA"),
        ({"mask_block_placement": "corner"}, "mask_block_placement"),
        ({"mask_prob_adjust": -0.1}, "mask_prob_adjust"),
        ({"teacher_target_layer_output": "attention"}, "teacher_target_layer_output"),
        ({"teacher_average_top_k_layers": 13}, "teacher_average_top_k_layers"),
        ({"masked_sblu_input": "zeros"}, "masked_sblu_input"),
        ({"utterance_loss_reduction": "max"}, "utterance_loss_reduction"),
        ({"contrastive_negatives": "all"}, "contrastive_negatives"),
        ({"utterance_target_instance_norm_axis": "time"}, "utterance_target_instance_norm_axis"),
    ],
)
def test_invalid_configs_raise(fields, message):
    with pytest.raises(StrictDataclassError, match=message):
        AaPEViTConfig(**fields)


def test_config_round_trip(tmp_path):
    config = tiny(patch_embedding_type="aape_nonadaptive", patch_size=(16, 8))
    config.save_pretrained(tmp_path)
    reloaded = AaPEViTConfig.from_pretrained(tmp_path)
    assert reloaded.patch_size == [16, 8] and reloaded.mask_block_size_range == [2, 3]
    assert reloaded.patch_embedding_type == "aape_nonadaptive" and reloaded.patch_grid == (8, 8)


@pytest.mark.parametrize("kind", PATCH_EMBEDDING_TYPES)
def test_shapes_of_every_patch_embedding_type(kind):
    config = tiny(patch_embedding_type=kind)
    model = AaPEViTModel(config).eval()
    inputs = torch.randn(3, 64, 128)
    with torch.no_grad():
        output = model(inputs, output_hidden_states=True, output_attentions=True)
    assert output.last_hidden_state.shape == (3, 33, 32) and output.pooler_output.shape == (3, 32)
    assert len(output.hidden_states) == 3 and output.attentions[0].shape == (3, 4, 33, 33)
    # Masked tokens are dropped: 2 views per clip, 26 of 32 tokens masked.
    mask = inverse_block_mask(3, (8, 4), 0.8, 2, (2, 3), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        masked = model(inputs, bool_masked_pos=mask)
    assert masked.last_hidden_state.shape == (6, 1 + 6, 32)
    assert torch.isfinite(masked.last_hidden_state).all()
    assert (model.embeddings.sblu is None) == (kind == "standard")
    assert (model.embeddings.lambda_encoder is None) == (kind != "aape")


@pytest.mark.parametrize("kind", ["standard", "aape_nonadaptive"])
def test_dropping_tokens_keeps_the_visible_embeddings_of_non_adaptive_stems(kind):
    # "full": the SBLU sees the whole spectrogram, so dropping tokens is the only difference
    embeddings = AaPEViTModel(tiny(patch_embedding_type=kind, masked_sblu_input="full")).embeddings.eval()
    inputs = torch.randn(2, 64, 128)
    mask = inverse_block_mask(2, (8, 4), 0.75, 3, (2, 3), generator=torch.Generator().manual_seed(1))
    visible, _ = mask_to_indices(mask)
    with torch.no_grad():
        full, _ = embeddings(inputs)
        dropped, _ = embeddings(inputs, mask)
    full = full.repeat_interleave(3, 0)
    expected = torch.cat([full[:, :1], torch.stack([full[r, 1:][visible[r]] for r in range(6)])], 1)
    torch.testing.assert_close(dropped, expected)


@pytest.mark.parametrize("masked_sblu_input", ["full", "visible"])
def test_adaptive_embeddings_of_a_masked_input_match_an_explicit_reference(masked_sblu_input):
    """With a mask the Lambda encoder sees the visible tokens only, masked positions get neutral (zero) raw kernel
    parameters, and the SBLU runs on the whole spectrogram ("full") or on the visible patches only ("visible":
    masked patches zeroed, GroupNorm statistics over visible frames); the visible tokens are then fused."""
    embeddings = AaPEViTModel(tiny(masked_sblu_input=masked_sblu_input)).embeddings.eval()
    inputs = torch.randn(2, 64, 128)
    mask = inverse_block_mask(2, (8, 4), 0.75, 1, (2, 3), generator=torch.Generator().manual_seed(2))
    visible, _ = mask_to_indices(mask)
    with torch.no_grad():
        result, _ = embeddings(inputs, mask)
        standard, _ = embeddings.patch_embeddings(inputs)
        position = embeddings.position_embeddings.expand(2, -1, -1)
        take = lambda x: torch.stack([x[r][visible[r]] for r in range(2)])  # noqa: E731
        raw = torch.randn(2, 32, 8) * 3
        raw[torch.arange(2)[:, None], visible] = embeddings.lambda_encoder(take(standard + position))
        if masked_sblu_input == "full":
            sblu_tokens = embeddings.sblu(inputs.transpose(1, 2), *embeddings.sblu.parameters_from_tokens(raw))
        else:
            sblu_tokens = _visible_sblu_reference(embeddings.sblu, inputs.transpose(1, 2), raw, ~mask.view(2, 8, 4))
        expected = embeddings.fusion(take(standard), take(sblu_tokens)) + take(position)
    torch.testing.assert_close(result[:, 1:], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(result[:, 0], embeddings.cls_token[0].expand(2, -1))  # the class token comes first
    # The visible tokens' kernels come from visible tokens only: changing masked patches of the input changes them
    # only through the SBLU's receptive field and GroupNorm, never through the Lambda encoder.
    lambda_inputs = []
    hook = embeddings.lambda_encoder.register_forward_hook(lambda module, args, output: lambda_inputs.append(args[0]))
    with torch.no_grad():
        embeddings(inputs, mask)
    hook.remove()
    assert lambda_inputs[0].shape == (2, 8, 32)


def _visible_sblu_reference(sblu, spectrogram, raw, visible):
    """The SBLU of one masked view written out: masked patches zeroed, the SBLU's own stages, and a GroupNorm whose
    statistics come from the visible frames of each frequency patch, clip by clip and patch by patch."""
    patch_f, patch_t = sblu.patch_size
    bins = visible.repeat_interleave(patch_f, 1).repeat_interleave(patch_t, 2)
    spectrogram = spectrogram[..., : visible.shape[2] * patch_t] * bins
    decay, frequency = sblu.parameters_from_tokens(raw)
    hidden = sblu.input_map(sblu.highpass(spectrogram))
    hidden = sblu_conv(
        hidden,
        decay.repeat_interleave(sblu.frames_per_patch, -1),
        frequency.repeat_interleave(sblu.frames_per_patch, -1),
        sblu.kernel_size,
        sblu.stride,
    )
    hidden = sblu.output_map(hidden)
    normed = torch.empty_like(hidden)
    width = sblu.output_dim
    for b in range(hidden.shape[0]):
        for f in range(sblu.num_frequency_patches):
            group = hidden[b, f * width : (f + 1) * width]
            frames = visible[b, f].repeat_interleave(sblu.frames_per_patch)
            if not frames.any():  # every token of this frequency patch is masked (and dropped)
                normed[b, f * width : (f + 1) * width] = 0.0
                continue
            values = group[:, frames].double()
            mean, variance = values.mean(), values.var(unbiased=False)
            normed[b, f * width : (f + 1) * width] = ((group.double() - mean) / torch.sqrt(variance + 1e-5)).float()
    normed = normed * sblu.norm.weight[:, None] + sblu.norm.bias[:, None]
    tokens = sblu.patchify(normed).view(hidden.shape[0], sblu.num_frequency_patches, width, -1)
    return tokens.permute(0, 1, 3, 2).reshape(hidden.shape[0], -1, width)


def test_custom_initialisation_reaches_parameterless_submodules():
    # transformers skips `_init_weights` for custom-code modules without parameters of their own (the adaptive SBLU,
    # the Lambda encoder): the embeddings initialise them.
    embeddings = AaPEViTModel(tiny()).embeddings
    torch.testing.assert_close(embeddings.sblu.patchify.weight, torch.full_like(embeddings.sblu.patchify.weight, 0.25))
    decay, frequency = embeddings.sblu.parameters_from_tokens(
        embeddings.lambda_encoder.output_projection.bias.expand(1, 32, 8)
    )
    torch.testing.assert_close(decay, torch.full_like(decay, 2 * embeddings.sblu.decay_min))
    low, high = embeddings.sblu.frequency_low, embeddings.sblu.frequency_high
    expected = low + (high - low) * (torch.arange(4.0) + 0.5) / 4
    torch.testing.assert_close(frequency[0, :4, 0], expected)


def test_sincos_position_embeddings_match_a_slow_reference():
    dim, grid = 16, (3, 5)
    table = sincos_position_embeddings_2d(dim, grid)[0]
    for f in range(grid[0]):
        for t in range(grid[1]):
            expected = []
            for position in (t, f):
                omegas = [1.0 / 10000 ** (k / (dim // 4)) for k in range(dim // 4)]
                expected += [math.sin(position * w) for w in omegas] + [math.cos(position * w) for w in omegas]
            torch.testing.assert_close(table[f * grid[1] + t], torch.tensor(expected))
    model = AaPEViTModel(tiny())
    assert not model.embeddings.position_embeddings.requires_grad
    torch.testing.assert_close(model.embeddings.position_embeddings, sincos_position_embeddings_2d(32, (8, 4)))
    assert AaPEViTModel(tiny(position_embedding_type="learned")).embeddings.position_embeddings.requires_grad


def test_position_embeddings_are_truncated_for_shorter_and_time_interpolated_for_longer_inputs():
    model = AaPEViTModel(tiny(position_embedding_type="learned", max_length=128)).eval()
    embeddings = model.embeddings
    grid_f, grid_t = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    with torch.no_grad():  # value 10 * f + t in every channel
        embeddings.position_embeddings.copy_((10 * grid_f + grid_t).reshape(1, 64, 1).expand(1, 64, 32))
    shorter = embeddings.position_embeddings_for((8, 5)).view(8, 5, 32)
    torch.testing.assert_close(shorter, embeddings.position_embeddings.view(8, 8, 32)[:, :5])
    longer = embeddings.position_embeddings_for((8, 16)).view(8, 16, 32)
    # Frequency rows untouched; time linearly interpolated (half-pixel centres, edges clamped).
    time = ((torch.arange(16.0) + 0.5) * 8 / 16 - 0.5).clamp(0, 7)
    expected = (10 * torch.arange(8.0)[:, None] + time[None, :])[..., None].expand(8, 16, 32)
    torch.testing.assert_close(longer, expected)
    with torch.no_grad():
        assert model(torch.randn(1, 80, 128)).last_hidden_state.shape == (1, 1 + 8 * 5, 32)
        assert model(torch.randn(1, 256, 128)).last_hidden_state.shape == (1, 1 + 8 * 16, 32)


def test_invalid_inputs_raise():
    model = AaPEViTModel(tiny()).eval()
    with pytest.raises(ValueError, match="input_values"):
        model(torch.randn(2, 64, 64))
    with pytest.raises(ValueError, match="bool_masked_pos"):
        model(torch.randn(2, 64, 128), bool_masked_pos=torch.zeros(3, 32, dtype=torch.bool))
    with pytest.raises(ValueError, match="same number"):
        mask = torch.zeros(2, 32, dtype=torch.bool)
        mask[0, 0] = True
        model(torch.randn(2, 64, 128), bool_masked_pos=mask)


def test_classification_loss_probe_features_and_gradient_checkpointing():
    config = tiny(num_labels=3)
    model = AaPEViTForAudioClassification(config).eval()
    inputs = torch.randn(4, 64, 128)
    output = model(inputs, labels=torch.tensor([0, 2, 1, 0]))
    assert output.logits.shape == (4, 3) and output.loss.ndim == 0
    expected = torch.nn.functional.cross_entropy(output.logits, torch.tensor([0, 2, 1, 0]))
    torch.testing.assert_close(output.loss, expected)
    features = model.get_probe_features(inputs)
    hidden = model.aape_vit(inputs).last_hidden_state
    torch.testing.assert_close(features, torch.cat([hidden[:, 0], hidden[:, 1:].mean(1)], -1))
    assert features.shape == (4, 64) and not features.requires_grad

    model.train()
    model.activation_checkpointing_enable()
    model(inputs, labels=torch.tensor([0, 2, 1, 0])).loss.backward()
    assert model.aape_vit.encoder.layers[0].attention.qkv.weight.grad is not None
    assert model.aape_vit.embeddings.lambda_encoder.output_projection.weight.grad is not None


def test_layerwise_lr_decay_groups():
    model = AaPEViTForAudioClassification(tiny(num_labels=3))
    groups = model.get_layerwise_lr_decay_groups(learning_rate=1e-3, weight_decay=0.05, layer_decay=0.5)
    grouped = [p for group in groups for p in group["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(grouped) == len(trainable) and {id(p) for p in grouped} == {id(p) for p in trainable}
    by_id = {id(p): group for group in groups for p in group["params"]}
    named = dict(model.named_parameters())
    # L = 2 encoder layers: embeddings 0, layers 1..2, head 3 -> lr * 0.5 ** (3 - id)
    for name, layer_id in [
        ("aape_vit.embeddings.cls_token", 0),
        ("aape_vit.embeddings.sblu.input_map.weight", 0),
        ("aape_vit.embeddings.lambda_encoder.encoder.layers.0.mlp.fc1.weight", 0),
        ("aape_vit.encoder.layers.0.mlp.fc1.weight", 1),
        ("aape_vit.encoder.layers.1.attention.qkv.weight", 2),
        ("aape_vit.layernorm.weight", 3),
        ("classifier.dense.weight", 3),
    ]:
        group = by_id[id(named[name])]
        assert group["layer_id"] == layer_id, name
        assert group["lr"] == pytest.approx(1e-3 * 0.5 ** (3 - layer_id))
    assert by_id[id(named["aape_vit.encoder.layers.0.mlp.fc1.weight"])]["weight_decay"] == 0.05
    for name in (
        "aape_vit.encoder.layers.0.mlp.fc1.bias",
        "aape_vit.embeddings.cls_token",
        "classifier.layernorm.weight",
    ):
        assert by_id[id(named[name])]["weight_decay"] == 0.0
    torch.optim.AdamW(groups)  # valid optimizer groups


def test_pretraining_checkpoint_loads_into_classification_and_base_models(tmp_path):
    config = tiny()
    pretraining = AaPEViTForPreTraining(config)
    with torch.no_grad():  # make student and teacher differ from a fresh initialisation and from each other
        for parameter in pretraining.aape_vit.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    pretraining.save_pretrained(tmp_path)

    classifier = AaPEViTForAudioClassification.from_pretrained(tmp_path, num_labels=5)
    assert classifier.config.num_labels == 5 and not hasattr(classifier, "teacher")
    student = pretraining.aape_vit.state_dict()
    for name, value in classifier.aape_vit.state_dict().items():
        torch.testing.assert_close(value, student[name], rtol=0, atol=0, msg=name)
    assert classifier.classifier.dense.weight.shape == (5, 32)
    head = classifier.classifier.dense.weight  # freshly initialised (PyTorch's default: uniform +-1/sqrt(32))
    assert 0 < head.abs().max() <= 32**-0.5 and head.std() > 0.5 * 32**-0.5 / 3**0.5

    base = AaPEViTModel.from_pretrained(tmp_path)
    torch.testing.assert_close(
        base.encoder.layers[1].mlp.fc2.weight, pretraining.aape_vit.encoder.layers[1].mlp.fc2.weight
    )

    reloaded = AaPEViTForPreTraining.from_pretrained(tmp_path)
    for name, value in pretraining.teacher.state_dict().items():
        torch.testing.assert_close(reloaded.teacher.state_dict()[name], value, rtol=0, atol=0, msg=name)
    assert not any(p.requires_grad for p in reloaded.teacher.parameters())
    assert not reloaded.aape_vit.embeddings.position_embeddings.requires_grad
    assert reloaded.aape_vit.encoder.layers[0].mlp.fc1.weight.requires_grad


def test_teacher_starts_as_a_copy_of_the_student_also_from_an_encoder_checkpoint(tmp_path):
    fresh = AaPEViTForPreTraining(tiny())
    student = fresh.aape_vit.state_dict()
    for name, value in fresh.teacher.state_dict().items():
        torch.testing.assert_close(value, student[name], rtol=0, atol=0)
    assert "embeddings.cls_token" not in dict(fresh.teacher.named_parameters())  # the teacher has no class token

    classifier = AaPEViTForAudioClassification(tiny(num_labels=2))
    classifier.save_pretrained(tmp_path)
    continued = AaPEViTForPreTraining.from_pretrained(tmp_path)
    encoder = classifier.aape_vit.state_dict()
    for name, value in continued.teacher.state_dict().items():
        torch.testing.assert_close(value, encoder[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("kind", PATCH_EMBEDDING_TYPES)
def test_save_and_load_give_identical_logits(tmp_path, kind):
    # Loading builds the model on the meta device: non-persistent buffers (the SBLU high-pass taps) must be rebuilt.
    model = AaPEViTForAudioClassification(tiny(patch_embedding_type=kind, num_labels=3)).eval()
    model.save_pretrained(tmp_path)
    reloaded = AaPEViTForAudioClassification.from_pretrained(tmp_path).eval()
    inputs = torch.randn(2, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(inputs).logits, model(inputs).logits, rtol=0, atol=0)
