"""Fault campaign: kill, fill, race and interrupt ``contrastive run`` on the digits data, and count
what it survived.

Every scenario drives the installed ``contrastive`` command (``python -m contrastive``) as a user
or a cluster would, on a shortened digits demo (``digits_1pct`` with a 4-filter ResNet-18 at 8 px:
12 pretraining, 6 fine-tuning and 6 distillation steps, a checkpoint every 2 steps), and compares
what it leaves with an uninterrupted run of the same command. One table row per scenario:

- ``trials``: faults injected; ``survived``: trials after which the command, run again as it was,
  finished with final weights (every stage's ``final.pt``) bit-identical to the uninterrupted run
  and nothing else went wrong (the scenario's own checks: exit codes, messages, no orphans, ...);
- ``lost``: trials after which a file the run had written (a checkpoint, a final, the resolved spec)
  was missing or unreadable although the run said it had been written;
- ``first_failure``: what went wrong first, or ``-``.

Scenarios (``--only`` picks some):

``kill`` / ``kill-2ranks``
    SIGKILL of the whole process tree at ``--kills`` moments spread over all three stages (inside a
    step, after a stage's last step -- evaluation, final write, plots --, while an atomic write's
    temporary file exists, between two stages), each followed by the same command again; the kills
    of one scenario form one chain of restarts in one run directory. ``kill-2ranks`` runs
    ``--nproc-per-node 2`` (two gloo ranks under torchrun) and compares with an uninterrupted
    2-rank run.
``elastic``
    ``torchrun --max-restarts 1`` with one worker SIGKILLed mid-stage: the job must complete by
    itself, with the uninterrupted 2-rank run's weights.
``two-nodes``
    Two torchrun agents (``--nnodes 2``, c10d rendezvous on 127.0.0.1): the first step's loss must
    equal one process's; then one agent is killed mid-run, both are restarted and must finish.
``races``
    Two ``contrastive run`` started at once on one run directory (exactly one trains, the other
    exits at once naming the lock holder), a stale lock of a killed run (must not block the next
    run), two ``shards build digits`` into one folder.
``full-disk``
    The run directory on a small tmpfs that is filled up just before a checkpoint write, in each
    stage: one clear error naming the path and the bytes needed (exit 6), the earlier checkpoints
    loadable, no temporary left; after space is freed the same command finishes identically.
    Needs root (mount); skipped with a message otherwise.
``interrupts``
    SIGINT and SIGTERM (to the command's process group, as a terminal's Ctrl-C) mid-run, on one
    process with a data-loader worker and on two ranks: exit 130 / 143 within seconds with one line
    and no traceback, no process of the tree left, and the rerun finishes identically.
``bad-files``
    A pickle that would run code as ``finetune.init``, ``distill.teacher``, the checkpoint a run
    resumes from, and the ``final.pt`` of ``export`` and ``eval`` (exit 5, the code never runs);
    tar members that leave the folder (``../``, absolute), links, devices and FIFOs through
    ``shards index``, ``inspect`` and ``subset`` (exit 4, nothing written outside); training on a
    truncated, bit-flipped, empty shard or an index with wrong counts (exit 0 with the damage
    counted as skipped samples, or exit 4; never a hang or a traceback).
``bad-specs``
    ``benchmarks/spec_fuzz.py``'s generated bad specs: rejected with exit 2, no traceback, nothing
    written.
``first-run``
    A first command that fails its checks (missing ``finetune.init`` or ``distill.teacher`` file,
    missing logger extra) must write nothing; the corrected command in the same directory then runs
    without ``--force``, leaves no ``*.replaced-N`` and matches the uninterrupted run.
``raising-plugin``
    A buggy third-party plugin (an augmentation raising in ``per_sample``, in a worker and in the
    trainer; one without ``size``; an encoder whose builder raises): exit 3, one line naming the
    component, never "skipped" samples, the traceback only under ``-v``; after the builder error
    the corrected command runs without ``--force``.
``signal-resume``
    SIGINT / SIGTERM mid-stage with no periodic checkpoint due: the signal's checkpoint is the last
    logged step, ``--dry-run`` says "resume at step N", and the rerun resumes there and matches the
    uninterrupted run bit for bit (one process with a data-loader worker, and two ranks).

Run: ``python benchmarks/faults.py [--kills 20] [--only kill,races] [--json rows.json]``. The
defaults take about 10 minutes on 2 cores; ``--budget`` (seconds) stops adding trials once spent.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

#: ``--set`` overrides that shrink ``digits_1pct`` to seconds while keeping every kind of work.
TINY = (
    "runtime.device=cpu",
    "runtime.num_workers=0",
    "runtime.threads=1",
    "runtime.log_every=1",
    "runtime.checkpoint_every=2",
    "pretrain.max_steps=12",
    "pretrain.batch_size=32",
    "pretrain.encoder.base_width=4",
    "pretrain.augmentation.size=8",
    "pretrain.eval_augmentation.size=8",
    "pretrain.monitor_every=1",
    "finetune.max_steps=6",
    "finetune.augmentation.size=8",
    "finetune.eval_augmentation.size=8",
    "finetune.eval_dataset.labels_per_class=2",
    "distill.max_steps=6",
    "distill.batch_size=32",
    "distill.encoder.base_width=4",
    "distill.augmentation.size=8",
    "distill.eval_augmentation.size=8",
    "distill.eval_dataset.labels_per_class=2",
)
STAGES = ("pretrain", "finetune", "distill")
STEPS = {"pretrain": 12, "finetune": 6, "distill": 6}
#: Seconds a single command may take before the campaign calls it a hang.
HANG = 300.0


@attrs.define
class Row:
    """One scenario's result (the ``--json`` objects have exactly these keys)."""

    scenario: str
    trials: int = 0
    survived: int = 0
    lost: int = 0
    first_failure: str | None = None

    def fail(self, why: str) -> None:
        """Record a failure (the first one is kept)."""
        if self.first_failure is None:
            self.first_failure = why


