# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""Training utilities: schedule, layer-wise lr decay groups, weight EMA, checkpoints and resume."""

from __future__ import annotations

import math
import os

import pytest
import torch
from conftest import tiny_config
from torch import nn

from specpatch import FFTPASTForAudioClassification
from specpatch.training import (
    ModelSelection,
    TrainingState,
    WeightEMA,
    cosine_schedule_with_warmup,
    latest_checkpoint,
    layer_decay_parameter_groups,
    layer_id_for_parameter,
    per_device_batch_size,
    resolve_resume_path,
    save_checkpoint,
    step_generator,
    uses_weight_decay,
)


def test_warmup_cosine_schedule_values():
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=2.0)
    scheduler = cosine_schedule_with_warmup(optimizer, num_warmup_steps=4, num_training_steps=12)
    lrs = []
    for _ in range(13):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # Linear warm-up 0 -> 2 over 4 steps, then 2 * 0.5 * (1 + cos(pi * progress)) down to 0 at step 12.
    expected = [2.0 * s / 4 for s in range(4)] + [2.0 * 0.5 * (1 + math.cos(math.pi * (s - 4) / 8)) for s in range(4, 13)]
    assert lrs == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="num_warmup_steps"):
        cosine_schedule_with_warmup(optimizer, 20, 10)


@pytest.mark.parametrize(
    "name, num_layers, layer",
    [
        ("fftp_ast.embeddings.cls_token", 12, 0),
        ("fftp_ast.embeddings.patch_embeddings.projection.weight", 12, 0),
        ("aape_vit.embeddings.patch_embeddings.lambda_encoder.layers.1.mlp.fc1.weight", 12, 0),  # SBLU stem
        ("aum.cls_token", 24, 0),
        ("aum.pos_embed", 24, 0),
        ("fftp_ast.encoder.layers.0.attention.qkv.weight", 12, 1),
        ("fftp_ast.encoder.layers.11.mlp.fc2.bias", 12, 12),
        ("aum.layers.23.mixer.A_log", 24, 24),
        ("fftp_ast.layernorm.weight", 12, 13),
        ("classifier.dense.weight", 12, 13),
        ("aum.norm_f.weight", 24, 25),
    ],
)
def test_layer_ids_by_name(name, num_layers, layer):
    assert layer_id_for_parameter(name, num_layers) == layer


def test_weight_decay_rules():
    assert uses_weight_decay("encoder.layers.0.mlp.fc1.weight", torch.zeros(4, 4))
    assert not uses_weight_decay("encoder.layers.0.mlp.fc1.bias", torch.zeros(4))
    assert not uses_weight_decay("layernorm.weight", torch.zeros(4))
    assert not uses_weight_decay("embeddings.position_embeddings", torch.zeros(1, 3, 4))
    assert not uses_weight_decay("embeddings.cls_token", torch.zeros(1, 1, 4))
    assert not uses_weight_decay("layers.0.mixer.A_log", torch.zeros(4, 4))
    assert not uses_weight_decay("fftp_aum.layers.0.mixer.A_b_log", torch.zeros(4, 4))
    assert uses_weight_decay("layers.0.mixer.Dense.weight", torch.zeros(4, 4))


def test_layer_decay_groups_on_fftp_ast():
    model = FFTPASTForAudioClassification(tiny_config("fftp_ast", num_labels=3))  # 2 layers
    groups = layer_decay_parameter_groups(model, learning_rate=1e-3, weight_decay=0.05, layer_decay=0.5)
    named = dict(model.named_parameters())
    seen = [name for group in groups for name in group["param_names"]]
    assert sorted(seen) == sorted(named)  # every trainable parameter exactly once
    by_name = {name: group for group in groups for name in group["param_names"]}
    # lr = 1e-3 * 0.5 ** (num_layers + 1 - layer_id), num_layers = 2.
    assert by_name["classifier.dense.weight"]["lr"] == pytest.approx(1e-3)
    assert by_name["fftp_ast.encoder.layers.1.mlp.fc1.weight"]["lr"] == pytest.approx(5e-4)
    assert by_name["fftp_ast.encoder.layers.0.mlp.fc1.weight"]["lr"] == pytest.approx(2.5e-4)
    assert by_name["fftp_ast.embeddings.position_embeddings"]["lr"] == pytest.approx(1.25e-4)
    assert by_name["fftp_ast.embeddings.patch_embeddings.projection.weight"]["weight_decay"] == 0.05
    assert by_name["fftp_ast.embeddings.position_embeddings"]["weight_decay"] == 0.0
    assert by_name["fftp_ast.encoder.layers.0.mlp.fc1.bias"]["weight_decay"] == 0.0
    # AdamW takes the groups; the scheduler keeps the per-group scaling.
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    scheduler = cosine_schedule_with_warmup(optimizer, 0, 10)
    optimizer.step()
    scheduler.step()
    ratios = {g["layer_id"]: g["lr"] / g["lr_scale"] for g in optimizer.param_groups}
    assert len(set(round(r, 12) for r in ratios.values())) == 1
    # Without decay: one learning rate everywhere.
    flat = layer_decay_parameter_groups(model, 1e-3, 0.05, layer_decay=None)
    assert {g["lr"] for g in flat} == {1e-3}


