"""Forward + backward time of the built-in ``nt_xent`` against a plain single-matrix reference.

Run: ``python benchmarks/nt_xent.py [--device cpu|cuda] [--repeats 20] [--sizes 256 1024]``

Prints the median time per step of each implementation and its ratio to the reference measured in
the same run: the implementations take turns within each repeat, so load drift on a shared machine
hits them alike. lightly's ``NTXentLoss`` is timed too when ``import lightly`` works (it is never
a dependency). Single process: the built-in's cross-rank gather is the identity here.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from contrastive.registry import load_registry

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def reference_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """NT-Xent as one ``[2N, 2N]`` similarity matrix with its diagonal masked (the baseline).

    At SimCLR's scale: the mean over the ``2N`` rows times 2 (the sum of the two directions' means).
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return 2 * F.cross_entropy(sim, targets)


def candidates() -> dict[str, LossFn]:
    """Name -> loss function of two views; the reference first."""
    builtin = load_registry().build("losses", "nt_xent", temperature=0.1)
    found: dict[str, LossFn] = {
        "reference": reference_nt_xent,
        "contrastive.nt_xent": lambda a, b: builtin(a, b).loss,
    }
    try:
        from lightly.loss import NTXentLoss  # optional; never a dependency
    except ImportError:
        return found
    lightly_loss = NTXentLoss(temperature=0.1)
    found["lightly.NTXentLoss"] = lambda a, b: 2 * lightly_loss(a, b)  # lightly: mean over 2N rows
    return found


def _one_step(loss_fn: LossFn, z1: torch.Tensor, z2: torch.Tensor) -> float:
    z1.grad = z2.grad = None
    if z1.device.type == "cuda":
        torch.cuda.synchronize(z1.device)
    start = time.perf_counter()
    loss_fn(z1, z2).backward()
    if z1.device.type == "cuda":
        torch.cuda.synchronize(z1.device)
    return time.perf_counter() - start


def time_steps(
    losses: dict[str, LossFn], n: int, dim: int, device: torch.device, repeats: int
) -> dict[str, float]:
    """Median seconds of one forward + backward of each loss on ``[n, dim]`` leaf projections.

    The implementations take turns within each repeat, so load drift on a shared machine hits
    them alike.
    """
    z1 = torch.randn(n, dim, device=device, requires_grad=True)
    z2 = torch.randn(n, dim, device=device, requires_grad=True)
    times: dict[str, list[float]] = {name: [] for name in losses}
    for step in range(repeats + 3):  # 3 warm-up rounds
        for name, fn in losses.items():
            seconds = _one_step(fn, z1, z2)
            if step >= 3:
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024], help="samples per view (N)")
    parser.add_argument("--dim", type=int, default=128)
    args = parser.parse_args()
    device = torch.device(args.device)
    losses = candidates()
    print(
        f"nt_xent forward+backward, d={args.dim}, device={device}, torch {torch.__version__}, "
        f"threads={torch.get_num_threads()}, median of {args.repeats}"
    )
    if "lightly.NTXentLoss" not in losses:
        print("(lightly not importable: skipped)")
    for n in args.sizes:
        z1, z2 = torch.randn(n, args.dim, device=device), torch.randn(n, args.dim, device=device)
        values = {name: fn(z1, z2).item() for name, fn in losses.items()}
        medians = time_steps(losses, n, args.dim, device, args.repeats)
        baseline = medians["reference"]
        for name, seconds in medians.items():
            agree = abs(values[name] - values["reference"]) <= 1e-4 * max(1.0, abs(values["reference"]))
            print(
                f"N={n:5d}  {name:22s} {seconds * 1e3:9.3f} ms  x{seconds / baseline:5.2f} of reference"
                f"  loss={values[name]:.5f}{'' if agree else '  (differs from reference)'}"
            )


if __name__ == "__main__":
    main()
