"""Two real gloo processes give the same losses and gradients as one process on the combined batch.

One spawned run (spawning costs seconds) performs every distributed check and returns what it
measured; the single-process references are computed here, in the parent, without a process group.

Conventions: each rank's objective is its own loss; DDP averages parameter gradients over ranks, so
the distributed objective is the mean of the ranks' losses. For a local input ``x_r`` that means
``x_r.grad / world_size`` must equal the single-process gradient of the mean loss. For global BN
the test objective is a weighted sum over rows, whose sum over ranks is the single-process sum, so
input gradients compare directly.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from contrastive import distributed as cdist
from contrastive.errors import RunError
from contrastive.parameters import parameter_roles
from contrastive.registry import load_registry
from tests import official
from tests._multiprocess import run_distributed

pytestmark = pytest.mark.slow

WORLD = 2
B = 4  # samples per rank
D = 8
TOL = 1e-5
OFFICIAL_TOL = 1e-6  # against the transcriptions of the official code (tests/official.py)
FINETUNE_LRS = (0.16, 0.15, 0.12)
FINETUNE_WEIGHT_DECAY = 1e-2
MEMORY_STEPS = 3
MEMORY_SIZE = 36  # 3 steps of 16 keys: the oldest 12 give way


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n = WORLD * B
    z1 = torch.randn(n, D, generator=g)
    return {
        "gather_x": torch.randn(n, 3, generator=g),
        "gather_w": torch.randn(WORLD, n, 3, generator=g),
        # Views close to each other: the correct positive dominates, a wrong rank offset would not.
        "z1": z1,
        "z2": z1 + 0.2 * torch.randn(n, D, generator=g),
        "bn2d_x": torch.randn(n, 3, generator=g) * 2.0 + 1.0,
        "bn2d_w": torch.randn(n, 3, generator=g),
        "bn4d_x": torch.randn(n, 3, 2, 2, generator=g) - 0.5,
        "bn4d_w": torch.randn(n, 3, 2, 2, generator=g),
        "ddp_x1": torch.randn(n, 6, generator=g),
        "ddp_x2": torch.randn(n, 6, generator=g),
        # Weakly related views: losses of order 1, so a ratio to the official value means something.
        "official_z1": z1,
        "official_z2": 0.1 * z1 + torch.randn(n, D, generator=g),
        "finetune_x": torch.randn(len(FINETUNE_LRS), n, 6, generator=g),
        "finetune_y": torch.randint(0, 5, (len(FINETUNE_LRS), n), generator=g),
        # Keys of MEMORY_STEPS earlier steps (view 1, view 2) for the memory of negatives.
        "memory_keys": torch.randn(MEMORY_STEPS, 2, n, D, generator=g),
    }


def _rows(t: torch.Tensor, rank: int, per_rank: int = B) -> torch.Tensor:
    return t[rank * per_rank : (rank + 1) * per_rank]


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def _model(norm_layer: Any) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 8), norm_layer(8), nn.ReLU(), nn.Linear(8, 5))


# ----------------------------------------------------------------------------- spawned side


def _check_helpers(rank: int, world: int) -> dict[str, Any]:
    info = cdist.setup(device="cpu")
    cdist.barrier()
    return {
        "info": (info.rank, info.world_size, info.local_rank, info.device.type, info.is_distributed),
        "rank": cdist.rank(),
        "world_size": cdist.world_size(),
        "broadcast": cdist.broadcast_object({"from": rank, "items": (rank, "x")}),
    }


def _check_gather(rank: int, data: dict[str, torch.Tensor]) -> dict[str, Any]:
    x = _leaf(_rows(data["gather_x"], rank))
    gathered = cdist.gather_with_grad(x)
    # The local tensor is used directly as well: its gradient must add both paths.
    loss = (gathered * data["gather_w"][rank]).sum() + (x**2).sum()
    loss.backward()
    y = _leaf(_rows(data["gather_x"], rank))
    summed = cdist.all_reduce_sum_with_grad(y * (rank + 1))
    (summed * _rows(data["gather_w"][rank], 0)).sum().backward()
    return {"gathered": gathered.detach(), "grad": x.grad, "summed": summed.detach(), "sum_grad": y.grad}


def _check_nt_xent(rank: int, data: dict[str, torch.Tensor]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tau in (0.1, 0.5):
        loss_fn = load_registry().build("losses", "nt_xent", temperature=tau)
        z1, z2 = _leaf(_rows(data["z1"], rank)), _leaf(_rows(data["z2"], rank))
        result = loss_fn(z1, z2)
        result.loss.backward()
        out[tau] = {
            "loss": result.loss.detach(),
            "accuracy": result.metrics["contrastive_accuracy"],
            "grad1": z1.grad,
            "grad2": z2.grad,
        }
    return out


def _check_memory(rank: int, data: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Each rank remembers its own rows of every step's keys, then takes a loss with the memory."""
    loss_fn = load_registry().build("losses", "nt_xent", temperature=0.2, queue_size=MEMORY_SIZE)
    for keys in data["memory_keys"]:
        loss_fn.remember(_rows(keys[0], rank), _rows(keys[1], rank))
    z1, z2 = _leaf(_rows(data["z1"], rank)), _leaf(_rows(data["z2"], rank))
    result = loss_fn(z1, z2)
    result.loss.backward()
    return {"memory": loss_fn.memory, "loss": result.loss.detach(), "grad1": z1.grad, "grad2": z2.grad}