@attrs.frozen
class Campaign:
    """Where the campaign works and what it may spend."""

    workdir: Path
    rng: random.Random
    deadline: float
    kills: int

    @property
    def env(self) -> dict[str, str]:
        """The commands' environment: the digits shards in the campaign's folder."""
        env = dict(os.environ)
        env["CONTRASTIVE_DATA"] = str(self.workdir / "data")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def time_left(self) -> bool:
        """Whether more trials may start."""
        return time.monotonic() < self.deadline

    def fresh(self, name: str) -> Path:
        """A new, empty folder for one trial."""
        path = self.workdir / name
        shutil.rmtree(path, ignore_errors=True)
        return path


# --- processes ------------------------------------------------------------------------------


def run_command(run_dir: Path, *extra: str, overrides: Sequence[str] = TINY) -> list[str]:
    """``contrastive run digits_1pct --run-dir RUN_DIR --set ...`` as an argument list."""
    command = [sys.executable, "-m", "contrastive", "run", "digits_1pct", "--run-dir", str(run_dir)]
    for item in overrides:
        command += ["--set", item]
    return command + list(extra)


def start(command: Sequence[str], campaign: Campaign, log: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own process group, its output to ``log``."""
    handle = log.open("ab")
    try:
        return subprocess.Popen(
            list(command), env=campaign.env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        handle.close()


def finish(command: Sequence[str], campaign: Campaign, log: Path) -> int:
    """Run ``command`` to its end (a hang is killed after :data:`HANG` seconds: exit -9)."""
    process = start(command, campaign, log)
    try:
        return process.wait(timeout=HANG)
    except subprocess.TimeoutExpired:
        kill_tree(process.pid)
        process.wait()
        return -9


def _parents() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def descendants(pid: int) -> set[int]:
    """Every living process below ``pid`` (Linux ``/proc``)."""
    parents = _parents()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and everything below it at once, as a preempted node loses them."""
    for target in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGKILL)


# --- what a run left ------------------------------------------------------------------------


