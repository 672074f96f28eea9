"""FFTP-AuM: the mixer against transformers' Mamba, bidirectional variants, sequence layout, losses, checkpointing,
serialisation and initialisation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassError
from safetensors.torch import load_file, save_file
from transformers import MambaConfig
from transformers.models.mamba.modeling_mamba import MambaMixer

from specpatch.configuration_fftp_aum import FFTPAuMConfig
from specpatch.configuration_patching import TABLE_II_NUM_PATCHES
from specpatch.modeling_fftp_aum import FFTPAuMForAudioClassification, FFTPAuMMixer, FFTPAuMModel
from specpatch.selective_scan import causal_conv1d, selective_scan_reference


def tiny_config(**kwargs) -> FFTPAuMConfig:
    fields = {
        "hidden_size": 16,
        "num_hidden_layers": 2,
        "state_size": 4,
        "max_length": 64,
        "time_stride": 4,  # 128 x 10 patches, 14 tokens + the class token
        "num_labels": 5,
    }
    return FFTPAuMConfig(**{**fields, **kwargs})


def randomise_(module: torch.nn.Module, scale: float = 0.3) -> None:
    """Perturb every parameter so that no structure of the initialisation hides a mistake (A_log stays moderate)."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn_like(parameter) * scale)


def inputs(batch: int = 2, frames: int = 64) -> torch.Tensor:
    return torch.randn(batch, frames, 128)


# ---------------------------------------------------------------------------------------------------------------------
# The mixer
# ---------------------------------------------------------------------------------------------------------------------


def test_forward_direction_matches_transformers_mamba_mixer():
    config = MambaConfig(hidden_size=24, state_size=8, expand=2, conv_kernel=4, num_hidden_layers=1)
    theirs = MambaMixer(config, layer_idx=0).eval()
    randomise_(theirs)
    ours = FFTPAuMMixer(24, config.intermediate_size, 8, 4, config.time_step_rank, bimamba_type="none")
    ours.load_state_dict(theirs.state_dict(), strict=True)  # same sub-module names, one to one
    hidden_states = torch.randn(2, 50, 24, requires_grad=True)
    expected = theirs(hidden_states)  # transformers' PyTorch path (no mamba_ssm on CPU)
    out = ours(hidden_states)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    grad_output = torch.randn_like(out)
    (expected_grad,) = torch.autograd.grad(expected, hidden_states, grad_output)
    (grad,) = torch.autograd.grad(out, hidden_states, grad_output)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-4)


def _mixers_sharing_weights(bimamba_type: str, conv_kernel: int = 4):
    """A bidirectional mixer, plus forward-only mixers holding its forward and its backward branch."""
    torch.manual_seed(0)
    mixer = FFTPAuMMixer(12, 24, 4, conv_kernel, bimamba_type=bimamba_type)
    for parameter in mixer.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    forward, backward = (FFTPAuMMixer(12, 24, 4, conv_kernel, bimamba_type="none") for _ in range(2))
    state = mixer.state_dict()
    forward.load_state_dict({k: v for k, v in state.items() if "_b" not in k})
    suffix = "_b" if bimamba_type == "bi-bi" else ""
    backward_state = {k: state.get(k.replace(".", f"{suffix}.", 1) if "." in k else k + suffix, v) for k, v in
                      forward.state_dict().items()}  # fmt: skip
    backward_state["A_log"] = state["A_b_log"]
    backward.load_state_dict(backward_state)
    return mixer, forward, backward


def test_bi_bi_is_the_average_of_a_forward_and_a_flipped_backward_mixer():
    mixer, forward, backward = _mixers_sharing_weights("bi-bi")
    assert torch.equal(backward.conv1d.weight, mixer.conv1d_b.weight)
    assert torch.equal(backward.D, mixer.D_b)
    x = torch.randn(2, 30, 12)
    expected = (forward(x) + backward(x.flip(1)).flip(1)) / 2  # out_proj has no bias, so it commutes
    torch.testing.assert_close(mixer(x), expected, rtol=1e-5, atol=1e-5)


def test_fo_bi_backward_branch_is_a_forward_scan_of_the_flipped_sequence():
    # With a width-1 convolution the shared (causal) convolution commutes with flipping, so Fo-Bi equals a
    # forward mixer plus the flipped output of a forward mixer (with A_b_log) on the flipped input: summed.
    mixer, forward, backward = _mixers_sharing_weights("fo-bi", conv_kernel=1)
    x = torch.randn(2, 30, 12)
    expected = forward(x) + backward(x.flip(1)).flip(1)
    torch.testing.assert_close(mixer(x), expected, rtol=1e-5, atol=1e-5)