def _check_global_bn(
    rank: int, data: dict[str, torch.Tensor], group_size: int, per_rank: int = B
) -> dict[str, Any]:
    norm = load_registry().build("normalizations", "global_bn", group_size=group_size)
    out: dict[str, Any] = {}
    for key in ("bn2d", "bn4d"):
        x = _leaf(_rows(data[f"{key}_x"], rank, per_rank))
        layer = norm(3)
        with torch.no_grad():
            layer.weight.copy_(torch.tensor([0.5, 1.5, -1.0]))
            layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        twin = copy.deepcopy(layer)  # a copy (e.g. a teacher) keeps the process group
        y = layer(x)
        (y * _rows(data[f"{key}_w"], rank, per_rank)).sum().backward()
        twin_y = twin(x.detach())
        layer.eval()
        out[key] = {
            "y": y.detach(),
            "grad": x.grad,
            "weight_grad": layer.weight.grad,
            "bias_grad": layer.bias.grad,
            "running_mean": layer.running_mean.clone(),
            "running_var": layer.running_var.clone(),
            "eval_y": layer(x).detach(),
            "twin_y": twin_y,
        }
    return out


def _check_ddp(rank: int, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """nt_xent on a model with global BN inside DDP: parameter gradients after DDP's averaging."""
    model = DistributedDataParallel(_model(load_registry().build("normalizations", "global_bn")))
    x = torch.cat([_rows(data["ddp_x1"], rank), _rows(data["ddp_x2"], rank)])
    z1, z2 = model(x).chunk(2)
    load_registry().build("losses", "nt_xent").forward(z1, z2).loss.backward()
    return {name: p.grad.clone() for name, p in model.module.named_parameters() if p.grad is not None}


def _official_nt_xent(rank: int, data: dict[str, torch.Tensor]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tau in (0.1, 0.5):
        z1, z2 = _leaf(_rows(data["official_z1"], rank)), _leaf(_rows(data["official_z2"], rank))
        loss = load_registry().build("losses", "nt_xent", temperature=tau)(z1, z2).loss
        loss.backward()
        out[tau] = {"loss": loss.detach(), "grad": torch.cat([z1.grad, z2.grad])}  # type: ignore[list-item]
    return out


def _finetune_net(norm_layer: Any) -> nn.Sequential:
    """Head layer 1 (Linear without bias, BN, ReLU) below a zero-initialised linear classifier."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(6, 8, bias=False), norm_layer(8), nn.ReLU(), nn.Linear(8, 5))
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.2, 0.2)
        net[3].weight.zero_()
        net[3].bias.zero_()
    return net


#: The official variable name of each parameter of :func:`_finetune_net`.
FINETUNE_NAMES = {
    "0.weight": "head_proj/dense/kernel",
    "1.weight": "head_proj/batch_normalization/gamma",
    "1.bias": "head_proj/batch_normalization/beta",
    "3.weight": "head_supervised/dense/kernel",
    "3.bias": "head_supervised/dense/bias",
}


def _check_finetune(rank: int, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fine-tuning steps in DDP: global BN, default LARS with the stage's parameter roles."""
    registry = load_registry()
    net = _finetune_net(registry.build("normalizations", "global_bn"))
    roles = parameter_roles(net, classifier=net[3])
    optimizer = registry.build(
        "optimizers", "lars", model=net, roles=roles, lr=FINETUNE_LRS[0], weight_decay=FINETUNE_WEIGHT_DECAY
    )
    trained = DistributedDataParallel(net)
    loss_fn = registry.build("losses", "cross_entropy")
    for step, lr in enumerate(FINETUNE_LRS):
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad()
        images, labels = _rows(data["finetune_x"][step], rank), _rows(data["finetune_y"][step], rank)
        loss_fn(trained(images), labels).loss.backward()
        optimizer.step()
    return {name: p.detach().clone() for name, p in net.named_parameters()}


def _check_bad_group(rank: int) -> str:
    try:
        load_registry().build("normalizations", "global_bn", group_size=3)
    except RunError as exc:
        return str(exc)
    return "no error"


def _all_checks(rank: int, world: int, data: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {
        "helpers": _check_helpers(rank, world),
        "gather": _check_gather(rank, data),
        "nt_xent": _check_nt_xent(rank, data),
        "memory": _check_memory(rank, data),
        "global_bn": _check_global_bn(rank, data, group_size=0),
        "global_bn_group2": _check_global_bn(rank, data, group_size=2),
        "global_bn_group1": _check_global_bn(rank, data, group_size=1),
        "ddp": _check_ddp(rank, data),
        "official_nt_xent": _official_nt_xent(rank, data),
        "finetune": _check_finetune(rank, data),
        "bad_group": _check_bad_group(rank),
    }


def _groups_of_two(rank: int, world: int, data: dict[str, torch.Tensor]) -> dict[str, Any]:
    return _check_global_bn(rank, data, group_size=2, per_rank=2)


# ----------------------------------------------------------------------------- references


def _nt_xent_rows(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """Per-row NT-Xent of the whole batch written as the formula: ``[2N]`` (view-1 rows first)."""
    h = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = h @ h.T / tau
    rows = []
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        others = torch.cat([sim[i, :i], sim[i, i + 1 :]])
        rows.append(torch.logsumexp(others, dim=0) - sim[i, positive])
    return torch.stack(rows)


def _memory_rows(z1: torch.Tensor, z2: torch.Tensor, memory: torch.Tensor, tau: float) -> torch.Tensor:
    """Per-row NT-Xent ``[2N]`` with the ``[M, D]`` memory as further negatives, as the formula."""
    h = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = h @ h.T / tau
    remembered = h @ memory.T / tau
    rows = []
    for i in range(2 * n):
        others = torch.cat([sim[i, :i], sim[i, i + 1 :], remembered[i]])
        rows.append(torch.logsumexp(others, dim=0) - sim[i, (i + n) % (2 * n)])
    return torch.stack(rows)


def _bn_reference(key: str, data: dict[str, torch.Tensor], rows: slice) -> dict[str, torch.Tensor]:
    x = _leaf(data[f"{key}_x"][rows])
    layer = nn.BatchNorm1d(3) if x.dim() == 2 else nn.BatchNorm2d(3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.5, 1.5, -1.0]))
        layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    y = layer(x)
    (y * data[f"{key}_w"][rows]).sum().backward()
    assert x.grad is not None and layer.weight.grad is not None and layer.bias.grad is not None
    layer.eval()
    return {
        "y": y.detach(),
        "grad": x.grad,
        "weight_grad": layer.weight.grad,
        "bias_grad": layer.bias.grad,
        "running_mean": layer.running_mean,
        "running_var": layer.running_var,
        "eval_y": layer(x).detach(),
    }


# ----------------------------------------------------------------------------- the test


@pytest.fixture(scope="module")
def spawned() -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    data = _inputs()
    return data, run_distributed(_all_checks, data, world_size=WORLD)


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=TOL, atol=TOL)


def test_helpers_and_setup_in_a_process_group(spawned: Any) -> None:
    _, results = spawned
    for rank, result in enumerate(results):
        helpers = result["helpers"]
        assert helpers["info"] == (rank, WORLD, rank, "cpu", True)
        assert (helpers["rank"], helpers["world_size"]) == (rank, WORLD)
        assert helpers["broadcast"] == {"from": 0, "items": (0, "x")}


def test_gather_with_grad_values_and_gradient(spawned: Any) -> None:
    data, results = spawned
    total_w = data["gather_w"].sum(dim=0)  # d(sum of both ranks' losses)/d(gathered)
    for rank, result in enumerate(results):
        gather = result["gather"]
        _close(gather["gathered"], data["gather_x"])
        expected = _rows(total_w, rank) + 2 * _rows(data["gather_x"], rank)
        _close(gather["grad"], expected)
        _close(gather["summed"], _rows(data["gather_x"], 0) * 1 + _rows(data["gather_x"], 1) * 2)
        _close(gather["sum_grad"], (rank + 1) * (data["gather_w"][0][:B] + data["gather_w"][1][:B]))


def test_memory_of_negatives_is_the_same_on_two_ranks_as_in_one_process(spawned: Any) -> None:
    data, results = spawned
    # The memory one process keeps when it sees the whole batch: every step's keys, view 1 rows
    # then view 2 rows, newest step first, L2-normalised, cut to MEMORY_SIZE.
    steps = [F.normalize(torch.cat([keys[0], keys[1]]), dim=1) for keys in data["memory_keys"]]
    expected = torch.cat(steps[::-1])[:MEMORY_SIZE]
    n = WORLD * B
    per_row = _memory_rows(data["z1"], data["z2"], expected, 0.2)
    z1, z2 = _leaf(data["z1"]), _leaf(data["z2"])
    (2 * _memory_rows(z1, z2, expected, 0.2).mean()).backward()  # one process: sum of both means
    assert z1.grad is not None and z2.grad is not None
    for rank, result in enumerate(results):
        got = result["memory"]
        assert got["memory"].shape == (MEMORY_SIZE, D)
        torch.testing.assert_close(got["memory"], expected, rtol=0, atol=1e-7)  # both ranks, same memory
        own = torch.cat([per_row[rank * B : (rank + 1) * B], per_row[n + rank * B : n + (rank + 1) * B]])
        _close(got["loss"], own.sum() / B)
        _close(got["grad1"] / WORLD, _rows(z1.grad, rank))
        _close(got["grad2"] / WORLD, _rows(z2.grad, rank))
    _close(torch.stack([r["memory"]["loss"] for r in results]).mean(), 2 * per_row.mean())


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_nt_xent_two_ranks_equal_one_process(spawned: Any, tau: float) -> None:
    data, results = spawned
    z1, z2 = _leaf(data["z1"]), _leaf(data["z2"])
    single = load_registry().build("losses", "nt_xent", temperature=tau)(z1, z2)
    single.loss.backward()
    assert z1.grad is not None and z2.grad is not None
    per_row = _nt_xent_rows(data["z1"], data["z2"], tau)
    _close(single.loss, 2 * per_row.mean())  # SimCLR's scale: the sum of both directions' means
    n = WORLD * B
    losses = []
    for rank, result in enumerate(results):
        got = result["nt_xent"][tau]
        # Each rank's loss: its own rows (view 1 and view 2) of the global formula, summed over
        # the rows and divided by its B samples.
        own = torch.cat([per_row[rank * B : (rank + 1) * B], per_row[n + rank * B : n + (rank + 1) * B]])
        _close(got["loss"], own.sum() / B)
        # DDP averages gradients over ranks: the rank's gradient / WORLD is the single-process one.
        _close(got["grad1"] / WORLD, _rows(z1.grad, rank))
        _close(got["grad2"] / WORLD, _rows(z2.grad, rank))
        # Near-identical views: every positive (offset by the rank) is the top logit.
        assert got["accuracy"].item() == 1.0
        losses.append(got["loss"])
    _close(torch.stack(losses).mean(), single.loss)


@pytest.mark.parametrize("variant", ["global_bn", "global_bn_group2"])
def test_global_bn_two_ranks_equal_bn_on_combined_batch(spawned: Any, variant: str) -> None:
    data, results = spawned
    for key in ("bn2d", "bn4d"):
        ref = _bn_reference(key, data, slice(None))
        for rank, result in enumerate(results):
            got = result[variant][key]
            for name in ("y", "grad", "eval_y"):
                _close(got[name], _rows(ref[name], rank))
            _close(got["twin_y"], got["y"])
            _close(got["running_mean"], ref["running_mean"])
            _close(got["running_var"], ref["running_var"])
        # Parameters are replicated: the sum of the ranks' gradients is the combined one.
        for name in ("weight_grad", "bias_grad"):
            _close(sum(result[variant][key][name] for result in results), ref[name])


def test_global_bn_group_of_one_is_local_bn(spawned: Any) -> None:
    data, results = spawned
    for key in ("bn2d", "bn4d"):
        for rank, result in enumerate(results):
            ref = _bn_reference(key, data, slice(rank * B, (rank + 1) * B))
            got = result["global_bn_group1"][key]
            for name in ref:
                _close(got[name], ref[name])
            _close(got["twin_y"], got["y"])


def test_ddp_training_step_equals_one_process(spawned: Any) -> None:
    data, results = spawned
    model = _model(nn.BatchNorm1d)
    z1, z2 = model(torch.cat([data["ddp_x1"], data["ddp_x2"]])).chunk(2)
    load_registry().build("losses", "nt_xent")(z1, z2).loss.backward()
    expected = {name: p.grad for name, p in model.named_parameters()}
    for result in results:
        assert result["ddp"].keys() == expected.keys()
        for name, grad in expected.items():
            _close(result["ddp"][name], grad)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_nt_xent_two_ranks_equal_the_official_loss(spawned: Any, tau: float) -> None:
    """Each rank's value is the official replica's; gradients after DDP's mean are the official ones.

    Officially every replica divides its loss by the replica count and the gradients are summed
    across replicas (through the cross-replica concatenation too).
    """
    data, results = spawned
    hidden = [
        _leaf(torch.cat([_rows(data["official_z1"], r), _rows(data["official_z2"], r)]).double())
        for r in range(WORLD)
    ]
    per_replica = [official.contrastive_loss(hidden, r, tau) for r in range(WORLD)]
    (torch.stack(per_replica).sum() / WORLD).backward()
    for rank, result in enumerate(results):
        got = result["official_nt_xent"][tau]
        assert got["loss"].item() / per_replica[rank].item() == pytest.approx(1.0, abs=5e-7)
        # float32 loss: absolute agreement to 1e-6 per unit of loss
        assert abs(got["loss"].item() - per_replica[rank].item()) <= OFFICIAL_TOL * max(
            1.0, per_replica[rank].item()
        )
        reference_grad = hidden[rank].grad
        assert reference_grad is not None
        assert (got["grad"].double() / WORLD - reference_grad).abs().max().item() <= OFFICIAL_TOL


def test_finetuning_on_two_ranks_equals_the_official_optimizer(spawned: Any) -> None:
    """Three DDP fine-tuning steps on 2 ranks = official LARS + add_weight_decay on the whole batch."""
    data, results = spawned
    reference = _finetune_net(nn.BatchNorm1d)  # global BN over 2 ranks = BN over the combined batch
    to_ours = {theirs: ours for ours, theirs in FINETUNE_NAMES.items()}

    def supervised_loss(variables: dict[str, torch.Tensor], step: int) -> torch.Tensor:
        params = {to_ours[name]: value for name, value in variables.items()}
        logits = torch.func.functional_call(reference, params, (data["finetune_x"][step],))
        return F.cross_entropy(logits, data["finetune_y"][step])

    start = {FINETUNE_NAMES[name]: p.detach() for name, p in reference.named_parameters()}
    expected = official.finetune_steps(
        start, supervised_loss, FINETUNE_LRS, momentum=0.9, weight_decay=FINETUNE_WEIGHT_DECAY
    )
    for result in results:
        assert result["finetune"].keys() == FINETUNE_NAMES.keys()
        for name, value in result["finetune"].items():
            difference = (value - expected[FINETUNE_NAMES[name]]).abs().max().item()
            assert difference <= OFFICIAL_TOL, name
    assert results[0]["finetune"]["3.weight"].abs().max().item() > 1e-3  # the classifier learned


def test_global_bn_group_size_must_divide_world(spawned: Any) -> None:
    _, results = spawned
    for result in results:
        assert "group_size=3" in result["bad_group"]
        assert "world size 2" in result["bad_group"]


@pytest.mark.skipif(
    os.environ.get("CONTRASTIVE_TEST_FOUR_RANKS") != "1",
    reason="4 processes: opt-in (CONTRASTIVE_TEST_FOUR_RANKS=1); the default suite spawns only 2",
)
def test_global_bn_groups_of_two_on_four_ranks_equal_bn_per_group() -> None:
    # Ranks {0, 1} and {2, 3} share statistics; rank 2 is rank 0 of its group. The only check of
    # subgroups made with new_group (and of group rank vs global rank), hence worth 4 processes.
    data = _inputs()
    results = run_distributed(_groups_of_two, data, world_size=4)
    for key in ("bn2d", "bn4d"):
        for group in range(2):
            ref = _bn_reference(key, data, slice(4 * group, 4 * group + 4))
            members = results[2 * group : 2 * group + 2]
            for index, result in enumerate(members):
                got = result[key]
                for name in ("y", "grad", "eval_y"):
                    _close(got[name], _rows(ref[name], index, per_rank=2))
                _close(got["twin_y"], got["y"])
                _close(got["running_mean"], ref["running_mean"])
                _close(got["running_var"], ref["running_var"])
            for name in ("weight_grad", "bias_grad"):
                _close(sum(result[key][name] for result in members), ref[name])


# ----------------------------------------------------------------------------- single process


def test_single_process_helpers_are_identities(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = cdist.setup(device="cpu")
    assert info == cdist.DistInfo(0, 1, 0, torch.device("cpu"), False)
    assert (cdist.rank(), cdist.world_size()) == (0, 1)
    x = torch.randn(3, 2, requires_grad=True)
    assert cdist.gather_with_grad(x) is x and cdist.all_reduce_sum_with_grad(x) is x
    assert cdist.broadcast_object({"a": 1}) == {"a": 1}
    cdist.barrier()
    cdist.teardown()


def test_setup_explains_unusable_devices_and_environments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RunError, match="CUDA is not available"):
        cdist.setup(device="cuda")
    assert cdist.setup(device="auto").device == torch.device("cpu")
    with pytest.raises(RunError, match="device must be one of"):
        cdist.setup(device="tpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(RunError, match="MASTER_ADDR and MASTER_PORT are not set"):
        cdist.setup(device="cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(RunError, match="WORLD_SIZE='two'"):
        cdist.setup(device="cpu")


def test_setup_refuses_more_processes_than_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(RunError, match="LOCAL_RANK=3 needs GPU 3"):
        cdist.setup(device="auto")
