"""Shard sets streamed from an HTTP server, as from object storage at scale, faults included.

A :class:`ShardServer` (a ``ThreadingHTTPServer`` on 127.0.0.1) serves the digits shards; its
fault table makes chosen requests drop the connection, answer with an error status, or stall
before or within the body. The fault tests read in this process through the data source; one
test runs all three stages on 2 gloo ranks from the server and compares them with the same run
from the local files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal, TypeVar

import attrs
import pytest
import torch

from contrastive.data import check_skipped
from contrastive.data.digits import NAME, ensure_digits_subset
from contrastive.data.pipeline import ShardDataSource
from contrastive.data.remote import HttpPolicy, join, sibling
from contrastive.data.sources import webdataset_source
from contrastive.errors import DataError
from contrastive.interfaces import Batch
from tests.tiny_specs import DIGITS_SPEC, TINY_DIGITS_OVERRIDES, load_state_dict, subprocess_env

pytest_plugins = ["tests.stage_fixtures"]  # its fixture digits_data builds the digits shards

T = TypeVar("T")
TEST = f"{NAME}/test"  # 20 shards of 25 samples
#: The fault tests read 5 of them (125 samples) as a URL list; the index is found beside them.
PART = f"{TEST}/shard-{{000000..000004}}.tar"
PART_SAMPLES = 125
SHARD = 3  # the shard the faults hit
#: 3 tries of every URL, every read waiting at most 1 s (stall tests: 0.5 s, so a stall costs little).
POLICY = HttpPolicy(timeout=1.0, retries=2)
STALLS = HttpPolicy(timeout=0.5, retries=2)
#: Longest a stall lasts (the fixture ends every stall at teardown).
STALL_SECONDS = 60.0

Kind = Literal["drop", "status", "stall_head", "stall_body"]


@attrs.define
class Fault:
    """What the server does to the next ``times`` requests of a path, then serves it normally.

    Attributes:
        kind: Close the connection at byte ``at`` of the file (``drop``), answer ``status``, or stop
            answering before the headers (``stall_head``) or at byte ``at`` (``stall_body``).
        times: Requests still to spoil.
        at: File offset where a ``drop`` or ``stall_body`` strikes (also in a resumed request).
        status: The status of a ``status`` fault.
    """

    kind: Kind
    times: int = 1_000_000
    at: int = 5000
    status: int = 500


class ShardServer(ThreadingHTTPServer):
    """Serves the files under ``root`` (with ``Range`` support when ``ranges``), faults injected."""

    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), FaultyHandler)
        self.root = root.resolve()
        self.ranges = True
        self.faults: dict[str, Fault] = {}
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def take(self, path: str) -> Fault | None:
        """Count a request of ``path``; the fault it meets, if any."""
        with self.lock:
            self.hits[path] += 1
            fault = self.faults.get(path)
            if fault is None or fault.times <= 0:
                return None
            fault.times -= 1
            return fault

    def hits_of(self, path: str, expected: int, wait: float = 5.0) -> int:
        """The requests of ``path`` counted once ``expected`` arrived or ``wait`` seconds passed.

        A client that gave up on a stalled answer may return before the server's handler thread
        has counted its last request (on a busy machine, later than the client's timeout), so
        the count is read once it settles, not at the instant the client finished.
        """
        deadline = time.monotonic() + wait
        while self.hits[path] < expected and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)  # a request beyond the expected ones would show here too
        return self.hits[path]

    def handle_error(self, request: object, client_address: object) -> None:
        """Quiet: clients that gave up on a stalled answer are expected here."""


class FaultyHandler(BaseHTTPRequestHandler):
    server: ShardServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        """Quiet."""

    def do_GET(self) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        file = (self.server.root / path.lstrip("/")).resolve()
        fault = self.server.take(path)
        if not file.is_relative_to(self.server.root) or not file.is_file():
            self.send_error(404)
            return
        if fault is not None and fault.kind == "status":
            self.send_error(fault.status)
            return
        if fault is not None and fault.kind == "stall_head":
            self.server.release.wait(STALL_SECONDS)
            return
        data = file.read_bytes()
        wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        start = int(wanted.group(1)) if wanted and self.server.ranges else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        with contextlib.suppress(OSError):  # the client may be gone
            if fault is None:
                self.wfile.write(data[start:])
                return
            self.wfile.write(data[start : max(start, fault.at)])
            self.wfile.flush()
            if fault.kind == "stall_body":
                self.server.release.wait(STALL_SECONDS)


@pytest.fixture(scope="module")
def server(digits_data: Path) -> Iterator[ShardServer]:
    """The digits shards (and their cached subsets) over HTTP, for this module."""
    shards = ShardServer(digits_data / "digits")
    thread = threading.Thread(target=shards.serve_forever, daemon=True)
    thread.start()
    yield shards
    shards.release.set()
    shards.shutdown()
    shards.server_close()
    thread.join(timeout=10)


@pytest.fixture
def faults(server: ShardServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[ShardServer]:
    """The server with an empty fault table and hit count (reset after the test); no proxy."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    server.faults.clear()
    server.hits.clear()
    server.ranges = True
    yield server
    server.faults.clear()
    server.ranges = True


def within(seconds: float, work: Callable[[], T]) -> T:
    """``work()``, failing the test instead of hanging when it takes longer than ``seconds``."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = work()
        except BaseException as exc:  # handed to the test thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still reading after {seconds} s: a read without a timeout?"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


class Whole:
    """One view: the decoded image itself (no randomness), so batches compare bitwise."""

    num_views = 1
    size = 8

    def per_sample(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return image.unsqueeze(0)

    def on_device(self, views: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return views.float()


def evaluate(source: ShardDataSource, num_workers: int = 0) -> list[Batch]:
    """Every sample in order, 25 a batch (bad ones as masked rows)."""
    return list(
        source.eval_batches(
            augmentation=Whole(), batch_size=25, rank=0, world_size=1, num_workers=num_workers
        )
    )


def train(
    source: ShardDataSource, *, rank: int = 0, world_size: int = 2, num_workers: int = 0
) -> list[Batch]:
    """One shuffled epoch at a global batch of 50."""
    batches = source.train_batches(
        augmentation=Whole(),
        global_batch_size=50,
        rank=rank,
        world_size=world_size,
        epoch=1,
        seed=7,
        num_workers=num_workers,
    )
    return list(batches)


def same(ours: list[Batch], reference: list[Batch]) -> None:
    """Bitwise the same batches, none with a skipped sample."""
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference, strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
        assert torch.equal(a.mask, b.mask) and a.skipped == b.skipped == 0


def shard_path(number: int = SHARD) -> str:
    return f"/{TEST}/shard-{number:06d}.tar"


def part(server: ShardServer, policy: HttpPolicy = POLICY) -> ShardDataSource:
    """The fault tests' 5 shards over HTTP."""
    return within(30, lambda: webdataset_source(f"{server.url}/{PART}", http=policy))


def policy_for(fault: Fault) -> HttpPolicy:
    return STALLS if fault.kind.startswith("stall") else POLICY


@pytest.fixture(scope="module")
def local_part(digits_data: Path) -> list[Batch]:
    """The fault tests' 5 shards read from the local files (the reference of their reads over HTTP)."""
    return evaluate(webdataset_source(str(digits_data / "digits" / PART)))


def test_urls_beside_a_shard_set_keep_the_folder_token() -> None:
    assert join("https://h/sets/train/", "shard 1.tar") == "https://h/sets/train/shard%201.tar"
    assert join("https://h/sets/train?sig=x", "index.json") == "https://h/sets/train/index.json?sig=x"
    assert (
        sibling("https://h/sets/train/a.tar?sig=x#f", "index.json") == "https://h/sets/train/index.json?sig=x"
    )
    with pytest.raises(DataError, match="timeout must be positive"):
        HttpPolicy(timeout=0)


def test_a_shard_set_url_reads_like_its_local_folder(faults: ShardServer, digits_data: Path) -> None:
    """``urls = http://.../test``: the index is fetched from ``.../test/index.json`` and the shards it
    lists are streamed from the same folder; a brace pattern finds ``index.json`` beside the shards."""
    local = webdataset_source(str(digits_data / "digits" / TEST))
    remote = within(30, lambda: webdataset_source(f"{faults.url}/{TEST}", http=POLICY))
    assert remote.counts == local.counts and remote.classes == local.classes
    assert remote.urls[SHARD] == faults.url + shard_path()
    same(within(30, lambda: evaluate(remote)), evaluate(local))
    # Training in a data-loader worker (the policy travels with the job), on rank 1 of 2.
    same(within(60, lambda: train(remote, rank=1, num_workers=1)), train(local, rank=1, num_workers=1))
    listed = within(30, lambda: webdataset_source(f"{faults.url}/{TEST}/shard-{{000000..000019}}.tar"))
    assert listed.urls == remote.urls and listed.counts == remote.counts
    assert faults.hits[f"/{TEST}/index.json"] == 2


@pytest.mark.parametrize(
    ("fault", "ranges"),
    [
        (Fault("drop", times=2), True),
        (Fault("drop", times=2), False),
        (Fault("status", times=1, status=503), True),
        (Fault("stall_head", times=1), True),
        (Fault("stall_body", times=1), True),
    ],
    ids=["dropped-resumed-by-range", "dropped-read-again", "503", "no-answer", "stops-mid-body"],
)
def test_a_passing_fault_is_retried_and_the_samples_do_not_change(
    faults: ShardServer, local_part: list[Batch], fault: Fault, ranges: bool
) -> None:
    """The stream resumes at the byte where it stopped (a Range request, or the body read again
    and the bytes already delivered passed over), so the tar reader sees one unbroken stream."""
    faults.faults[shard_path()] = attrs.evolve(fault)
    faults.ranges = ranges
    source = part(faults, policy_for(fault))
    same(within(30, lambda: evaluate(source)), local_part)
    assert faults.hits_of(shard_path(), 1 + fault.times) == 1 + fault.times


@pytest.mark.parametrize(
    "fault",
    [Fault("status"), Fault("drop"), Fault("stall_head"), Fault("stall_body"), Fault("status", status=404)],
    ids=["500", "dropped", "no-answer", "stops-mid-body", "404-not-retried"],
)
def test_a_lasting_fault_is_retried_then_the_shard_is_skipped_and_counted(
    faults: ShardServer, local_part: list[Batch], fault: Fault, caplog: pytest.LogCaptureFixture
) -> None:
    faults.faults[shard_path()] = attrs.evolve(fault)
    source = part(faults, policy_for(fault))
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        batches = within(30, lambda: evaluate(source))
    took = time.monotonic() - started
    # Only the samples of the failing shard from the fault on are lost: the rest read as from disk.
    masks = torch.cat([b.mask for b in batches])
    reference = torch.cat([b.labels for b in local_part])
    lost = int((~masks).sum())
    assert masks.shape == reference.shape == (PART_SAMPLES,)
    assert 0 < lost <= 25 and sum(b.skipped for b in batches) == lost
    assert torch.equal(torch.cat([b.labels for b in batches])[masks], reference[masks])
    assert masks[: SHARD * 25].all() and masks[(SHARD + 1) * 25 :].all()
    tries = 1 if fault.status == 404 else 3
    assert faults.hits_of(shard_path(), tries) == tries
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped")]
    assert any(faults.url + shard_path() in message for message in skipped), skipped
    # 3 stalled tries cost 3 timeouts (0.5 s) and 2 backoffs (0.5 s each, capped at the timeout).
    assert took < 2.5 + 5, took
    # Counted against runtime.max_skipped_fraction like the samples of a truncated shard: one
    # lost shard in 100 does not stop a run at the default 1 %; one in 5 does.
    check_skipped(lost, 100 * 25, 0.01)
    with pytest.raises(DataError, match="skipped"):
        check_skipped(lost, PART_SAMPLES, 0.01)


def test_training_counts_a_lost_shard_once_and_still_yields_every_batch(faults: ShardServer) -> None:
    faults.faults[shard_path()] = Fault("status")
    batches = within(30, lambda: train(part(faults), world_size=1))
    assert len(batches) == 2 and all(b.images.shape[0] == 50 and b.mask.all() for b in batches)
    assert sum(b.skipped for b in batches) == 25


def test_stop_ends_the_read_with_a_data_error_naming_the_url(faults: ShardServer) -> None:
    faults.faults[shard_path()] = Fault("status")
    source = part(faults, attrs.evolve(POLICY, stop=True))
    url = re.escape(faults.url + shard_path())
    with pytest.raises(DataError, match=f"{url}: HTTP 500 .*tried 3 times") as raised:
        within(30, lambda: evaluate(source))
    # A data-loader worker's error reaches the trainer rebuilt from its type and message
    # (torch's ExceptionWrapper): a DataError still, naming the URL.
    rebuilt = type(raised.value)(str(raised.value))
    assert isinstance(rebuilt, DataError) and faults.url + shard_path() in str(rebuilt)


@pytest.mark.parametrize(
    ("fault", "message", "tries"),
    [
        (Fault("status"), r"HTTP 500 Internal Server Error \(tried 3 times", 3),
        (Fault("stall_head"), r"no answer within the timeout \(tried 3 times", 3),
        (Fault("status", status=404), "HTTP 404 Not Found$", 1),
    ],
    ids=["500", "no-answer", "404-not-retried"],
)
def test_an_index_that_cannot_be_fetched_is_a_data_error_naming_it(
    faults: ShardServer, fault: Fault, message: str, tries: int
) -> None:
    index = f"/{TEST}/index.json"
    faults.faults[index] = attrs.evolve(fault)
    url = re.escape(faults.url + index)
    with pytest.raises(DataError, match=f"^cannot read shard index {url}: {message}"):
        within(30, lambda: webdataset_source(f"{faults.url}/{TEST}", http=STALLS))
    assert faults.hits_of(index, tries) == tries


def _stage_datasets(digits_root: Path) -> dict[str, tuple[str, bool]]:
    """Shard folder (relative to ``digits_root``) and labelled flag of every dataset of the digits spec."""
    train_subset = ensure_digits_subset(digits_root, "train", 1, 0).relative_to(digits_root)
    test_subset = ensure_digits_subset(digits_root, "test", 2, 0).relative_to(digits_root)
    return {
        "pretrain.dataset": (f"{NAME}/train", False),
        "pretrain.monitor_train": (f"{NAME}/train", True),
        "pretrain.monitor_test": (f"{NAME}/test", True),
        "finetune.dataset": (str(train_subset), True),
        "finetune.eval_dataset": (str(test_subset), True),
        "distill.dataset": (f"{NAME}/train", False),
        "distill.eval_dataset": (str(test_subset), True),
    }


def _stage_spec(path: Path, tables: dict[str, tuple[str, bool]]) -> Path:
    """``specs/digits_1pct.toml`` with every dataset a ``webdataset`` under ``${SHARDS}``."""
    text = [f"extends = {json.dumps(str(DIGITS_SPEC))}"]
    for table, (folder, labelled) in tables.items():
        text += [
            f"\n[{table}]",
            'name = "webdataset"',
            f'urls = "${{SHARDS}}/{folder}"',
            f"labelled = {str(labelled).lower()}",
            "http_timeout = 20.0",
            "http_retries = 2",
        ]
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path


@pytest.mark.slow
def test_three_stages_on_two_ranks_from_http_match_the_local_files(
    faults: ShardServer, digits_data: Path, tmp_path: Path
) -> None:
    tables = _stage_datasets(digits_data / "digits")
    spec = _stage_spec(tmp_path / "http.toml", tables)
    # One intra-op thread per rank: two 2-rank runs share the machine.
    overrides = [o for o in TINY_DIGITS_OVERRIDES if "labels_per_class" not in o] + ["runtime.threads=1"]
    runs = {"local": str(digits_data / "digits"), "http": faults.url}
    processes = {}
    for name, shards in runs.items():
        command = [sys.executable, "-m", "contrastive", "run", str(spec), "--run-dir", str(tmp_path / name)]
        command += [arg for o in overrides for arg in ("--set", o)] + ["--nproc-per-node", "2"]
        env = {**subprocess_env(digits_data), "SHARDS": shards, "no_proxy": "127.0.0.1"}
        processes[name] = subprocess.Popen(
            command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    try:
        outputs = {name: process.communicate(timeout=300)[0] for name, process in processes.items()}
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=30)
    for name, process in processes.items():
        assert process.returncode == 0, outputs[name]
    assert "skipped" not in outputs["http"], outputs["http"]
    for stage in ("pretrain", "finetune", "distill"):
        ours = load_state_dict(tmp_path / "http" / stage / "final.pt")
        reference = load_state_dict(tmp_path / "local" / stage / "final.pt")
        assert ours.keys() == reference.keys()
        assert all(torch.equal(ours[key], reference[key]) for key in ours), stage
        results = [json.loads((tmp_path / n / stage / "results.json").read_text()) for n in runs]
        assert results[0].get("top1") == results[1].get("top1"), stage
    # Every index was fetched and every stage's shards streamed from the server.
    served = set(faults.hits)
    for folder in {folder for folder, _ in tables.values()}:
        assert f"/{folder}/index.json" in served, folder
        if folder != f"{NAME}/test":  # only the pretraining monitor reads it, every 10 steps
            assert any(path.startswith(f"/{folder}/shard-") for path in served), folder