def test_fo_bi_matches_an_explicit_reference():
    """Vim's "v1": convolution and projections once in forward order, the backward scan on the flipped (conv output,
    dt, B, C, z) with A_b and the shared D, outputs summed (sequential reference scans)."""
    mixer, _, _ = _mixers_sharing_weights("fo-bi")
    hidden_states = torch.randn(2, 30, 12)
    x, z = mixer.in_proj(hidden_states).chunk(2, dim=-1)
    x = causal_conv1d(x.transpose(1, 2), mixer.conv1d.weight[:, 0], mixer.conv1d.bias, "silu")
    dt, B, C = mixer.x_proj(x.transpose(1, 2)).split([mixer.time_step_rank, 4, 4], dim=-1)
    dt, B, C, z = mixer.dt_proj.weight @ dt.transpose(1, 2), B.transpose(1, 2), C.transpose(1, 2), z.transpose(1, 2)

    def scan(x, dt, B, C, z, A_log):
        return selective_scan_reference(x, dt, -A_log.exp(), B, C, mixer.D, z, mixer.dt_proj.bias, delta_softplus=True)

    y = scan(x, dt, B, C, z, mixer.A_log) + scan(*(t.flip(-1) for t in (x, dt, B, C, z)), mixer.A_b_log).flip(-1)
    torch.testing.assert_close(mixer(hidden_states), mixer.out_proj(y.transpose(1, 2)), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("bimamba_type", ["fo-bi", "bi-bi"])
def test_mixer_with_and_without_cuda_kernels(monkeypatch, bimamba_type):
    """On a GPU the mixer uses mamba_ssm / causal_conv1d when installed; the PyTorch path must agree."""
    import importlib

    scan_module = importlib.import_module("specpatch.selective_scan")
    mixer = FFTPAuMMixer(64, 128, 16, 4, bimamba_type=bimamba_type).cuda()
    FFTPAuMForAudioClassification(tiny_config())._init_mixer(mixer)  # Mamba's initialisation
    hidden_states = torch.randn(2, 300, 64, device="cuda", requires_grad=True)
    out = mixer(hidden_states)
    (grad,) = torch.autograd.grad(out.sum(), hidden_states)
    monkeypatch.setattr(scan_module, "_mamba_ssm_selective_scan_fn", lambda: None)
    monkeypatch.setattr(scan_module, "_causal_conv1d_fn", lambda: None)
    expected = mixer(hidden_states)
    (expected_grad,) = torch.autograd.grad(expected.sum(), hidden_states)
    torch.testing.assert_close(out, expected, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-3, atol=1e-4)


def test_mixer_rejects_unknown_bimamba_type():
    with pytest.raises(ValueError, match="bimamba_type"):
        FFTPAuMMixer(12, 24, bimamba_type="v3")


# ---------------------------------------------------------------------------------------------------------------------
# Configuration and sequence layout
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset, expected", sorted(TABLE_II_NUM_PATCHES.items()))
def test_table_ii_patch_counts_give_the_sequence_length(preset, expected):
    config = FFTPAuMConfig.from_preset(preset, hidden_size=8, num_hidden_layers=1, state_size=2)
    assert config.num_patches == expected
    model = FFTPAuMModel(config).eval()
    with torch.no_grad():
        output = model(torch.randn(1, config.max_length, config.num_mel_bins))
    assert output.last_hidden_state.shape == (1, expected + 1, 8)  # plus one class token
    assert config.cls_token_index(expected) == expected // 2
    torch.testing.assert_close(output.pooler_output, output.last_hidden_state[:, expected // 2])


def test_sizes_and_defaults():
    for size, width in (("tiny", 192), ("small", 384), ("base", 768)):
        config = FFTPAuMConfig.from_size(size, preset="fftp-248")
        assert (config.hidden_size, config.num_hidden_layers, config.num_patches) == (width, 24, 248)
        assert config.intermediate_size == 2 * width and config.time_step_rank == math.ceil(width / 16)
    config = FFTPAuMConfig()
    assert config.num_patches == 991 and config.hidden_size == 768 and config.bimamba_type == "fo-bi"
    assert (config.state_size, config.conv_kernel, config.expand, config.cls_position) == (16, 4, 2, "middle")
    with pytest.raises(ValueError, match="size"):
        FFTPAuMConfig.from_size("huge")


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"bimamba_type": "v2"}, "bimamba_type"),
        ({"cls_position": "end"}, "cls_position"),
        ({"hidden_act": "gelu"}, "SiLU"),
        ({"patch_size": (200, 10)}, "frequency patch"),
        ({"time_step_min": 0.5, "time_step_max": 0.1}, "time_step_min"),
    ],
)
def test_invalid_configs_raise(fields, message):
    with pytest.raises(StrictDataclassError, match=message):
        FFTPAuMConfig(**fields)


