"""The memory of negatives (SimCLRv2's MoCo-style buffer): ``nt_xent``'s ``queue_size`` and the
pretraining stage's momentum encoder (``pretrain.memory_momentum``).

The 2-rank checks (the same memory on both ranks as in one process, loss and gradients) are in
``tests/test_distributed_equivalence.py`` and ``tests/test_torchrun.py``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from contrastive.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from contrastive.errors import PluginError, SpecError
from contrastive.interfaces import NegativeMemory, loss_remembers_negatives
from contrastive.registry import load_registry
from contrastive.runner import run
from contrastive.spec.loader import load
from contrastive.stages.pretrain import MemoryFeed
from tests.tiny_specs import load_state_dict, read_jsonl, tiny_pretrain_spec, write_spec

pytest_plugins = ["tests.stage_fixtures"]  # its fixtures: digits_data, digits_env

D = 6


def _nt_xent(queue_size: int, temperature: float = 0.3) -> nn.Module:
    loss: nn.Module = load_registry().build(
        "losses", "nt_xent", temperature=temperature, queue_size=queue_size
    )
    return loss


def _formula(z1: torch.Tensor, z2: torch.Tensor, memory: torch.Tensor, tau: float) -> torch.Tensor:
    """SimCLR's loss (the two directions' means, summed) with the memory rows as extra negatives."""
    h = F.normalize(torch.cat([z1, z2]), dim=1)
    n = len(z1)
    total = torch.zeros(())
    for i in range(2 * n):
        positive = h[(i + n) % (2 * n)] @ h[i] / tau
        negatives = [h[j] @ h[i] / tau for j in range(2 * n) if j not in (i, (i + n) % (2 * n))]
        negatives += [m @ h[i] / tau for m in memory]
        denominator = positive.exp() + torch.stack(negatives).exp().sum()
        total = total - (positive.exp() / denominator).log()
    return total / n


def test_queue_size_is_the_capability_and_off_by_default() -> None:
    options = load_registry().get("losses", "nt_xent").options
    assert not loss_remembers_negatives(options())
    assert loss_remembers_negatives(options(queue_size=8))
    assert isinstance(_nt_xent(8), NegativeMemory)
    with pytest.raises(ValueError, match="queue_size = 0"):
        _nt_xent(0).remember(torch.ones(2, D), torch.ones(2, D))


def test_loss_with_memory_equals_the_formula_value_and_gradient() -> None:
    g = torch.Generator().manual_seed(3)
    loss_fn = _nt_xent(10)
    history = [(torch.randn(3, D, generator=g), torch.randn(3, D, generator=g)) for _ in range(2)]
    for keys1, keys2 in history:
        loss_fn.remember(keys1, keys2)
    memory = F.normalize(torch.cat([history[1][0], history[1][1], history[0][0], history[0][1]]), dim=1)[:10]
    z1 = torch.randn(4, D, generator=g, requires_grad=True)
    z2 = (z1.detach() + 0.5 * torch.randn(4, D, generator=g)).requires_grad_(True)
    got = loss_fn(z1, z2)
    got.loss.backward()
    r1, r2 = z1.detach().clone().requires_grad_(True), z2.detach().clone().requires_grad_(True)
    expected = _formula(r1, r2, memory, 0.3)
    expected.backward()
    torch.testing.assert_close(got.loss, expected, rtol=0, atol=1e-6)
    assert z1.grad is not None and z2.grad is not None
    torch.testing.assert_close(z1.grad, r1.grad, rtol=0, atol=1e-6)
    torch.testing.assert_close(z2.grad, r2.grad, rtol=0, atol=1e-6)
    # The memory changes the loss: the same rows without it score lower.
    assert float(_nt_xent(0)(z1, z2).loss.detach()) < float(got.loss.detach())


def test_remember_keeps_the_newest_keys_first_and_drops_the_oldest() -> None:
    loss_fn = _nt_xent(5)
    steps = [(torch.full((1, D), float(s)), torch.full((1, D), -float(s))) for s in (1, 2, 3)]
    for keys1, keys2 in steps:
        loss_fn.remember(keys1, keys2)
    unit = 1 / D**0.5
    signs = [row[0].item() / unit for row in loss_fn.memory]
    assert signs == pytest.approx([1, -1, 1, -1, 1])  # step 3 (v1, v2), step 2 (v1, v2), step 1 v1
    assert loss_fn.memory.norm(dim=1) == pytest.approx(torch.ones(5))
    with pytest.raises(ValueError, match="6-d keys"):
        loss_fn(torch.ones(2, 4), torch.ones(2, 4))


def test_memory_travels_with_the_state_dict() -> None:
    g = torch.Generator().manual_seed(0)
    loss_fn = _nt_xent(8)
    loss_fn.remember(torch.randn(4, D, generator=g), torch.randn(4, D, generator=g))
    z1, z2 = torch.randn(4, D, generator=g), torch.randn(4, D, generator=g)
    restored = _nt_xent(8)
    restored.load_state_dict(copy.deepcopy(loss_fn.state_dict()))
    torch.testing.assert_close(restored.memory, loss_fn.memory, rtol=0, atol=0)
    torch.testing.assert_close(restored(z1, z2).loss, loss_fn(z1, z2).loss, rtol=0, atol=0)
    with pytest.raises(ValueError, match="more than queue_size 4"):
        _nt_xent(4).load_state_dict(loss_fn.state_dict())


class _Net(nn.Module):
    """``[B, 3, 2, 2]`` to ``[B, D]``: a linear layer, enough to follow the moving average."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(12, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear(x.flatten(1))
        return out