def final_weights(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Every stage's ``final.pt`` tensors, flattened to dotted names."""
    weights = {}
    for stage in STAGES:
        path = run_dir / stage / "final.pt"
        if path.exists():
            weights[stage] = _tensors(torch.load(path, map_location="cpu", weights_only=True))
    return weights


def _tensors(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    found: dict[str, torch.Tensor] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            found |= _tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, list | tuple):
        for index, value in enumerate(obj):
            found |= _tensors(value, f"{prefix}.{index}")
    return found


def difference(run_dir: Path, reference: dict[str, dict[str, torch.Tensor]]) -> str | None:
    """Why ``run_dir``'s final weights are not bit-identical to ``reference`` (None if they are)."""
    got = final_weights(run_dir)
    for stage in STAGES:
        if stage not in got:
            return f"{stage}/final.pt missing"
        if got[stage].keys() != reference[stage].keys():
            return f"{stage}/final.pt holds other tensors"
        for name, tensor in reference[stage].items():
            if not torch.equal(got[stage][name], tensor):
                return f"{stage}/final.pt: {name} differs from the uninterrupted run"
    return None


def damaged(run_dir: Path) -> str | None:
    """A checkpoint or final that cannot be loaded, or a missing resolved spec (None: all good)."""
    if not (run_dir / "spec.resolved.toml").is_file():
        return "spec.resolved.toml missing"
    for path in sorted(run_dir.glob("*/checkpoints/*.pt")) + sorted(run_dir.glob("*/final.pt")):
        if path.name.startswith("."):
            continue
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            return f"{path.relative_to(run_dir)} unreadable: {type(exc).__name__}"
    return None


def temporaries(run_dir: Path) -> list[str]:
    """Atomic-write temporaries left in ``run_dir``."""
    return [str(p.relative_to(run_dir)) for p in run_dir.rglob(".*.tmp")]


def last_step(run_dir: Path, stage: str) -> int:
    """The last step ``stage`` logged in ``metrics.jsonl`` (0 before the first)."""
    try:
        lines = (run_dir / stage / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                return int(record["step"])
    return 0


def first_loss(run_dir: Path) -> float | None:
    """Pretraining's step-1 loss from ``metrics.jsonl``."""
    with contextlib.suppress(OSError):
        for line in (run_dir / "pretrain" / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            if record.get("step") == 1 and "loss" in record:
                return float(record["loss"])
    return None


# --- kill moments ---------------------------------------------------------------------------


@attrs.frozen
class Moment:
    """Where a kill lands: a condition on the run directory, then a random delay."""

    where: str
    stage: str
    ready: Callable[[Path], bool]
    jitter: float


def _step_reached(stage: str, step: int) -> Callable[[Path], bool]:
    return lambda run_dir: last_step(run_dir, stage) >= step


def _writing(stage: str) -> Callable[[Path], bool]:
    return lambda run_dir: any((run_dir / stage).rglob(".*.tmp"))


def _finished(stage: str) -> Callable[[Path], bool]:
    return lambda run_dir: (run_dir / stage / "results.json").exists()


def moments(rng: random.Random, count: int) -> list[Moment]:
    """``count`` kill moments in run order, spread over every kind of place and every stage."""
    pool: list[Moment] = []
    for stage in STAGES:
        for step in range(1, STEPS[stage] + 1):
            pool.append(Moment(f"{stage} step {step}", stage, _step_reached(stage, step), 0.05))
        last = f"{stage} after its last step (evaluation, final write, plots)"
        pool.append(Moment(last, stage, _step_reached(stage, STEPS[stage]), 0.6))
        pool.append(Moment(f"{stage} during an atomic write", stage, _writing(stage), 0.0))
        if stage != STAGES[-1]:
            pool.append(Moment(f"between {stage} and the next stage", stage, _finished(stage), 0.0))
    order = {id(m): i for i, m in enumerate(pool)}
    chosen = rng.sample(pool, min(count, len(pool)))
    while len(chosen) < count:
        chosen.append(rng.choice(pool))
    return sorted(chosen, key=lambda m: order[id(m)])


def kill_at(moment: Moment, command: Sequence[str], run_dir: Path, campaign: Campaign, log: Path) -> str:
    """Start ``command``, SIGKILL its tree at ``moment``; how it ended (``killed`` when it was)."""
    process = start(command, campaign, log)
    limit = time.monotonic() + HANG
    while process.poll() is None and time.monotonic() < limit:
        if moment.ready(run_dir):
            time.sleep(campaign.rng.uniform(0, moment.jitter))
            if process.poll() is None:
                kill_tree(process.pid)
                process.wait()
                return "killed"
            break
        time.sleep(0.003)
    if process.poll() is None:
        kill_tree(process.pid)
        process.wait()
        return "hang"
    return f"exited {process.returncode} before the moment"


# --- scenarios ------------------------------------------------------------------------------


def reference(campaign: Campaign, name: str, *extra: str) -> tuple[Path, dict[str, dict[str, torch.Tensor]]]:
    """An uninterrupted run of the tiny command (``extra``: launcher flags)."""
    run_dir = campaign.fresh(name)
    code = finish(run_command(run_dir, *extra), campaign, campaign.workdir / f"{name}.log")
    if code:
        raise SystemExit(
            f"the uninterrupted run {name} failed (exit {code}); see {campaign.workdir / name}.log"
        )
    return run_dir, final_weights(run_dir)


def kill_scenario(name: str, campaign: Campaign, ref: dict[str, dict[str, torch.Tensor]], *extra: str) -> Row:
    """SIGKILL at ``campaign.kills`` moments in one chain of restarts, then finish and compare."""
    row = Row(name)
    run_dir = campaign.fresh(name)
    log = campaign.workdir / f"{name}.log"
    command = run_command(run_dir, *extra)
    landed: list[str] = []
    for moment in moments(campaign.rng, campaign.kills):
        if not campaign.time_left():
            break
        outcome = kill_at(moment, command, run_dir, campaign, log)
        if outcome == "hang":
            row.fail(f"hung before {moment.where}")
        elif outcome == "killed":
            row.trials += 1
            landed.append(moment.where)
        problem = damaged(run_dir) if (run_dir / "spec.resolved.toml").exists() else None
        if problem:
            row.lost += 1
            row.fail(f"after a kill at {moment.where}: {problem}")
    code = finish(command, campaign, log)
    why = f"the final rerun exited {code}" if code else difference(run_dir, ref) or damaged(run_dir)
    if why:
        row.fail(why)
    else:
        row.survived = row.trials
    print(f"  {name}: kills landed at: {'; '.join(landed)}", flush=True)
    return row


def _children_of(pid: int, needle: str) -> list[int]:
    """Processes directly below ``pid`` whose command line contains ``needle``."""
    found = []
    for child, parent in _parents().items():
        if parent == pid:
            with contextlib.suppress(OSError):
                if needle in Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode():
                    found.append(child)
    return found


def _wait_until(
    condition: Callable[[], bool], process: subprocess.Popen[bytes], timeout: float = HANG
) -> bool:
    limit = time.monotonic() + timeout
    while time.monotonic() < limit and process.poll() is None:
        if condition():
            return True
        time.sleep(0.01)
    return False


def _torchrun(*flags: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *flags, "-m", "contrastive"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def elastic_scenario(campaign: Campaign, ref: dict[str, dict[str, torch.Tensor]]) -> Row:
    """One worker SIGKILLed under ``torchrun --max-restarts 1``: the job finishes by itself."""
    row = Row("elastic")
    for trial, (stage, step, victim) in enumerate((("pretrain", 5, 1), ("finetune", 3, 0))):
        if not campaign.time_left():
            break
        run_dir = campaign.fresh(f"elastic-{trial}")
        log = campaign.workdir / f"elastic-{trial}.log"
        command = _torchrun("--standalone", "--nproc-per-node=2", "--max-restarts=1")
        command += run_command(run_dir)[3:]  # from "run" on
        agent = start(command, campaign, log)
        row.trials += 1
        if not _wait_until(functools.partial(_step_reached(stage, step), run_dir), agent):
            row.fail(f"trial {trial}: the job ended or hung before {stage} step {step}")
            kill_tree(agent.pid)
            agent.wait()
            continue
        workers = sorted(_children_of(agent.pid, "contrastive"))
        if len(workers) != 2:
            row.fail(f"trial {trial}: found {len(workers)} workers under the agent")
            kill_tree(agent.pid)
            agent.wait()
            continue
        kill_tree(workers[victim])
        try:
            code = agent.wait(timeout=HANG)
        except subprocess.TimeoutExpired:
            kill_tree(agent.pid)
            agent.wait()
            row.fail(f"trial {trial}: the restarted job hung")
            continue
        why = f"the job exited {code}" if code else difference(run_dir, ref) or damaged(run_dir)
        if why:
            row.fail(f"trial {trial} (rank {victim} killed in {stage}): {why}")
        else:
            row.survived += 1
    return row


def two_nodes_scenario(campaign: Campaign, two_ranks: Path, ref2: dict[str, dict[str, torch.Tensor]]) -> Row:
    """Two torchrun agents of one rank each on one machine, against one agent of two ranks: the
    same first-step loss; then one agent is killed mid-run, both are restarted, and the run ends
    with the 2-rank run's weights. (One process draws a different first batch: every rank streams
    its own shards, so the comparison is with the same world size.)"""
    row = Row("two-nodes")
    run_dir = campaign.fresh("two-nodes")

    def agents() -> list[subprocess.Popen[bytes]]:
        port = _free_port()
        flags = (
            "--nnodes=2",
            "--nproc-per-node=1",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}",
        )
        return [
            start(_torchrun(*flags, f"--rdzv-id=campaign-{port}") + run_command(run_dir)[3:], campaign, log)
            for log in (campaign.workdir / "two-nodes-a.log", campaign.workdir / "two-nodes-b.log")
        ]

    started = agents()
    row.trials = 1
    if not _wait_until(functools.partial(_step_reached("finetune", 2), run_dir), started[0]):
        row.fail("the two-node job ended or hung before fine-tuning step 2")
    expected, got = first_loss(two_ranks), first_loss(run_dir)
    if expected is None or got != expected:
        row.fail(f"first-step loss {got} on two nodes vs {expected} on one node with two ranks")
    kill_tree(started[1].pid)
    try:
        code = started[0].wait(timeout=120)
    except subprocess.TimeoutExpired:
        row.fail("the surviving agent hung after its peer was killed")
        kill_tree(started[0].pid)
        code = started[0].wait()
    started[1].wait()
    if code == 0 and last_step(run_dir, "distill") < STEPS["distill"]:
        row.fail("the surviving agent reported success without finishing")
    codes = []
    for agent in agents():
        try:
            codes.append(agent.wait(timeout=HANG))
        except subprocess.TimeoutExpired:
            kill_tree(agent.pid)
            codes.append(agent.wait())
    why = (
        f"the restarted agents exited {codes}"
        if any(codes)
        else difference(run_dir, ref2) or damaged(run_dir)
    )
    if why:
        row.fail(why)
    elif row.first_failure is None:
        row.survived = 1
    return row


def races_scenario(campaign: Campaign) -> Row:
    """Two runs on one directory; a stale lock; two shard builds into one folder."""
    row = Row("races")
    pretrain_only = ("--stage", "pretrain")
    for trial in range(3):
        if not campaign.time_left():
            break
        run_dir = campaign.fresh(f"race-{trial}")
        logs = [campaign.workdir / f"race-{trial}-{i}.log" for i in range(2)]
        pair = [start(run_command(run_dir, *pretrain_only), campaign, log) for log in logs]
        codes = [p.wait(timeout=HANG) for p in pair]
        texts = [log.read_text(errors="replace") for log in logs]
        row.trials += 1
        losers = [t for c, t in zip(codes, texts, strict=True) if c != 0]
        if sorted(c == 0 for c in codes) != [False, True]:
            row.fail(f"two runs on one directory exited {codes}")
        elif (
            not all(k in losers[0] for k in ("in use by", "pid", "on host", "since"))
            or "Traceback" in losers[0]
        ):
            row.fail(f"the refused run said: {losers[0].strip()[-300:]!r}")
        else:
            row.survived += 1
    # A killed run's lock must not block the next run.
    run_dir = campaign.fresh("race-stale")
    log = campaign.workdir / "race-stale.log"
    command = run_command(run_dir, *pretrain_only)
    row.trials += 1
    if (
        kill_at(
            Moment("pretrain step 5", "pretrain", _step_reached("pretrain", 5), 0.05),
            command,
            run_dir,
            campaign,
            log,
        )
        != "killed"
    ):
        row.fail("the stale-lock trial's run ended before its kill")
    elif finish(command, campaign, log) != 0:
        row.fail("a run after a killed one did not finish (stale lock?)")
    else:
        row.survived += 1
    # Two shard builds into one folder.
    out = campaign.fresh("race-shards")
    logs = [campaign.workdir / f"race-shards-{i}.log" for i in range(2)]
    build = [sys.executable, "-m", "contrastive", "shards", "build", "digits", str(out)]
    pair = [start(build, campaign, log) for log in logs]
    codes = [p.wait(timeout=HANG) for p in pair]
    row.trials += 1
    inspect = subprocess.run(
        [sys.executable, "-m", "contrastive", "shards", "inspect", str(out / "train")],
        env=campaign.env,
        capture_output=True,
        text=True,
        check=False,
    )
    texts = [log.read_text(errors="replace") for log in logs]
    if sorted(c == 0 for c in codes) != [False, True]:
        row.fail(f"two shard builds into one folder exited {codes}: {[t.strip()[-200:] for t in texts]}")
    elif inspect.returncode != 0:
        row.fail(
            f"the shards left by the race do not inspect: {inspect.stdout[-200:]}{inspect.stderr[-200:]}"
        )
    elif any("Traceback" in t for t in texts):
        row.fail("a shard build printed a traceback")
    else:
        row.survived += 1
    return row


@contextlib.contextmanager
def small_file_system(where: Path, megabytes: int) -> Iterator[Path | None]:
    """A tmpfs of ``megabytes`` at ``where`` (None when it cannot be mounted: not root, not Linux)."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        yield None
        return
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


def full_disk_scenario(campaign: Campaign, ref: dict[str, dict[str, torch.Tensor]]) -> Row:
    """Fill the run directory's file system just before a checkpoint write, in every stage."""
    row = Row("full-disk")
    with small_file_system(campaign.workdir / "small-fs", 64) as mount:
        if mount is None:
            row.fail("skipped: cannot mount a tmpfs here (needs root on Linux)")
            return row
        run_dir = mount / "run"
        log = campaign.workdir / "full-disk.log"
        command = run_command(run_dir)
        ballast = mount / "ballast"
        for stage in STAGES:
            process = start(command, campaign, log)
            first = run_dir / stage / "checkpoints" / "ckpt-00000002.pt"
            if not _wait_until(first.exists, process):
                row.fail(f"{stage}: the run ended before its first checkpoint (exit {process.poll()})")
                kill_tree(process.pid)
                process.wait()
                continue
            os.kill(process.pid, signal.SIGSTOP)
            time.sleep(0.2)
            size = first.stat().st_size
            free = shutil.disk_usage(mount).free
            with ballast.open("wb") as handle:  # leave half a checkpoint free
                handle.truncate(0)
                handle.write(b"\0" * max(0, free - size // 2))
            os.kill(process.pid, signal.SIGCONT)
            row.trials += 1
            try:
                code = process.wait(timeout=HANG)
            except subprocess.TimeoutExpired:
                kill_tree(process.pid)
                code = process.wait()
            text = log.read_text(errors="replace").strip().splitlines()[-1:]
            last = text[0] if text else ""
            checks = [
                (code == 6, f"exit {code}, not 6"),
                ("No space left" in last and "bytes needed" in last, f"message {last!r}"),
                (not temporaries(run_dir), f"temporaries left: {temporaries(run_dir)}"),
                (damaged(run_dir) is None, f"{damaged(run_dir)}"),
            ]
            failed = [why for ok, why in checks if not ok]
            if failed:
                row.fail(f"{stage}: {failed[0]}")
            else:
                row.survived += 1
            ballast.unlink()
        code = finish(command, campaign, log)
        why = f"the rerun after freeing space exited {code}" if code else difference(run_dir, ref)
        if why:
            row.fail(why)
            row.survived = 0
        if damaged(run_dir):
            row.lost += 1
    return row


def interrupts_scenario(
    campaign: Campaign,
    ref: dict[str, dict[str, torch.Tensor]],
    ref2: dict[str, dict[str, torch.Tensor]] | None,
) -> Row:
    """SIGINT / SIGTERM to the command's process group mid-run; exit code, message, orphans, rerun."""
    row = Row("interrupts")
    cases = [
        (sig, launch) for launch in ((), ("--nproc-per-node", "2")) for sig in (signal.SIGINT, signal.SIGTERM)
    ]
    for trial, (sig, launch) in enumerate(cases):
        if not campaign.time_left() or (launch and ref2 is None):
            continue
        run_dir = campaign.fresh(f"interrupt-{trial}")
        log = campaign.workdir / f"interrupt-{trial}.log"
        command = run_command(run_dir, *launch, overrides=(*TINY, "runtime.num_workers=1"))
        process = start(command, campaign, log)
        row.trials += 1
        if not _wait_until(functools.partial(_step_reached("pretrain", 5), run_dir), process):
            row.fail(f"{sig.name}: the run ended or hung before pretraining step 5")
            kill_tree(process.pid)
            process.wait()
            continue
        tree = descendants(process.pid)
        sent = time.monotonic()
        os.killpg(process.pid, sig)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            kill_tree(process.pid)
            code = None
        seconds = time.monotonic() - sent
        time.sleep(1.0)
        orphans = [pid for pid in tree if alive(pid)]
        for pid in orphans:
            kill_tree(pid)
        text = log.read_text(errors="replace")
        where = f"{sig.name}{' on 2 ranks' if launch else ''}"
        if code != 128 + sig:
            row.fail(f"{where}: exit {code} after {seconds:.1f} s, not {128 + sig}")
        elif "Traceback" in text or "interrupted by" not in text:
            row.fail(f"{where}: output was {text.strip()[-300:]!r}")
        elif orphans:
            row.fail(f"{where}: {len(orphans)} processes left running")
        else:
            code = finish(command, campaign, log)
            why = f"rerun exited {code}" if code else difference(run_dir, ref2 if launch and ref2 else ref)
            if why:
                row.fail(f"{where}: {why}")
            else:
                row.survived += 1
    return row


def bad_specs_scenario(campaign: Campaign, count: int) -> Row:
    """``spec_fuzz.py``'s generated bad specs: exit 2, no traceback, no file written."""
    row = Row("bad-specs")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        import spec_fuzz  # the sibling script
    except ImportError as exc:
        row.fail(f"skipped: {exc}")
        return row
    folder = campaign.fresh("specs")
    for bad in spec_fuzz.bad_specs(campaign.rng.randrange(2**31), count, folder / "specs"):
        outcome = spec_fuzz.check(bad.path, folder / "sandbox" / bad.path.parent.name / "run")
        row.trials += 1
        if outcome.rejected:
            row.survived += 1
        else:
            row.fail(f"{bad.kind}: {bad.description} -> exit {outcome.exit_code}")
    return row


class _RunsCode:
    """A pickle payload: unpickling it creates ``marker`` (it must never be unpickled)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Path.touch, (self.marker,))


def _cli(campaign: Campaign, *args: str, timeout: float = HANG) -> tuple[int | None, str]:
    """``contrastive ARGS`` to its end: exit code (None: hung and killed) and output."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "contrastive", *args],
            env=campaign.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as hung:
        return None, str(hung.output or "")
    return done.returncode, done.stdout + done.stderr


def _hostile_tar_member(path: Path, kind: str, outside: Path) -> None:
    """Append a member of ``kind`` (escaping name, link, device, FIFO) to the tar shard ``path``."""
    types = {
        "symlink": tarfile.SYMTYPE,
        "hardlink": tarfile.LNKTYPE,
        "chardev": tarfile.CHRTYPE,
        "fifo": tarfile.FIFOTYPE,
    }
    names = {"dotdot": "../escaped000001", "absolute": str(outside / "escaped000001")}
    info = tarfile.TarInfo(f"{names.get(kind, 'hostile000001')}.png")
    info.type = types.get(kind, tarfile.REGTYPE)
    info.linkname = {"symlink": "/etc/passwd", "hardlink": "missing.png"}.get(kind, "")
    data = b"\x89PNG\r\n\x1a\n not an image"
    if info.type == tarfile.REGTYPE:
        info.size = len(data)
    with tarfile.open(path, "a", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)


def bad_files_scenario(campaign: Campaign, ref_dir: Path) -> Row:
    """Hostile pickles where weights are read; hostile tar members; damaged shards and indexes."""
    row = Row("bad-files")
    folder = campaign.fresh("bad-files")
    folder.mkdir(parents=True)
    marker = folder / "code-ran"
    hostile = folder / "hostile.pt"
    torch.save({"state_dict": _RunsCode(marker)}, hostile)

    def judge(what: str, code: int | None, text: str, allowed: tuple[int, ...]) -> None:
        row.trials += 1
        if marker.exists():
            row.fail(f"{what}: the pickle's code ran")
            marker.unlink()
        elif code is None:
            row.fail(f"{what}: hung")
        elif code not in allowed or "Traceback" in text:
            row.fail(f"{what}: exit {code}: {text.strip()[-200:]!r}")
        else:
            row.survived += 1

    tiny = [f"--set={item}" for item in TINY]
    judge(
        "finetune.init",
        *_cli(
            campaign,
            "run",
            "digits_1pct",
            "--stage",
            "finetune",
            "--run-dir",
            str(folder / "r1"),
            *tiny,
            f'--set=finetune.init="{hostile}"',
        ),
        (5,),
    )
    judge(
        "distill.teacher",
        *_cli(
            campaign,
            "run",
            "digits_1pct",
            "--stage",
            "distill",
            "--run-dir",
            str(folder / "r2"),
            *tiny,
            f'--set=distill.teacher="{hostile}"',
        ),
        (5,),
    )
    stage = folder / "stage"
    shutil.copytree(ref_dir / "pretrain", stage)
    shutil.copy(hostile, stage / "final.pt")
    judge("export", *_cli(campaign, "export", str(stage), str(folder / "out.pt")), (5,))
    judge(
        "eval", *_cli(campaign, "eval", str(stage), "--train", "digits:test", "--test", "digits:test"), (5,)
    )
    resumed = folder / "resume"
    shutil.copytree(ref_dir, resumed)
    for name in ("results.json", "final.pt"):
        (resumed / "pretrain" / name).unlink()
    shutil.rmtree(resumed / "finetune")
    shutil.rmtree(resumed / "distill")
    shutil.copy(hostile, resumed / "pretrain" / "checkpoints" / "ckpt-99999999.pt")
    judge("resume", *_cli(campaign, "run", "digits_1pct", "--run-dir", str(resumed), *tiny), (5,))

    source = campaign.workdir / "data" / "digits" / "digits-v1" / "train"
    for kind in ("dotdot", "absolute", "symlink", "hardlink", "chardev", "fifo"):
        shards = folder / f"tar-{kind}"
        shutil.copytree(source, shards)
        outside = folder / f"outside-{kind}"
        _hostile_tar_member(sorted(shards.glob("*.tar"))[0], kind, outside)
        for command in (["index", "--force"], ["inspect"], ["subset", "--per-class", "1"]):
            extra = [str(folder / f"subset-{kind}")] if command[0] == "subset" else []
            args = ["shards", command[0], *command[1:], str(shards), *extra]
            judge(f"shards {command[0]} with a {kind} member", *_cli(campaign, *args), (4,))
        if outside.exists() or (folder / "escaped000001.png").exists():
            row.fail(f"{kind}: a file was written outside the shard folder")
            row.lost += 1

    def truncate(shard: Path) -> None:
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])

    def flip(shard: Path) -> None:
        data = bytearray(shard.read_bytes())
        for offset in random.Random(0).sample(range(len(data)), 50):
            data[offset] ^= 0x10
        shard.write_bytes(bytes(data))

    def recount(shard: Path) -> None:
        index = shard.parent / "index.json"
        record = json.loads(index.read_text())
        text = json.dumps(record).replace(
            f'"count": {record["shards"][0]["count"]}', f'"count": {record["shards"][0]["count"] + 5}', 1
        )
        index.write_text(text)

    def empty(shard: Path) -> None:
        shard.write_bytes(b"")

    for name, damage in (
        ("truncated", truncate),
        ("bit-flipped", flip),
        ("index counts edited", recount),
        ("empty", empty),
    ):
        shards = folder / f"damaged-{name.replace(' ', '-')}"
        shutil.copytree(source, shards)
        damage(sorted(shards.glob("*.tar"))[0])
        table = f'{{name = "webdataset", urls = "{shards}", labelled = false}}'
        args = ["run", "digits_1pct", "--stage", "pretrain", "--run-dir", str(folder / f"run-{name}"), *tiny]
        code, text = _cli(
            campaign,
            *args,
            f"--set=pretrain.dataset={table}",
            "--set=pretrain.monitor_every=1000",
            timeout=180,
        )
        judge(f"training on a {name} shard", code, text, (0, 4))
    return row


# --- issue 25: a user's first day ---------------------------------------------------------------


def _replaced(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.glob("*.replaced-*")) if run_dir.exists() else []


def first_run_scenario(campaign: Campaign, ref: dict[str, dict[str, torch.Tensor]]) -> Row:
    """A first command that fails its checks (a missing ``finetune.init`` / ``distill.teacher``
    file, a missing logger extra), then the corrected command in the same run directory: the first
    must write nothing, the second must run without ``--force``, leave no ``*.replaced-N`` and
    match the uninterrupted run."""
    row = Row("first-run")
    mistakes = [
        ("missing finetune.init", 5, ("--stage", "finetune", "--set", "finetune.init=missing-pretrain.pt")),
        ("missing distill.teacher", 5, ("--set", "distill.teacher=missing-teacher.pt")),
    ]
    if importlib.util.find_spec("wandb") is None:
        mistakes.append(("missing logger extra", 3, ("--set", 'runtime.loggers=[{name = "wandb"}]')))
    for trial, (what, expected, extra) in enumerate(mistakes):
        if not campaign.time_left():
            break
        run_dir = campaign.fresh(f"first-run-{trial}")
        log = campaign.workdir / f"first-run-{trial}.log"
        row.trials += 1
        code = finish(run_command(run_dir, *extra), campaign, log)
        text = log.read_text(errors="replace")
        if code != expected or "Traceback" in text:
            row.fail(f"{what}: exit {code}, not {expected}: {text.strip()[-200:]!r}")
            continue
        if run_dir.exists():
            row.fail(f"{what}: the failed command wrote {sorted(p.name for p in run_dir.iterdir())}")
            continue
        code = finish(run_command(run_dir), campaign, log)
        why = f"the corrected command exited {code}" if code else difference(run_dir, ref)
        if not why and _replaced(run_dir):
            why = f"left {_replaced(run_dir)}"
        if why:
            row.fail(f"{what}: {why}")
        else:
            row.survived += 1
    return row


#: The campaign's buggy third-party plugin, written to ``buggy_plugin.py`` in its working folder.
_BUGGY_PLUGIN = """
from contrastive import Component, hookimpl
class Raising:
    num_views, size = 2, 8
    def per_sample(self, image, generator=None):
        return image.no_such_method()
    def on_device(self, views, generator=None):
        return views.float() / 255.0
class Sizeless(Raising):
    @property
    def size(self):
        raise AttributeError("'Sizeless' object has no attribute 'view_size'")
def broken(options, **inputs):
    raise RuntimeError("the broken encoder's builder always fails")
class Buggy:
    @hookimpl
    def contrastive_register_augmentations(self):
        return [
            Component("raising", lambda o: Raising(), summary="raises"),
            Component("sizeless", lambda o: Sizeless(), summary="no size"),
        ]
    @hookimpl
    def contrastive_register_encoders(self):
        return [Component("broken_encoder", broken, summary="its builder raises")]
"""

#: Runs ``contrastive`` with the buggy plugin registered beside the installed ones (as if installed).
_WITH_BUGGY_PLUGIN = """
import sys
from contrastive import registry as plugins
import buggy_plugin
class EntryPoint:
    name, value, dist = "buggy", "buggy_plugin:Buggy", None
    def load(self):
        return buggy_plugin.Buggy()
found = plugins.discover_entry_points()
plugins.discover_entry_points = lambda: [*found, EntryPoint()]
from contrastive.cli import main
main(sys.argv[1:])
"""


def raising_plugin_scenario(campaign: Campaign, ref: dict[str, dict[str, torch.Tensor]]) -> Row:
    """A third-party plugin with bugs: an augmentation raising in ``per_sample`` (in a data-loader
    worker and in the trainer), one without ``size``, an encoder whose builder raises. Each must
    stop with exit 3 in one line naming the component and no traceback (``-v`` shows it), never as
    skipped samples; the builder error writes nothing, so the corrected command runs without
    ``--force`` and matches the uninterrupted run."""
    row = Row("raising-plugin")
    cases = [
        (
            "per_sample in a worker",
            "augmentations 'raising'",
            ("pretrain.augmentation.name=raising", "runtime.num_workers=1"),
        ),
        ("per_sample in the trainer", "augmentations 'raising'", ("pretrain.augmentation.name=raising",)),
        ("no size", "augmentations 'sizeless'", ("pretrain.augmentation.name=sizeless",)),
        ("builder", "encoders 'broken_encoder'", ("pretrain.encoder.name=broken_encoder",)),
    ]
    kept = tuple(o for o in TINY if not o.startswith(("pretrain.encoder.", "pretrain.augmentation.")))
    (campaign.workdir / "buggy_plugin.py").write_text(_BUGGY_PLUGIN)
    env = {
        **campaign.env,
        "PYTHONPATH": os.pathsep.join([str(campaign.workdir), os.environ.get("PYTHONPATH", "")]),
    }
    for trial, (what, named, overrides) in enumerate(cases):
        if not campaign.time_left():
            break
        run_dir = campaign.fresh(f"raising-{trial}")
        row.trials += 1
        args = run_command(run_dir, overrides=(*kept, *overrides))[3:]  # after "-m contrastive"
        for verbose in ((), ("-v",)):
            try:
                done = subprocess.run(
                    [sys.executable, "-c", _WITH_BUGGY_PLUGIN, *verbose, *args],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=HANG,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                row.fail(f"{what}: hung")
                break
            text = done.stdout + done.stderr
            traced = "Traceback" in text
            if done.returncode != 3 or named not in text or "skipped" in text or traced != bool(verbose):
                row.fail(f"{what}{' -v' if verbose else ''}: exit {done.returncode}: {text.strip()[-300:]!r}")
                break
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            if what == "builder":  # nothing written: the corrected command needs no --force
                code = finish(run_command(run_dir), campaign, campaign.workdir / "raising.log")
                why = f"the corrected command exited {code}" if code else difference(run_dir, ref)
                if why:
                    row.fail(f"{what}: {why}")
                    continue
            row.survived += 1
    return row


def signal_resume_scenario(
    campaign: Campaign,
    ref: dict[str, dict[str, torch.Tensor]],
    ref2: dict[str, dict[str, torch.Tensor]] | None,
) -> Row:
    """SIGINT / SIGTERM to the command's process group mid-stage with no periodic checkpoint due
    (``checkpoint_every`` beyond the run): the signal's own checkpoint must be at the last step
    the stage logged, ``--dry-run`` must say it resumes there, and the rerun must resume there and
    end bit-identical to the uninterrupted run (one process with a data-loader worker; two ranks)."""
    row = Row("signal-resume")
    overrides = (*TINY, "runtime.checkpoint_every=1000", "runtime.num_workers=1")
    cases = [
        (signal.SIGINT, "pretrain", 4, ()),
        (signal.SIGTERM, "finetune", 2, ()),
        (signal.SIGINT, "distill", 2, ()),
        (signal.SIGINT, "pretrain", 4, ("--nproc-per-node", "2")),
        (signal.SIGTERM, "finetune", 2, ("--nproc-per-node", "2")),
    ]
    for trial, (sig, stage, step, launch) in enumerate(cases):
        if not campaign.time_left() or (launch and ref2 is None):
            continue
        where = f"{sig.name} in {stage}{' on 2 ranks' if launch else ''}"
        run_dir = campaign.fresh(f"signal-{trial}")
        log = campaign.workdir / f"signal-{trial}.log"
        command = run_command(run_dir, *launch, overrides=overrides)
        process = start(command, campaign, log)
        row.trials += 1
        if not _wait_until(functools.partial(_step_reached(stage, step), run_dir), process):
            row.fail(f"{where}: the run ended or hung before step {step}")
            kill_tree(process.pid)
            process.wait()
            continue
        os.killpg(process.pid, sig)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            kill_tree(process.pid)
            code = None
        text = log.read_text(errors="replace")
        checkpoints = sorted((run_dir / stage / "checkpoints").glob("ckpt-*.pt"))
        logged = last_step(run_dir, stage)
        if code != 128 + sig or "Traceback" in text:
            row.fail(f"{where}: exit {code}: {text.strip()[-300:]!r}")
            continue
        if (run_dir / stage / "results.json").exists():
            row.fail(f"{where}: the stage finished before the signal landed (no mid-stage trial)")
            continue
        if [p.name for p in checkpoints] != [f"ckpt-{logged:08d}.pt"]:
            row.fail(f"{where}: checkpoints {[p.name for p in checkpoints]}, last logged step {logged}")
            continue
        dry = _cli(campaign, *command[3:], "--dry-run")
        if f"resume at step {logged}" not in dry[1]:
            row.fail(f"{where}: --dry-run did not say 'resume at step {logged}': {dry[1][-300:]!r}")
            continue
        code = finish(command, campaign, log)
        why = f"rerun exited {code}" if code else difference(run_dir, ref2 if launch and ref2 else ref)
        if why:
            row.fail(f"{where}: {why}")
        else:
            row.survived += 1
    return row


SCENARIOS = (
    "kill",
    "kill-2ranks",
    "elastic",
    "two-nodes",
    "races",
    "full-disk",
    "interrupts",
    "bad-files",
    "bad-specs",
    "first-run",
    "raising-plugin",
    "signal-resume",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--kills", type=int, default=20, help="SIGKILL moments per kill scenario (default 20)"
    )
    parser.add_argument("--specs", type=int, default=1000, help="generated bad specs (default 1000)")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {SCENARIOS}")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments and mutations")
    parser.add_argument("--budget", type=float, default=900.0, help="seconds after which no trial starts")
    parser.add_argument("--json", type=Path, help="also write the rows to this file as a JSON list")
    parser.add_argument("--keep", action="store_true", help="keep the working folder (its path is printed)")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}")
    workdir = Path(tempfile.mkdtemp(prefix="contrastive-faults-"))
    campaign = Campaign(workdir, random.Random(args.seed), time.monotonic() + args.budget, args.kills)
    print(f"working in {workdir}", flush=True)
    rows: list[Row] = []
    try:
        one_dir, ref = reference(campaign, "reference")
        ref2, two_dir = None, one_dir
        if {"kill-2ranks", "elastic", "interrupts", "two-nodes", "signal-resume"} & set(chosen):
            two_dir, ref2 = reference(campaign, "reference-2ranks", "--nproc-per-node", "2")
        plan: dict[str, Callable[[], Row]] = {
            "kill": lambda: kill_scenario("kill", campaign, ref),
            "kill-2ranks": lambda: kill_scenario(
                "kill-2ranks", campaign, ref2 or {}, "--nproc-per-node", "2"
            ),
            "elastic": lambda: elastic_scenario(campaign, ref2 or {}),
            "two-nodes": lambda: two_nodes_scenario(campaign, two_dir, ref2 or {}),
            "races": lambda: races_scenario(campaign),
            "full-disk": lambda: full_disk_scenario(campaign, ref),
            "interrupts": lambda: interrupts_scenario(campaign, ref, ref2),
            "bad-files": lambda: bad_files_scenario(campaign, one_dir),
            "bad-specs": lambda: bad_specs_scenario(campaign, args.specs),
            "first-run": lambda: first_run_scenario(campaign, ref),
            "raising-plugin": lambda: raising_plugin_scenario(campaign, ref),
            "signal-resume": lambda: signal_resume_scenario(campaign, ref, ref2),
        }
        for name in chosen:
            began = time.monotonic()
            rows.append(plan[name]())
            print(f"  {name}: {time.monotonic() - began:.0f} s", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\n| scenario | trials | survived | lost | first failure |\n| --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row.scenario} | {row.trials} | {row.survived} | {row.lost} | {row.first_failure or '-'} |")
    if args.json:
        args.json.write_text(json.dumps([attrs.asdict(row) for row in rows], indent=2) + "\n")
    return 0 if all(r.survived == r.trials and r.first_failure is None for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