@pytest.mark.parametrize("cls_position, index", [("middle", 7), ("head", 0), ("tail", 14)])
def test_class_token_position(cls_position, index):
    model = FFTPAuMModel(tiny_config(cls_position=cls_position)).eval()
    with torch.no_grad():
        output = model(inputs(), output_hidden_states=True)
        embeddings = output.hidden_states[0]
        cls_embedding = model.embeddings.cls_token + model.embeddings.position_embeddings[:, 0]
    assert embeddings.shape[1] == 15
    torch.testing.assert_close(embeddings[:, index], cls_embedding.expand(2, -1, -1)[:, 0])
    torch.testing.assert_close(output.pooler_output, output.last_hidden_state[:, index])


def test_other_input_lengths_truncate_or_interpolate_positions():
    model = FFTPAuMModel(tiny_config()).eval()
    with torch.no_grad():
        for frames, patches in ((40, 8), (64, 14), (100, 23)):
            output = model(inputs(frames=frames))
            assert output.last_hidden_state.shape[1] == patches + 1
    with pytest.raises(ValueError, match="frames"):
        model(inputs(frames=5))


# ---------------------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------------------


def test_bimamba_types_run_and_differ():
    logits = {}
    for bimamba_type in ("fo-bi", "bi-bi"):
        torch.manual_seed(0)
        model = FFTPAuMForAudioClassification(tiny_config(bimamba_type=bimamba_type)).eval()
        torch.manual_seed(1)
        with torch.no_grad():
            logits[bimamba_type] = model(inputs()).logits
        assert torch.isfinite(logits[bimamba_type]).all()
        names = {name.rsplit(".", 1)[-1] for name, _ in model.named_parameters()}
        assert ("D_b" in names) == (bimamba_type == "bi-bi") and "A_b_log" in names
    assert not torch.allclose(logits["fo-bi"], logits["bi-bi"])


def test_hidden_states_and_tuple_outputs():
    model = FFTPAuMForAudioClassification(tiny_config(num_hidden_layers=3)).eval()
    x = inputs()
    with torch.no_grad():
        output = model(x, output_hidden_states=True)
        as_tuple = model(x, output_hidden_states=True, return_dict=False)
        base = model.fftp_aum(x, output_hidden_states=True)
    assert len(output.hidden_states) == 4 and all(h.shape == (2, 15, 16) for h in output.hidden_states)
    torch.testing.assert_close(as_tuple[0], output.logits)
    # the final norm is applied to the last entry of the residual stream
    torch.testing.assert_close(base.last_hidden_state, model.fftp_aum.norm_f(base.hidden_states[-1]))


def test_losses_follow_problem_type():
    model = FFTPAuMForAudioClassification(tiny_config()).eval()
    x = inputs()
    labels = torch.tensor([1, 3])
    output = model(x, labels=labels)
    assert model.config.problem_type == "single_label_classification"
    torch.testing.assert_close(output.loss, F.cross_entropy(output.logits, labels))

    model = FFTPAuMForAudioClassification(tiny_config()).eval()
    multi_hot = torch.tensor([[1.0, 0, 1, 0, 0], [0, 0, 0, 0, 1]])
    output = model(x, labels=multi_hot)
    assert model.config.problem_type == "multi_label_classification"
    torch.testing.assert_close(output.loss, F.binary_cross_entropy_with_logits(output.logits, multi_hot))


@pytest.mark.parametrize("bimamba_type", ["fo-bi", "bi-bi"])
def test_gradient_checkpointing_gives_the_same_gradients(bimamba_type):
    model = FFTPAuMForAudioClassification(tiny_config(bimamba_type=bimamba_type)).train()
    x, labels = inputs(), torch.tensor([0, 4])

    def gradients():
        model.zero_grad()
        model(x, labels=labels).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    plain = gradients()
    model.activation_checkpointing_enable()
    assert model.is_activation_checkpointing and model.fftp_aum.layers[0].gradient_checkpointing
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys() and all(g.abs().sum() > 0 for g in plain.values())
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)


def test_drop_path_is_active_in_training_only():
    model = FFTPAuMForAudioClassification(tiny_config(drop_path_rate=0.5, num_hidden_layers=3))
    assert [layer.drop_path.drop_prob for layer in model.fftp_aum.layers] == [0.0, 0.25, 0.5]
    x = inputs()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, model(x).logits)
        model.train()
        torch.manual_seed(3)
        first = model(x).logits
        torch.manual_seed(4)
        assert not torch.allclose(first, model(x).logits)


def test_bfloat16_autocast_forward_is_close():
    model = FFTPAuMForAudioClassification(tiny_config()).eval()
    x = inputs()
    with torch.no_grad():
        expected = model(x).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x).logits
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits.float(), expected, rtol=0.1, atol=0.1)