def test_momentum_encoder_follows_the_model_and_supplies_the_keys() -> None:
    torch.manual_seed(0)
    model, loss_fn = _Net(), _nt_xent(16)
    feed = MemoryFeed.of(loss_fn, model, decay=0.9)
    assert feed.network is not None and not any(p.requires_grad for p in feed.network.parameters())
    before = [p.detach().clone() for p in feed.network.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # the optimizer moved the model
    images = torch.randn(4, 3, 2, 2)  # 2 samples x 2 views
    feed(images, model(images))
    for old, new, online in zip(before, feed.network.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * online, rtol=0, atol=1e-6)
    expected = F.normalize(feed.network(images), dim=1)  # view 1 rows then view 2 rows
    torch.testing.assert_close(loss_fn.memory, expected.detach(), rtol=0, atol=1e-6)
    assert set(feed.state().state_dict()) == {
        "loss._extra_state",
        "network.linear.weight",
        "network.linear.bias",
    }


def test_without_momentum_the_keys_are_the_models_own_projections() -> None:
    model, loss_fn = _Net(), _nt_xent(16)
    feed = MemoryFeed.of(loss_fn, model, decay=0.0)
    assert feed.network is None and set(feed.state().state_dict()) == {"loss._extra_state"}
    images = torch.randn(4, 3, 2, 2)
    projections = model(images)
    feed(images, projections)
    torch.testing.assert_close(loss_fn.memory, F.normalize(projections, dim=1).detach(), rtol=0, atol=1e-6)


def test_a_loss_claiming_a_memory_without_remember_is_a_plugin_error() -> None:
    with pytest.raises(PluginError, match=r"no remember\(keys1, keys2\) method"):
        MemoryFeed.of(nn.Identity(), _Net(), decay=0.5)


def _memory_spec(**kwargs: object) -> str:
    text = tiny_pretrain_spec(**kwargs)  # type: ignore[arg-type]
    return text.replace("temperature = 0.2", "temperature = 0.2\nqueue_size = 96").replace(
        "[pretrain.dataset]", "memory_momentum = 0.9\n\n[pretrain.dataset]"
    )


def test_validation_of_momentum(tmp_path: Path) -> None:
    without_memory = tiny_pretrain_spec().replace(
        "[pretrain.dataset]", "memory_momentum = 0.9\n\n[pretrain.dataset]"
    )
    with pytest.raises(SpecError) as caught:
        load(write_spec(tmp_path / "a.toml", without_memory))
    assert "pretrain.memory_momentum" in str(caught.value) and "keeps none" in str(caught.value)
    too_high = _memory_spec().replace("memory_momentum = 0.9", "memory_momentum = 1.0")
    with pytest.raises(SpecError, match=r"pretrain\.memory_momentum: must be < 1\.0, got 1\.0"):
        load(write_spec(tmp_path / "b.toml", too_high))
    pretrain = load(write_spec(tmp_path / "c.toml", _memory_spec())).spec.pretrain
    assert pretrain is not None and pretrain.memory_momentum == 0.9


def test_a_resumed_run_continues_with_the_memory_and_momentum_encoder_it_had(
    digits_env: Path, tmp_path: Path
) -> None:
    text = _memory_spec(batch_size=32, epochs=2, max_steps=6, checkpoint_every=1)
    text = text.replace("checkpoint_every = 1", "checkpoint_every = 1\nkeep_checkpoints = 6")
    spec = write_spec(tmp_path / "memory.toml", text)
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    run(load(spec), run_dir=whole)
    run(load(spec), run_dir=crashed)
    # As if the run had died after step 3: later checkpoints and the stage's outputs are gone.
    stage = crashed / "pretrain"
    for step, path in list_checkpoints(stage / "checkpoints"):
        if step > 3:
            path.unlink()
    for name in ("final.pt", "results.json"):
        (stage / name).unlink()
    state = load_checkpoint(latest_checkpoint(stage / "checkpoints"))  # type: ignore[arg-type]
    assert state["step"] == 3
    assert state["state"]["loss._extra_state"]["memory"].shape == (96, 16)  # 3 steps x 2 views x 32 keys
    assert any(key.startswith("network.encoder.") for key in state["state"])
    run(load(spec), run_dir=crashed)
    ours, theirs = load_state_dict(stage / "final.pt"), load_state_dict(whole / "pretrain" / "final.pt")
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0, msg=key)
    # The memory was in use: the same run without it has other losses from step 2 on.
    plain = tmp_path / "plain"
    plain_spec = tiny_pretrain_spec(batch_size=32, epochs=2, max_steps=6)
    run(load(write_spec(tmp_path / "plain.toml", plain_spec)), run_dir=plain)
    with_memory = read_jsonl(whole / "pretrain" / "metrics.jsonl")
    without = read_jsonl(plain / "pretrain" / "metrics.jsonl")
    assert with_memory[0]["loss"] == pytest.approx(without[0]["loss"], abs=1e-6)  # nothing remembered yet
    assert with_memory[1]["loss"] > without[1]["loss"] + 0.1  # 64 more negatives per row
