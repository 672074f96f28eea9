"""AaPE-ViT pre-training: EMA teacher, teacher targets, contrastive loss, losses, and a short CPU pre-training run."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F

from specpatch.configuration_aape_vit import AaPEViTConfig
from specpatch.masking import inverse_block_mask, mask_to_indices, sample_masked_subset
from specpatch.modeling_aape_vit import (
    AaPEViTForPreTraining,
    gather_with_gradient,
    multi_view_info_nce,
    teacher_targets_from_layers,
)


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


def _slow_targets(model, inputs, layer_output="ffn", top_k=None, axis="tokens"):
    """Teacher targets with explicit formulas: each block run by hand, its feed-forward output before the residual
    add (or the block output), per-channel normalisation over the tokens of a clip (or per-token over channels),
    average of the last `top_k`, per-token normalisation over channels."""
    teacher = model.teacher
    hidden, _ = teacher.embeddings(inputs)
    layers = []
    for layer in teacher.encoder.layers:
        hidden = hidden + layer.attention(layer.layernorm_before(hidden))[0]
        feed_forward = layer.mlp.fc2(F.gelu(layer.mlp.fc1(layer.layernorm_after(hidden))))
        hidden = hidden + feed_forward
        layers.append(feed_forward if layer_output == "ffn" else hidden)
    normed = []
    dim = 1 if axis == "tokens" else -1
    for output in layers[-(top_k or len(layers)) :]:
        mean = output.mean(dim, keepdim=True)
        variance = ((output - mean) ** 2).mean(dim, keepdim=True)
        normed.append((output - mean) / torch.sqrt(variance + 1e-5))
    average = sum(normed) / len(normed)
    mean = average.mean(-1, keepdim=True)
    return (average - mean) / torch.sqrt(((average - mean) ** 2).mean(-1, keepdim=True) + 1e-5)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"teacher_average_top_k_layers": 2},
        {"teacher_target_layer_output": "block"},
        {"teacher_instance_norm_axis": "channels"},
    ],
)
def test_teacher_targets_match_a_slow_reference_and_use_no_class_token(fields):
    model = AaPEViTForPreTraining(tiny(num_hidden_layers=3, **fields)).eval()
    with torch.no_grad():  # a teacher that differs from the identity-like initial blocks
        for parameter in model.teacher.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    inputs = torch.randn(2, 64, 32)
    with torch.no_grad():
        targets = model.teacher_targets(inputs)
        config = model.config
        expected = _slow_targets(
            model,
            inputs,
            config.teacher_target_layer_output,
            config.teacher_average_top_k_layers,
            config.teacher_instance_norm_axis,
        )
        other = _slow_targets(
            model, inputs, "block" if config.teacher_target_layer_output == "ffn" else "ffn", None, config.teacher_instance_norm_axis
        )
    assert targets.shape == (2, 32, 32)  # one target per patch, no class token
    torch.testing.assert_close(targets, expected, rtol=1e-4, atol=1e-4)
    assert (targets - other).abs().max() > 0.1  # the reference tells the two kinds apart
    # "tokens": each channel normalised over the tokens of a clip (data2vec 2.0's instance_norm)
    layers = [torch.randn(2, 5, 8) * 3 + 1 for _ in range(2)]
    by_tokens = teacher_targets_from_layers(layers, "tokens")
    normed = [
        (y - y.mean(1, keepdim=True)) / torch.sqrt(y.var(1, unbiased=False, keepdim=True) + 1e-5) for y in layers
    ]
    torch.testing.assert_close(by_tokens, F.layer_norm(sum(normed) / 2, (8,)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "kind, masked_sblu_input, leaks",
    [
        ("standard", "visible", False),
        ("aape_nonadaptive", "visible", False),
        ("aape", "visible", False),
        ("aape_nonadaptive", "full", True),
        ("aape", "full", True),
    ],
)
def test_masked_content_never_reaches_the_visible_tokens_of_a_view(kind, masked_sblu_input, leaks):
    """Changing only the patches a view masks leaves every visible student token of that view bit-identical (the
    SBLU's high-pass, kernel and GroupNorm reach across patches: `masked_sblu_input="full"` leaks, as a check that
    the test can fail)."""
    config = tiny(patch_embedding_type=kind, masked_sblu_input=masked_sblu_input, num_views=2)
    model = AaPEViTForPreTraining(config).eval()
    inputs = torch.randn(2, 70, 32)  # 6 frames beyond the last whole patch
    mask = inverse_block_mask(2, (4, 8), 0.75, 2, (2, 2), generator=torch.Generator().manual_seed(3))
    changed = inputs.clone()
    masked_bins = mask[0].view(4, 8).repeat_interleave(8, 0).repeat_interleave(8, 1).T  # (frames, mel) of clip 0
    changed[0, :64][masked_bins] = 5 * torch.randn(int(masked_bins.sum()))
    with torch.no_grad():
        before = model.aape_vit(inputs, bool_masked_pos=mask).last_hidden_state
        after = model.aape_vit(changed, bool_masked_pos=mask).last_hidden_state
    assert torch.equal(before[2:], after[2:])  # the other clip
    assert not torch.equal(before[1], after[1])  # view 1 of clip 0 sees some of the changed patches
    assert torch.equal(before[0], after[0]) != leaks


def test_utterance_loss_uses_the_class_token_and_eat_scaling_is_selectable():
    inputs = torch.randn(3, 64, 32)
    model = AaPEViTForPreTraining(tiny()).eval()
    assert model.utterance_projection is None  # EAT / Sec. III-D: no projection by default
    mask = inverse_block_mask(3, (4, 8), 0.8, 4, (2, 3), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        output = model(inputs, bool_masked_pos=mask, generator=torch.Generator().manual_seed(0))
        class_token = model.aape_vit(inputs, bool_masked_pos=mask).last_hidden_state[:, 0]
        target = model.teacher_targets(inputs).mean(1).repeat_interleave(4, 0)
    expected = (class_token - target).square().sum(-1) / math.sqrt(32)
    torch.testing.assert_close(output.utterance_loss, expected.mean())
    model.config.utterance_loss_reduction = "sum"  # EAT: summed over the rows of the micro-batch
    with torch.no_grad():
        summed = model(inputs, bool_masked_pos=mask, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(summed.utterance_loss, expected.sum())
    torch.testing.assert_close(summed.masked_loss, output.masked_loss)
    projected = AaPEViTForPreTraining(tiny(utterance_projection=True))
    assert isinstance(projected.utterance_projection, torch.nn.Linear)
    # ablation: the utterance target from per-token-normalised layers, the patch targets unchanged
    model.config.utterance_loss_reduction = "mean"
    model.config.utterance_target_instance_norm_axis = "channels"
    with torch.no_grad():
        other = model(inputs, bool_masked_pos=mask, generator=torch.Generator().manual_seed(0))
        target = _slow_targets(model, inputs, axis="channels").mean(1).repeat_interleave(4, 0)
    expected = (class_token - target).square().sum(-1) / math.sqrt(32)
    torch.testing.assert_close(other.utterance_loss, expected.mean(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(other.masked_loss, output.masked_loss)


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
    model.teacher.embeddings.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
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
    # total, masked and utterance losses fall clearly (FFN targets of a moving teacher: the masked loss by about 40 %),
    # the contrastive loss too (chance level is log(29))
    assert (last[:3] < 0.7 * first[:3]).all(), (first, last)
    assert last[3] < 0.85 * first[3] and history[0, 3] == pytest.approx(math.log(29), rel=0.1), (first, last)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert elapsed < 60, f"{steps} pre-training steps took {elapsed:.1f} s"


def _contrastive_worker(rank: int, world: int, init_file: str, result_dir: str) -> None:
    """One process of the 2-process test: its half of the global batch, negatives gathered from both."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        inputs, mask, queries, state = torch.load(f"{result_dir}/global.pt")
        model = AaPEViTForPreTraining(tiny())
        model.load_state_dict(state)
        rows = mask.shape[0] // world
        clips = inputs.shape[0] // world
        output = model(
            inputs[rank * clips : (rank + 1) * clips],
            bool_masked_pos=mask[rank * rows : (rank + 1) * rows],
            query_positions=queries[rank * rows : (rank + 1) * rows],
        )
        output.contrastive_loss.backward()
        grads = {name: p.grad.clone() for name, p in model.contrastive_head.named_parameters()}
        # unequal row counts: rank r holds r + 1 rows of value r; every row comes back, gradients to their owner
        rows = torch.full((rank + 1, 3), float(rank), requires_grad=True)
        gathered, start = gather_with_gradient(rows)
        (gathered * torch.arange(1.0, 4.0)[:, None]).sum().backward()
        torch.save((output.contrastive_loss.detach(), grads, gathered.detach(), start, rows.grad), f"{result_dir}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_contrastive_negatives_come_from_the_whole_global_batch(tmp_path):
    """2 gloo processes with 2 clips each: the mean of their contrastive losses and of their gradients (what DDP
    averages) equal the single-process loss and gradient on the same 4-clip batch; with local negatives they do
    not."""
    torch.manual_seed(0)
    model = AaPEViTForPreTraining(tiny())
    inputs = torch.randn(4, 64, 32)
    mask = inverse_block_mask(4, (4, 8), 0.8, 4, (2, 3), generator=torch.Generator().manual_seed(1))
    queries = sample_masked_subset(mask_to_indices(mask)[1], 0.75, torch.Generator().manual_seed(2))
    torch.save((inputs, mask, queries, model.state_dict()), tmp_path / "global.pt")
    # fork: the children inherit the imported modules (spawn would re-import torch and transformers in each)
    torch.multiprocessing.start_processes(
        _contrastive_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="fork"
    )
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    output = model(inputs, bool_masked_pos=mask, query_positions=queries)
    output.contrastive_loss.backward()
    for rank, (_, _, gathered, start, grad) in enumerate(results):
        assert torch.equal(gathered, torch.tensor([[0.0] * 3, [1.0] * 3, [1.0] * 3])) and start == rank
        # d/d(own rows) of the sum over both processes of sum_i (i + 1) * gathered_i
        assert torch.equal(grad, 2 * torch.arange(1.0, 4.0)[start : start + rank + 1, None].expand(-1, 3))
    distributed = (results[0][0] + results[1][0]) / 2
    torch.testing.assert_close(distributed, output.contrastive_loss.detach(), rtol=1e-5, atol=1e-6)
    for name, parameter in model.contrastive_head.named_parameters():
        averaged = (results[0][1][name] + results[1][1][name]) / 2
        torch.testing.assert_close(averaged, parameter.grad, rtol=1e-5, atol=1e-5, msg=name)
    # local negatives (one process's 2 clips) give a different, smaller loss: fewer negatives
    local = [
        model(inputs[2 * r : 2 * r + 2], bool_masked_pos=mask[8 * r : 8 * r + 8], query_positions=queries[8 * r : 8 * r + 8])
        for r in range(2)
    ]
    local_mean = (local[0].contrastive_loss + local[1].contrastive_loss).detach() / 2
    assert local_mean < distributed - 0.1