@pytest.mark.parametrize("bimamba_type", ["fo-bi", "bi-bi"])
def test_save_and_load_round_trip(tmp_path, bimamba_type):
    model = FFTPAuMForAudioClassification(tiny_config(bimamba_type=bimamba_type)).eval()
    model.save_pretrained(tmp_path)
    loaded = FFTPAuMForAudioClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.bimamba_type == bimamba_type
    saved, reloaded = model.config.to_dict(), loaded.config.to_dict()
    assert {k: v for k, v in saved.items() if k != "_name_or_path"} == {
        k: v for k, v in reloaded.items() if k != "_name_or_path"
    }
    x = inputs()
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)


def test_bfloat16_loading_keeps_the_state_matrix_in_float32(tmp_path):
    model = FFTPAuMForAudioClassification(tiny_config(bimamba_type="bi-bi")).eval()
    model.save_pretrained(tmp_path)
    loaded = FFTPAuMForAudioClassification.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    dtypes = {name: p.dtype for name, p in loaded.fftp_aum.layers[0].mixer.named_parameters()}
    assert {dtypes[name] for name in ("A_log", "A_b_log", "D", "D_b")} == {torch.float32}
    assert dtypes["in_proj.weight"] == dtypes["conv1d_b.weight"] == torch.bfloat16
    with torch.no_grad():
        logits = loaded(inputs().bfloat16()).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


# ---------------------------------------------------------------------------------------------------------------------
# Initialisation
# ---------------------------------------------------------------------------------------------------------------------


def _check_mamba_init(mixer: FFTPAuMMixer, config: FFTPAuMConfig) -> None:
    expected_A_log = torch.log(torch.arange(1, config.state_size + 1.0)).expand(config.intermediate_size, -1)
    torch.testing.assert_close(mixer.A_log, expected_A_log)
    torch.testing.assert_close(mixer.A_b_log, expected_A_log)
    assert torch.equal(mixer.D, torch.ones(config.intermediate_size))
    for dt_proj in (mixer.dt_proj, getattr(mixer, "dt_proj_b", mixer.dt_proj)):
        time_steps = F.softplus(dt_proj.bias)
        assert time_steps.min() >= config.time_step_min * 0.999 and time_steps.max() <= config.time_step_max * 1.001
    out_bound = 1 / math.sqrt(config.intermediate_size) / math.sqrt(config.num_hidden_layers)
    assert mixer.out_proj.weight.abs().max() <= out_bound
    assert mixer.out_proj.weight.abs().max() > 0.5 * out_bound


@pytest.mark.parametrize("bimamba_type", ["fo-bi", "bi-bi"])
def test_init_weights_sets_every_parameter(bimamba_type):
    config = tiny_config(bimamba_type=bimamba_type, state_size=16)
    model = FFTPAuMForAudioClassification(config)
    for layer in model.fftp_aum.layers:
        _check_mamba_init(layer.mixer, config)
        assert layer.mixer.dt_proj.weight.abs().max() <= config.time_step_rank**-0.5
        assert torch.equal(layer.norm.weight, torch.ones(16))
    embeddings = model.fftp_aum.embeddings
    assert 0 < embeddings.cls_token.std() < 0.05 and 0 < embeddings.position_embeddings.std() < 0.05
    bound = config.hidden_size**-0.5  # default initializer_scheme "pytorch": nn.Linear's own uniform(+-1/sqrt(fan_in))
    assert 0 < model.classifier.weight.abs().max() <= bound and model.classifier.bias.abs().max() <= bound
    vit = FFTPAuMForAudioClassification(tiny_config(bimamba_type=bimamba_type, state_size=16, initializer_scheme="vit"))
    assert torch.equal(vit.classifier.bias, torch.zeros(5)) and 0 < vit.classifier.weight.std() < 0.05
    for name, parameter in model.named_parameters():
        assert torch.isfinite(parameter).all(), name


def test_from_pretrained_reinitialises_missing_mamba_parameters(tmp_path):
    config = tiny_config(state_size=16)
    model = FFTPAuMForAudioClassification(config)
    randomise_(model)
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    missing = [k for k in state if k.rsplit(".", 1)[-1] in ("A_log", "A_b_log", "D") or k.endswith("dt_proj.bias")
               or "out_proj" in k]  # fmt: skip
    save_file({k: v for k, v in state.items() if k not in missing}, tmp_path / "model.safetensors", {"format": "pt"})
    loaded = FFTPAuMForAudioClassification.from_pretrained(tmp_path)
    for layer in loaded.fftp_aum.layers:
        _check_mamba_init(layer.mixer, config)
    loaded_state = loaded.state_dict()
    for key, value in state.items():  # everything present in the checkpoint is kept as saved
        if key not in missing:
            assert torch.equal(loaded_state[key], value), key
