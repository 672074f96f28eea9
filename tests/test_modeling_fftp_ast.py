"""FFTP-AST: patch counts, equivalence with transformers' AST, outputs, losses, checkpointing, initialisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from huggingface_hub.errors import StrictDataclassError
from transformers import ASTConfig, ASTForAudioClassification

from specpatch import FFTPASTConfig, FFTPASTForAudioClassification, FFTPASTModel
from specpatch.configuration_patching import TABLE_II_NUM_PATCHES


@pytest.mark.parametrize("preset, expected", sorted(TABLE_II_NUM_PATCHES.items()))
def test_table_ii_patch_counts(preset, expected):
    config = FFTPASTConfig.from_preset(preset, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    assert config.num_patches == expected
    model = FFTPASTModel(config).eval()
    with torch.no_grad():
        output = model(torch.randn(1, config.max_length, config.num_mel_bins))
    # class + distillation tokens precede the patches
    assert output.last_hidden_state.shape == (1, expected + 2, 16)


def test_default_config_is_the_papers_best_fftp_setting():
    config = FFTPASTConfig()
    assert config.is_full_frequency and config.num_patches == 991 and config.hidden_size == 768


@pytest.mark.parametrize(
    "fields, message",
    [({"hidden_size": 30, "num_attention_heads": 4}, "divisible"), ({"patch_size": (200, 10)}, "frequency patch")],
)
def test_invalid_configs_raise(fields, message):
    with pytest.raises(StrictDataclassError, match=message):
        FFTPASTConfig(**fields)


def _random_ast(num_labels=5, **kwargs):
    config = ASTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_length=100,
        num_labels=num_labels,
        **kwargs,
    )
    ast = ASTForAudioClassification(config).eval()
    with torch.no_grad():  # transformers zero-initialises tokens and positions: make them informative
        for name, parameter in ast.named_parameters():
            if "token" in name or "position" in name or "bias" in name:
                parameter.normal_(0, 0.5)
    return ast


def test_from_ast_object_gives_the_same_logits():
    ast = _random_ast()
    model = FFTPASTForAudioClassification.from_ast(ast).eval()
    inputs = torch.randn(3, 100, 128)
    with torch.no_grad():
        expected = ast(inputs).logits
        logits = model(inputs).logits
    assert expected.std() > 1e-2  # a meaningful comparison, not two constant outputs
    assert (logits - expected).abs().max() <= 1e-4
    assert model.config.num_patches == 12 * 9


def test_from_ast_checkpoint_directory(tmp_path):
    ast = _random_ast(qkv_bias=False)
    ast.save_pretrained(tmp_path)
    model = FFTPASTForAudioClassification.from_ast(str(tmp_path)).eval()
    inputs = torch.randn(2, 100, 128)
    with torch.no_grad():
        assert (model(inputs).logits - ast(inputs).logits).abs().max() <= 1e-4
    assert model.config.id2label == ast.config.id2label


def test_from_ast_to_fftp_patching_interpolates_positions():
    ast = _random_ast()
    model = FFTPASTForAudioClassification.from_ast(
        ast, patch_size=(128, 10), frequency_stride=128, time_stride=4, max_length=100
    )
    assert model.config.num_patches == 23
    assert model.fftp_ast.embeddings.position_embeddings.shape == (1, 25, 32)
    assert model.fftp_ast.embeddings.patch_embeddings.projection.weight.shape == (32, 1, 128, 10)
    # prefix tokens are carried over unchanged; the single frequency row averages AST's 12 rows
    ast_positions = ast.audio_spectrogram_transformer.embeddings.position_embeddings
    torch.testing.assert_close(model.fftp_ast.embeddings.position_embeddings[:, :2], ast_positions[:, :2])
    assert model(torch.randn(1, 100, 128)).logits.shape == (1, 5)


def test_eager_and_sdpa_agree_and_attentions_are_returned():
    model = FFTPASTForAudioClassification(tiny_config("fftp_ast", num_labels=3)).eval()
    inputs = torch.randn(2, 64, 128)
    with torch.no_grad():
        plain = model(inputs)
        detailed = model(inputs, output_attentions=True, output_hidden_states=True)
    torch.testing.assert_close(plain.logits, detailed.logits, atol=1e-5, rtol=1e-5)
    tokens = model.config.num_patches + 2
    assert len(detailed.hidden_states) == model.config.num_hidden_layers + 1
    assert len(detailed.attentions) == model.config.num_hidden_layers
    assert detailed.attentions[0].shape == (2, 4, tokens, tokens)
    torch.testing.assert_close(detailed.attentions[0].sum(-1), torch.ones(2, 4, tokens))
    assert plain.attentions is None and plain.hidden_states is None


def test_tuple_outputs_match_dataclass_outputs():
    model = FFTPASTForAudioClassification(tiny_config("fftp_ast", num_labels=3)).eval()
    inputs, labels = torch.randn(2, 64, 128), torch.tensor([0, 2])
    with torch.no_grad():
        as_tuple = model(inputs, labels=labels, return_dict=False)
        as_output = model(inputs, labels=labels)
    torch.testing.assert_close(as_tuple[0], as_output.loss)
    torch.testing.assert_close(as_tuple[1], as_output.logits)


def test_losses_follow_problem_type():
    inputs = torch.randn(4, 64, 128)
    single = FFTPASTForAudioClassification(tiny_config("fftp_ast", num_labels=3))
    labels = torch.tensor([0, 1, 2, 1])
    output = single(inputs, labels=labels)
    torch.testing.assert_close(output.loss, F.cross_entropy(output.logits, labels))
    assert single.config.problem_type == "single_label_classification"

    multi = FFTPASTForAudioClassification(
        tiny_config("fftp_ast", num_labels=3, problem_type="multi_label_classification")
    )
    targets = torch.tensor([[1.0, 0, 1], [0, 0, 0], [0.3, 0.7, 0], [1, 1, 1]])
    output = multi(inputs, labels=targets)
    torch.testing.assert_close(output.loss, F.binary_cross_entropy_with_logits(output.logits, targets))
    with pytest.raises(ValueError, match="multi-hot"):
        multi(inputs, labels=labels)


def test_gradient_checkpointing_gives_the_same_gradients():
    config = tiny_config("fftp_ast", num_labels=3)
    inputs, labels = torch.randn(2, 64, 128), torch.tensor([0, 2])
    reference = FFTPASTForAudioClassification(config)
    checkpointed = FFTPASTForAudioClassification(config)
    checkpointed.load_state_dict(reference.state_dict())
    checkpointed.activation_checkpointing_enable()
    assert checkpointed.is_activation_checkpointing
    reference.train(), checkpointed.train()
    reference(inputs, labels=labels).loss.backward()
    checkpointed(inputs, labels=labels).loss.backward()
    for (name, p), q in zip(reference.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_other_input_lengths_truncate_or_interpolate_positions():
    model = FFTPASTModel(tiny_config("fftp_ast")).eval()
    embeddings = model.embeddings
    shorter = embeddings.position_embeddings_for((1, 10))
    torch.testing.assert_close(shorter, embeddings.position_embeddings[:, :12])
    longer = embeddings.position_embeddings_for((1, 30))
    assert longer.shape == (1, 32, 32)
    with torch.no_grad():
        assert model(torch.randn(1, 50, 128)).last_hidden_state.shape[1] == (50 - 10) // 4 + 1 + 2


def test_wrong_input_shape_is_explained():
    model = FFTPASTModel(tiny_config("fftp_ast"))
    with pytest.raises(ValueError, match=r"\(batch, frames, 128\)"):
        model(torch.randn(1, 128, 64))
    with pytest.raises(ValueError, match="fewer than the time patch size"):
        model(torch.randn(1, 5, 128))


def test_parameters_missing_from_a_checkpoint_are_initialised(tmp_path):
    model = FFTPASTForAudioClassification(tiny_config("fftp_ast", num_labels=3))
    state = {k: v for k, v in model.state_dict().items() if "position_embeddings" not in k and "cls_token" not in k}
    model.save_pretrained(tmp_path, state_dict=state)
    reloaded = FFTPASTForAudioClassification.from_pretrained(tmp_path)
    positions = reloaded.fftp_ast.embeddings.position_embeddings
    assert torch.isfinite(positions).all()
    assert 0.015 < positions.std().item() < 0.025  # (truncated) normal with std = initializer_range
    assert positions.mean().abs().item() < 0.005
    torch.testing.assert_close(reloaded.classifier.dense.weight, model.classifier.dense.weight)


def test_without_distillation_token_the_class_token_is_pooled(tmp_path):
    """`use_distillation_token=False`: one prefix token, pooled alone (ViT); the model saves, reloads, and its
    attention rollout counts one prefix token. `from_ast` refuses to drop AST's distillation token."""
    from specpatch.visualization import num_prefix_tokens

    config = tiny_config("fftp_ast", num_labels=3, use_distillation_token=False)
    model = FFTPASTForAudioClassification(config).eval()
    assert model.fftp_ast.embeddings.distillation_token is None
    assert not any("distillation" in name for name in model.state_dict())
    inputs = torch.randn(2, 64, 128)
    with torch.no_grad():
        out = model.fftp_ast(inputs, output_attentions=True)
    tokens = config.num_patches + 1
    assert out.last_hidden_state.shape == (2, tokens, config.hidden_size)
    assert out.attentions[0].shape[-1] == tokens
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[:, 0])
    assert num_prefix_tokens(config) == 1 and num_prefix_tokens(tiny_config("fftp_ast")) == 2
    model.save_pretrained(tmp_path)
    reloaded = FFTPASTForAudioClassification.from_pretrained(tmp_path).eval()
    assert reloaded.config.use_distillation_token is False
    with torch.no_grad():
        torch.testing.assert_close(reloaded(inputs).logits, model(inputs).logits)
    with pytest.raises(ValueError, match="distillation token"):
        FFTPASTForAudioClassification.from_ast(_random_ast(), use_distillation_token=False)