def test_weight_ema_matches_the_recurrence():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = WeightEMA(model, decay=0.9)
    reference = {k: v.clone().float() for k, v in model.state_dict().items()}
    for step in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(5, 3))  # moves the BatchNorm running statistics
        ema.update(model)
        for k, v in model.state_dict().items():
            if not v.is_floating_point():
                continue
            # AveragedModel's first update copies the weights; later ones follow ema = 0.9 ema + 0.1 w.
            reference[k] = v.clone() if step == 0 else 0.9 * reference[k] + 0.1 * v
    averaged = ema.module.state_dict()
    for k, v in reference.items():
        if model.state_dict()[k].is_floating_point():
            torch.testing.assert_close(averaged[k], v, rtol=1e-6, atol=1e-6)
    assert ema.num_updates == 4
    # State round trip (what checkpoints do).
    clone = WeightEMA(model, decay=0.9)
    clone.load_state_dict(ema.state_dict())
    torch.testing.assert_close(clone.module[0].weight, ema.module[0].weight)
    assert not any(p.requires_grad for p in ema.parameters())
    with pytest.raises(ValueError, match="decay"):
        WeightEMA(model, 1.0)


def test_step_generator_and_batch_split():
    a = torch.rand(3, generator=step_generator(1, 0, 5))
    assert torch.equal(a, torch.rand(3, generator=step_generator(1, 0, 5)))
    assert not torch.equal(a, torch.rand(3, generator=step_generator(1, 1, 5)))
    assert not torch.equal(a, torch.rand(3, generator=step_generator(1, 0, 6)))
    assert per_device_batch_size(32, 2, 4) == 4
    with pytest.raises(ValueError, match="multiple"):
        per_device_batch_size(30, 4, 1)


def test_checkpoint_save_resume_round_trip(tmp_path):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = cosine_schedule_with_warmup(optimizer, 1, 10)
    model, optimizer = accelerator.prepare(model, optimizer)
    ema = WeightEMA(model, 0.5)
    state = TrainingState()
    accelerator.register_for_checkpointing(scheduler, state, ema)

    def train_step():
        loss = model(torch.randn(8, 4)).square().mean()
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        ema.update(model)
        state.global_step += 1

    for _ in range(3):
        train_step()
    state.extra = {"skip_events": 2}
    path = save_checkpoint(accelerator, tmp_path, state.global_step, total_limit=1)
    assert path.endswith("step_00000003") and latest_checkpoint(tmp_path) == path
    assert resolve_resume_path("latest", tmp_path) == path
    assert resolve_resume_path("latest", tmp_path / "elsewhere") is None
    # Continue two steps (the uninterrupted run), remember the result.
    for _ in range(2):
        train_step()
    expected = (model.weight.detach().clone(), ema.module.weight.detach().clone(), optimizer.param_groups[0]["lr"])
    # Restore the checkpoint (model, optimizer, scheduler, EMA, loop state and RNG) and redo the two steps.
    accelerator.load_state(path)
    assert state.global_step == 3 and state.extra == {"skip_events": 2}
    for _ in range(2):
        train_step()
    torch.testing.assert_close(model.weight, expected[0], rtol=0, atol=0)
    torch.testing.assert_close(ema.module.weight, expected[1], rtol=0, atol=0)
    assert optimizer.param_groups[0]["lr"] == expected[2]
    # A newer checkpoint replaces the older one (total_limit=1); an unfinished .tmp folder is never "latest".
    newer = save_checkpoint(accelerator, tmp_path, state.global_step, total_limit=1)
    os.makedirs(os.path.join(tmp_path, "checkpoints", "step_00000099.tmp"))
    assert latest_checkpoint(tmp_path) == newer and not os.path.isdir(path)
    with pytest.raises(ValueError, match="no such checkpoint"):
        resolve_resume_path(str(tmp_path / "missing"), tmp_path)


