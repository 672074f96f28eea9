"""AaPE-ViT pre-training: EMA teacher, teacher targets, contrastive loss, losses, and a short CPU pre-training run."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F

from specpatch.configuration_aape_vit import AaPEViTConfig
from specpatch.masking import mask_to_indices
from specpatch.modeling_aape_vit import AaPEViTForPreTraining, multi_view_info_nce, teacher_targets_from_layers


def tiny(**kwargs) -> AaPEViTConfig:
    """32 mel bins x 64 frames, 8 x 8 patches: a 4 x 8 grid of 32 tokens; ViT of width 32."""
    defaults = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_mel_bins=32,
        patch_size=8,
        max_length=64,
        sblu_hidden_channels=4,
        sblu_kernel_size=15,
        sblu_output_dim=16,
        sblu_highpass_taps=15,
        lambda_hidden_size=16,
        lambda_num_layers=1,
        lambda_num_attention_heads=2,
        lambda_intermediate_size=32,
        predictor_hidden_size=32,
        predictor_num_layers=1,
        predictor_num_attention_heads=4,
        predictor_intermediate_size=64,
        num_views=4,
        mask_block_size_range=[2, 3],
        contrastive_projection_dim=16,
    )
    return AaPEViTConfig(**{**defaults, **kwargs})


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_ema_momentum_schedule_endpoints():
    model = AaPEViTForPreTraining(tiny())
    assert model.ema_momentum(0, 1000) == pytest.approx(0.994)
    assert model.ema_momentum(1000, 1000) == pytest.approx(1.0)
    assert model.ema_momentum(500, 1000) == pytest.approx(0.997)
    assert model.ema_momentum(250, 1000) == pytest.approx(1.0 - 0.006 * (1 + math.cos(math.pi / 4)) / 2)
    assert model.ema_momentum(5000, 1000) == pytest.approx(1.0) and model.ema_momentum(-3, 1000) == pytest.approx(
        0.994
    )
    momenta = [model.ema_momentum(step, 100) for step in range(101)]
    assert all(a <= b for a, b in zip(momenta, momenta[1:]))


def test_ema_update_is_exactly_the_momentum_average():
    model = AaPEViTForPreTraining(tiny())
    with torch.no_grad():
        for parameter in model.aape_vit.parameters():
            parameter.add_(torch.randn_like(parameter))
    student = {name: p.detach().clone() for name, p in model.aape_vit.named_parameters()}
    teacher = {name: p.detach().clone() for name, p in model.teacher.named_parameters()}
    momentum = model.update_teacher(30, 100)
    assert momentum == pytest.approx(model.ema_momentum(30, 100))
    for name, parameter in model.teacher.named_parameters():
        expected = momentum * teacher[name] + (1 - momentum) * student[name]
        torch.testing.assert_close(parameter, expected, rtol=1e-6, atol=1e-7, msg=name)
    # the student is untouched; at the end of the schedule (m = 1) the teacher stops moving
    for name, parameter in model.aape_vit.named_parameters():
        assert torch.equal(parameter, student[name])
    before = {name: p.detach().clone() for name, p in model.teacher.named_parameters()}
    model.update_teacher(100, 100)
    assert all(torch.equal(p, before[name]) for name, p in model.teacher.named_parameters())


@pytest.mark.parametrize("kind", ["standard", "aape_nonadaptive", "aape"])
def test_teacher_gets_no_gradient_and_every_student_part_does(kind):
    model = AaPEViTForPreTraining(tiny(patch_embedding_type=kind)).train()
    assert not model.teacher.training  # the teacher stays in eval mode
    output = model(torch.randn(3, 64, 32), generator=torch.Generator().manual_seed(0))
    output.loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in model.teacher.parameters())
    missing = [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0) and not name.startswith("teacher.")
    ]
    # the class token reaches the loss through the utterance loss, the patch embedding through all three
    assert missing == []


def _slow_targets(model, inputs):
    """Teacher targets with explicit formulas: per-token normalisation over channels, layer average, normalisation."""
    teacher = model.teacher
    hidden, _ = teacher.embeddings(inputs)
    layers = []
    for layer in teacher.encoder.layers:
        hidden, _ = layer(hidden)
        layers.append(hidden)
    normed = []
    for output in layers:
        mean = output.mean(-1, keepdim=True)
        variance = ((output - mean) ** 2).mean(-1, keepdim=True)
        normed.append((output - mean) / torch.sqrt(variance + 1e-5))
    average = sum(normed) / len(normed)
    mean = average.mean(-1, keepdim=True)
    return (average - mean) / torch.sqrt(((average - mean) ** 2).mean(-1, keepdim=True) + 1e-5)


def test_teacher_targets_match_a_slow_reference_and_use_no_class_token():
    model = AaPEViTForPreTraining(tiny(num_hidden_layers=3)).eval()
    inputs = torch.randn(2, 64, 32)
    with torch.no_grad():
        targets = model.teacher_targets(inputs)
        expected = _slow_targets(model, inputs)
    assert targets.shape == (2, 32, 32)  # one target per patch, no class token
    torch.testing.assert_close(targets, expected, rtol=1e-4, atol=1e-5)
    # "tokens": each channel normalised over the tokens of a clip (data2vec 2.0's instance_norm)
    layers = [torch.randn(2, 5, 8) * 3 + 1 for _ in range(2)]
    by_tokens = teacher_targets_from_layers(layers, "tokens")
    normed = [
        (y - y.mean(1, keepdim=True)) / torch.sqrt(y.var(1, unbiased=False, keepdim=True) + 1e-5) for y in layers
    ]
    torch.testing.assert_close(by_tokens, F.layer_norm(sum(normed) / 2, (8,)), rtol=1e-4, atol=1e-5)


def _slow_info_nce(embeddings, num_views, temperature):
    rows = embeddings.shape[0]
    total = 0.0
    for anchor in range(rows):
        clip = anchor // num_views
        negatives = [j for j in range(rows) if j // num_views != clip]
        terms = []
        for positive in range(clip * num_views, (clip + 1) * num_views):
            if positive == anchor:
                continue
            numerator = math.exp(float(embeddings[anchor] @ embeddings[positive]) / temperature)
            denominator = numerator + sum(
                math.exp(float(embeddings[anchor] @ embeddings[j]) / temperature) for j in negatives
            )
            terms.append(-math.log(numerator / denominator))
        total += sum(terms) / len(terms)
    return total / rows


@pytest.mark.parametrize("clips, views", [(3, 2), (2, 4), (4, 3)])
def test_contrastive_loss_matches_a_slow_reference(clips, views):
    embeddings = F.normalize(torch.randn(clips * views, 6, dtype=torch.float64), dim=-1)
    loss = multi_view_info_nce(embeddings, views, 0.1)
    assert loss.item() == pytest.approx(_slow_info_nce(embeddings, views, 0.1), rel=1e-5)
    # a single view (no positives) or a single clip (no negatives) gives zero, not NaN
    assert multi_view_info_nce(embeddings, 1, 0.1).item() == 0.0
    assert multi_view_info_nce(embeddings[:views], views, 0.1).item() == 0.0


def test_losses_and_their_inputs():
    config = tiny()
    model = AaPEViTForPreTraining(config).train()
    inputs = torch.randn(3, 64, 32)
    calls = []
    model.teacher.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    generator = torch.Generator().manual_seed(5)
    output = model(inputs, generator=generator)
    assert calls == [3]  # the teacher runs once per clip, not once per view
    assert output.bool_masked_pos.shape == (12, 32) and output.bool_masked_pos.sum(1).eq(26).all()
    assert output.query_positions.shape == (12, 20)  # round(0.75 * 26)
    _, masked = mask_to_indices(output.bool_masked_pos)
    assert all(set(q.tolist()) <= set(m.tolist()) for q, m in zip(output.query_positions, masked))
    total = output.masked_loss + output.utterance_loss + 0.1 * output.contrastive_loss
    torch.testing.assert_close(output.loss, total)
    for value in (output.masked_loss, output.utterance_loss, output.contrastive_loss):
        assert value.ndim == 0 and torch.isfinite(value) and value > 0

    # the masked loss is the scaled squared error at the queried positions: a predictor returning the targets gives 0
    targets = model.teacher_targets(inputs)
    clip = torch.arange(12) // 4

    def oracle(context, query_positions, grid):
        return targets[clip[:, None], query_positions]

    model.predictor.forward = oracle
    again = model(inputs, bool_masked_pos=output.bool_masked_pos, query_positions=output.query_positions)
    assert again.masked_loss.item() == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(again.utterance_loss, output.utterance_loss)

    # reproducible with a generator; tuple output
    del model.predictor.forward
    first = model.eval()(inputs, generator=torch.Generator().manual_seed(1))
    second = model(inputs, generator=torch.Generator().manual_seed(1), return_dict=False)
    torch.testing.assert_close(first.loss, second[0])
    assert torch.equal(first.bool_masked_pos, second[4])


def _tone_dataset(clips: int, generator: torch.Generator) -> torch.Tensor:
    """Log-mel-like clips (64 frames x 32 bins): noise plus two amplitude-modulated tones at random bins and rates."""
    frames = torch.arange(64.0)
    data = 0.3 * torch.randn(clips, 64, 32, generator=generator)
    for i in range(clips):
        for _ in range(2):
            band = int(torch.randint(0, 31, (1,), generator=generator))
            rate = float(torch.rand(1, generator=generator)) * math.pi
            data[i, :, band] += 2 + torch.cos(rate * frames)
            data[i, :, band + 1] += 1 + 0.5 * torch.cos(rate * frames)
    return data


def test_tiny_model_pretrains_with_every_loss_decreasing(one_thread):
    torch.manual_seed(0)
    steps, batch = 200, 8
    model = AaPEViTForPreTraining(tiny()).train()
    generator = torch.Generator().manual_seed(0)
    data = _tone_dataset(64, generator)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.05)
    history = []
    start = time.perf_counter()
    for step in range(steps):
        batch_index = torch.randint(0, data.shape[0], (batch,), generator=generator)
        output = model(data[batch_index], generator=generator)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        model.update_teacher(step, steps)
        history.append(
            [
                output.loss.item(),
                output.masked_loss.item(),
                output.utterance_loss.item(),
                output.contrastive_loss.item(),
            ]
        )
    elapsed = time.perf_counter() - start
    history = torch.tensor(history)
    assert torch.isfinite(history).all()
    first, last = history[:25].mean(0), history[-25:].mean(0)
    # total, masked and utterance losses fall several-fold, the contrastive loss clearly (chance level is log(29))
    assert (last[:3] < 0.5 * first[:3]).all(), (first, last)
    assert last[3] < 0.85 * first[3] and history[0, 3] == pytest.approx(math.log(29), rel=0.1), (first, last)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert elapsed < 60, f"{steps} pre-training steps took {elapsed:.1f} s"