def test_layer_decay_stem_at_full_lr_as_eat():
    model = FFTPASTForAudioClassification(tiny_config("fftp_ast", num_labels=3))
    beit = layer_decay_parameter_groups(model, 1.0, 0.05, 0.5)
    eat = layer_decay_parameter_groups(model, 1.0, 0.05, 0.5, stem_layer_decay=False)
    scale = {n: g["lr_scale"] for groups in (beit,) for g in groups for n in g["param_names"]}
    scale_eat = {n: g["lr_scale"] for g in eat for n in g["param_names"]}
    stem = [n for n in scale if layer_id_for_parameter(n, 2) == 0]
    assert stem and all(scale[n] == 0.5**3 for n in stem) and all(scale_eat[n] == 1.0 for n in stem)
    blocks = [n for n in scale if 0 < layer_id_for_parameter(n, 2) <= 2]
    assert blocks and all(scale[n] == scale_eat[n] < 1.0 for n in blocks)  # the blocks decay either way


def test_spectrogram_mixup_is_timm_batch_mixup():
    from specpatch.mixup import SpectrogramMixup

    x = torch.randn(4, 10, 8)
    labels = torch.tensor([0, 1, 2, 1])
    mixup = SpectrogramMixup(alpha=0.8, prob=1.0, num_classes=3)
    mixed, targets, lam = mixup(x, labels, generator=torch.Generator().manual_seed(1), return_lambda=True)
    assert torch.all(lam == lam[0]) and 0.0 < float(lam[0]) < 1.0  # one lambda for the whole batch
    one_hot = torch.nn.functional.one_hot(labels, 3).float()
    weight = float(lam[0])
    assert torch.allclose(mixed, weight * x + (1 - weight) * x.flip(0), atol=1e-6)  # each clip with the batch reversed
    assert torch.allclose(targets, weight * one_hot + (1 - weight) * one_hot.flip(0), atol=1e-6)
    # prob: the share of mixed batches over many draws (EAT: 0.9); unmixed batches come back unchanged.
    mixup = SpectrogramMixup(alpha=0.8, prob=0.9, num_classes=3)
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([mixup.sample_lambda(4, generator)[0] for _ in range(2000)])
    assert abs(float((draws < 1).float().mean()) - 0.9) < 0.03
    mixed_lams = draws[draws < 1].double()
    assert abs(float(mixed_lams.mean()) - 0.5) < 0.03 and abs(float(mixed_lams.var()) - 0.25 / 2.6) < 0.02  # Beta(.8,.8)
    with pytest.raises(ValueError, match="num_classes"):
        SpectrogramMixup()(x, labels)


def test_model_selection_keeps_the_best_validation_state():
    """AST's rule: the state is kept when the validation score beats the best so far (strictly: the earliest of equal
    scores wins; NaN never wins), and restoring it gives back exactly the weights of that evaluation."""
    model = nn.Linear(3, 2)
    selection = ModelSelection("validation_accuracy")
    weights = {}
    for step, score in [(1, 0.50), (2, 0.75), (3, float("nan")), (4, 0.75), (5, 0.25)]:
        with torch.no_grad():
            model.weight.fill_(float(step))
        weights[step] = model.weight.clone()
        kept = selection.update({"validation_accuracy": score, "validation_mAP": 1.0 - score}, step, model)
        assert kept == (step in (1, 2))
    assert (selection.best_step, selection.best_value) == (2, 0.75)
    assert selection.best_metrics == {"validation_accuracy": 0.75, "validation_mAP": 0.25}
    selection.restore(model)
    assert torch.equal(model.weight, weights[2])  # a copy, not a view of the weights that kept training

    # The selection survives a checkpoint (accelerate saves state_dict(), loads it into a fresh object).
    restored = ModelSelection("validation_accuracy")
    restored.load_state_dict(selection.state_dict())
    assert (restored.best_step, restored.best_value, restored.best_metrics) == (2, 0.75, selection.best_metrics)
    with torch.no_grad():
        model.weight.zero_()
    restored.restore(model)
    assert torch.equal(model.weight, weights[2])
    with pytest.raises(ValueError, match="selected by"):
        ModelSelection("validation_mAP").load_state_dict(selection.state_dict())

    lower = ModelSelection("validation_loss", greater_is_better=False)
    for step, loss in [(1, 0.9), (2, 0.4), (3, 0.6)]:
        lower.update({"validation_loss": loss}, step, model)
    assert lower.best_step == 2
    with pytest.raises(ValueError, match="not among"):
        lower.update({"validation_accuracy": 1.0}, 4, model)
    with pytest.raises(RuntimeError, match="never evaluated"):
        ModelSelection("validation_accuracy").restore(model)
