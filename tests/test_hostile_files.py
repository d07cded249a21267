"""Bad files where files are read (issue 14, item 6).

* A checkpoint, ``final.pt``, ``finetune.init`` or ``distill.teacher`` holding a pickle that runs
  code when unpickled is refused at every place that loads one (the library, ``contrastive run``
  fresh and resumed, ``contrastive export``, ``contrastive eval``) with one line naming the file,
  and the code never runs.
* Tar members that leave the shard's folder (``../x``, absolute names), links, devices and FIFOs
  stop ``contrastive shards index``, ``subset`` and ``inspect`` with an error naming the shard and
  the member, write nothing anywhere, and are never a sample in training or evaluation.
* Damaged shards (truncated, bit-flipped, empty, an empty but valid tar, a FIFO) and an index
  whose counts were edited are either skipped and counted (the run stops beyond
  ``runtime.max_skipped_fraction``) or stopped with a clear error; never a hang (every read runs
  under :func:`deadline`), never a wrong sample.

Images are 8x8 PNGs whose red channel is the sample's id and whose label is ``id % 2``, so every
delivered row can be checked against the sample it claims to be.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image

from contrastive.checkpoint import latest_checkpoint, load_checkpoint
from contrastive.cli import cli
from contrastive.data import check_skipped
from contrastive.data.scan import index_directory
from contrastive.data.shards import OutSample, sample_key, write_shard
from contrastive.data.sources import webdataset_source
from contrastive.data.summary import summarize
from contrastive.data.tario import UnsafeMemberError
from contrastive.errors import DataError, RunError
from contrastive.interfaces import Batch
from tests.tiny_specs import REPO, tiny_pretrain_spec, write_spec

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


class Hang(BaseException):
    """Raised by :func:`deadline`; not an ``Exception``, so code that skips failures cannot swallow it."""


@contextlib.contextmanager
def deadline(seconds: int = 30) -> Iterator[None]:
    """Fail the block with :class:`Hang` instead of letting it hang past ``seconds``."""

    def expire(signum: int, frame: Any) -> None:
        raise Hang(f"still running after {seconds} s: the read hangs")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def png(sample_id: int) -> bytes:
    """An 8x8 PNG whose red channel is ``sample_id``."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (sample_id, 50, 100)).save(buffer, format="PNG")
    return buffer.getvalue()


def out_sample(sample_id: int) -> OutSample:
    data = png(sample_id)
    return OutSample(
        image=data,
        image_size=len(data),
        source_id=str(sample_id),
        label=sample_id % 2,
        meta={"name": f"img_{sample_id}.png"},
        image_ext="png",
    )


def shard_name(number: int) -> str:
    return f"part-{number:03d}.tar"


def write_set(directory: Path, sizes: Sequence[int]) -> None:
    """Indexed shards of ``sizes`` samples; ids run on across shards; classes "0" and "1"."""
    directory.mkdir(parents=True)
    first = 0
    for number, size in enumerate(sizes):
        write_shard(
            directory / shard_name(number), [out_sample(i) for i in range(first, first + size)], first
        )
        first += size
    index_directory(directory)


class OneView:
    """The decoded image as the one view (so a row's red channel names its sample)."""

    num_views = 1
    size = 8

    def per_sample(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return image.unsqueeze(0).contiguous()

    def on_device(self, views: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return views.float()


def checked_ids(batches: Sequence[Batch]) -> list[int]:
    """The sample ids of the real rows, after checking that each row's label is its sample's."""
    ids: list[int] = []
    for batch in batches:
        for image, label in zip(batch.images[batch.mask], batch.labels[batch.mask], strict=True):
            sample_id = int(image[0, 0, 0, 0])
            assert int(label) == sample_id % 2, f"sample {sample_id} delivered with label {int(label)}"
            ids.append(sample_id)
    return ids


def read_eval(directory: Path) -> tuple[set[int], int]:
    """Every row of an evaluation pass over the set: the ids seen (each once) and the skipped count."""
    with deadline():
        source = webdataset_source(str(directory))
        batches = list(
            source.eval_batches(augmentation=OneView(), batch_size=4, rank=0, world_size=1, num_workers=0)
        )
    ids = checked_ids(batches)
    assert len(ids) == len(set(ids)), f"a sample was read twice: {sorted(ids)}"
    assert len(ids) + sum(b.skipped for b in batches) == source.num_samples
    return set(ids), sum(b.skipped for b in batches)


def read_train(directory: Path, global_batch_size: int = 2, num_workers: int = 0) -> tuple[list[int], int]:
    """One training epoch: the ids delivered (labels checked) and the skipped count."""
    with deadline():
        source = webdataset_source(str(directory), shuffle_buffer=3)
        batches = list(
            source.train_batches(
                augmentation=OneView(),
                global_batch_size=global_batch_size,
                rank=0,
                world_size=1,
                epoch=0,
                seed=0,
                num_workers=num_workers,
            )
        )
    assert len(batches) == source.steps_per_epoch(global_batch_size)
    return checked_ids(batches), sum(b.skipped for b in batches)


def edit_index(directory: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    path = directory / "index.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def invoke(*args: str) -> Result:
    with deadline(60):
        return CliRunner().invoke(cli, list(args))


def one_line_error(result: Result, exit_code: int, *fragments: str) -> str:
    """The single ``error:`` line of a command that failed cleanly with ``exit_code``."""
    assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # handled: no traceback
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert errors[0] == result.stderr.rstrip("\n").splitlines()[-1]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def files_under(root: Path) -> set[Path]:
    """Every path (files, links, folders) under ``root``."""
    return set(root.rglob("*"))


# ---------------------------------------------------------------------------------------------
# 1. Checkpoints that run code when unpickled
# ---------------------------------------------------------------------------------------------


class RunsCode:
    """Unpickling this object calls ``call(*args)``: what a hostile checkpoint does."""

    def __init__(self, call: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.call = call
        self.args = args

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return self.call, self.args


def payload(kind: str, marker: Path) -> RunsCode:
    """An object whose unpickling creates ``marker``, through a shell or through pathlib."""
    if kind == "os.system":
        return RunsCode(os.system, (f"touch {shlex.quote(str(marker))}",))
    return RunsCode(Path.touch, (marker,))


FORMATS = ("torch.save", "torch.save legacy", "pickle.dump")
PAYLOADS = ("os.system", "Path.touch")


def write_hostile(path: Path, marker: Path, kind: str = "Path.touch", fmt: str = "torch.save") -> Path:
    """A file that looks like a pretraining ``final.pt`` and runs code when unpickled."""
    state = {"kind": "pretrain", "encoder": payload(kind, marker), "state_dict": {}}
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torch.save":
        torch.save(state, path)
    elif fmt == "torch.save legacy":
        torch.save(state, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(state))
    return path


@pytest.mark.parametrize("kind", PAYLOADS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_the_hostile_checkpoints_do_run_code_when_unpickled_unsafely(
    tmp_path: Path, fmt: str, kind: str
) -> None:
    """Control: the files of these tests are live (an unrestricted unpickler runs their code)."""
    marker = tmp_path / "ran"
    path = write_hostile(tmp_path / "final.pt", marker, kind, fmt)
    if fmt == "pickle.dump":
        pickle.loads(path.read_bytes())
    else:
        torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("kind", PAYLOADS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_load_checkpoint_refuses_code_in_one_line(tmp_path: Path, fmt: str, kind: str) -> None:
    marker = tmp_path / "ran"
    path = write_hostile(tmp_path / "final.pt", marker, kind, fmt)
    with pytest.raises(RunError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert message.startswith(f"cannot load checkpoint {path}: refused by the safe loader (")
    assert "\n" not in message and "\x1b" not in message  # one plain line, no terminal codes
    assert "weights_only" not in message  # not torch's advice to load the file unsafely
    assert not marker.exists()


def test_a_checkpoint_that_is_no_regular_file_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    (tmp_path / "folder.pt").mkdir()
    for path in (fifo, tmp_path / "folder.pt"):
        with (
            deadline(10),
            pytest.raises(RunError, match=f"cannot load checkpoint {path}: not a regular file"),
        ):
            load_checkpoint(path)


FINETUNE_SPEC = """
[experiment]
name = "hostile"
[runtime]
device = "cpu"
num_workers = 0
[finetune]
epochs = 1
batch_size = 4
max_steps = 1
init = "{weights}"
[finetune.dataset]
name = "webdataset"
urls = "{shards}"
[finetune.augmentation]
name = "crop_flip"
size = 8
"""

DISTILL_SPEC = """
[experiment]
name = "hostile"
[runtime]
device = "cpu"
num_workers = 0
[distill]
epochs = 1
batch_size = 4
max_steps = 1
teacher = "{weights}"
[distill.dataset]
name = "webdataset"
urls = "{shards}"
labelled = false
[distill.augmentation]
name = "crop_flip"
size = 8
[distill.encoder]
name = "resnet"
depth = 18
cifar_stem = true
base_width = 4
"""


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small good labelled set (8 samples, 2 shards) for the commands that need data."""
    directory = tmp_path_factory.mktemp("good") / "shards"
    write_set(directory, (4, 4))
    return directory


@pytest.mark.parametrize("template", [FINETUNE_SPEC, DISTILL_SPEC], ids=["finetune.init", "distill.teacher"])
def test_run_refuses_hostile_init_and_teacher(tmp_path: Path, shards: Path, template: str) -> None:
    marker = tmp_path / "ran"
    weights = write_hostile(tmp_path / "downloaded.pt", marker, "os.system")
    spec = write_spec(tmp_path / "spec.toml", template.format(weights=weights, shards=shards))
    result = invoke("run", str(spec), "--run-dir", str(tmp_path / "run"))
    one_line_error(result, 5, f"cannot load checkpoint {weights}: refused by the safe loader")
    assert not marker.exists()


def test_resuming_refuses_a_hostile_checkpoint(tmp_path: Path, shards: Path) -> None:
    """A ``ckpt-*.pt`` put in a run directory is refused when the run resumes from it."""
    marker = tmp_path / "ran"
    dataset = f'name = "webdataset"\nurls = "{shards}"\nlabelled = false'
    spec = write_spec(tmp_path / "spec.toml", tiny_pretrain_spec(dataset=dataset, batch_size=4, max_steps=2))
    checkpoint = write_hostile(tmp_path / "run" / "pretrain" / "checkpoints" / "ckpt-00000001.pt", marker)
    assert latest_checkpoint(checkpoint.parent) == checkpoint  # it looks complete: it is read
    result = invoke("run", str(spec), "--run-dir", str(tmp_path / "run"))
    one_line_error(result, 5, f"cannot load checkpoint {checkpoint}: refused by the safe loader")
    assert not marker.exists()


def test_export_and_eval_refuse_a_hostile_final_pt(tmp_path: Path, shards: Path) -> None:
    marker = tmp_path / "ran"
    stage = tmp_path / "run" / "pretrain"
    final = write_hostile(stage / "final.pt", marker)
    out = tmp_path / "encoder.pt"
    for source in (stage, final):  # a stage directory, or the file itself
        result = invoke("export", str(source), str(out))
        one_line_error(result, 5, f"cannot load checkpoint {final}: refused by the safe loader")
    result = invoke("eval", str(stage), "--train", str(shards), "--test", str(shards), "--device", "cpu")
    one_line_error(result, 5, f"cannot load checkpoint {final}: refused by the safe loader")
    assert not marker.exists() and not out.exists()
    assert not (stage / "linear_eval.json").exists()


def test_the_cli_process_prints_one_line_for_a_hostile_checkpoint(tmp_path: Path) -> None:
    """The real process: exit 5, nothing on stderr but the error line (no warning, no traceback)."""
    marker = tmp_path / "ran"
    final = write_hostile(tmp_path / "final.pt", marker, "os.system", "pickle.dump")
    process = subprocess.run(
        [sys.executable, "-m", "contrastive", "export", str(final), str(tmp_path / "out.pt")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "80"},  # a narrow terminal must not wrap the line
    )
    assert process.returncode == 5, process.stderr
    lines = process.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot load checkpoint {final}: "), lines
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# 2. Tar members that leave the folder, links, devices, FIFOs
# ---------------------------------------------------------------------------------------------

HOSTILE_KINDS = ("dotdot", "absolute", "symlink", "hardlink", "chardev", "blockdev", "fifo")


def add_member(
    tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = ""
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        info.devmajor, info.devminor = 1, 3
        tar.addfile(info)


def hostile_key(kind: str, key: str, outside: Path) -> str:
    """The key of the hostile sample: one that leaves the folder, or the plain key."""
    if kind == "dotdot":
        return f"../{key}"
    if kind == "absolute":
        return str(outside / key)
    return key


def write_hostile_shard(path: Path, first: int, count: int, bad: int, kind: str, outside: Path) -> str:
    """A shard of ``count`` samples from id ``first`` whose sample ``bad`` is hostile: all its
    members named outside the folder (a complete sample a reader that trusts names would use),
    or its image member a link, a device or a FIFO.

    Returns:
        The name of the hostile sample's first member (its image).
    """
    types = {
        "symlink": tarfile.SYMTYPE,
        "hardlink": tarfile.LNKTYPE,
        "chardev": tarfile.CHRTYPE,
        "blockdev": tarfile.BLKTYPE,
        "fifo": tarfile.FIFOTYPE,
    }
    links = {"symlink": "/etc/passwd", "hardlink": f"{sample_key(first)}.png"}
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for sample_id in range(first, first + count):
            key = (
                hostile_key(kind, sample_key(sample_id), outside)
                if sample_id == bad
                else sample_key(sample_id)
            )
            if sample_id == bad:
                add_member(
                    tar, f"{key}.png", png(sample_id), types.get(kind, tarfile.REGTYPE), links.get(kind, "")
                )
            else:
                add_member(tar, f"{key}.png", png(sample_id))
            add_member(tar, f"{key}.cls", str(sample_id % 2).encode())
            add_member(tar, f"{key}.json", json.dumps({"name": f"img_{sample_id}.png"}).encode())
    return f"{hostile_key(kind, sample_key(bad), outside)}.png"


@pytest.mark.parametrize("kind", HOSTILE_KINDS)
def test_shards_commands_refuse_hostile_members(tmp_path: Path, kind: str) -> None:
    data, outside = tmp_path / "data", tmp_path / "outside"
    src = data / "src"
    write_set(src, (4, 5))  # indexed; then shard 1 is replaced by one with a hostile member
    member = write_hostile_shard(src / shard_name(1), 4, 5, 6, kind, outside)
    bad = src / shard_name(1)
    copy = data / "copy"  # the same shards without an index, for `shards index`
    copy.mkdir()
    for shard in src.glob("*.tar"):
        shutil.copy(shard, copy / shard.name)
    before = files_under(tmp_path)

    fragments = (f"shard {bad}: member {member!r}",)
    one_line_error(invoke("shards", "inspect", str(src)), 4, *fragments)
    one_line_error(invoke("shards", "inspect", str(src), "--json"), 4, *fragments)
    one_line_error(invoke("shards", "subset", str(src), str(data / "out"), "--per-class", "1"), 4, *fragments)
    one_line_error(invoke("shards", "index", str(copy)), 4, f"shard {copy / bad.name}: member {member!r}")

    assert files_under(tmp_path) == before  # nothing written: no index, no subset, nothing outside
    assert not outside.exists() and not (data / "000000006.png").exists()
    with pytest.raises(UnsafeMemberError, match=f"member {member!r}"):
        summarize(src)


@pytest.mark.parametrize("kind", HOSTILE_KINDS)
def test_the_pipeline_never_reads_a_hostile_member_as_a_sample(tmp_path: Path, kind: str) -> None:
    src = tmp_path / "src"
    write_set(src, (4, 5))
    write_hostile_shard(src / shard_name(1), 4, 5, 6, kind, tmp_path / "outside")
    # The shard is read up to the hostile member: sample 4 is whole before it, 5 to 8 are lost.
    assert read_eval(src) == ({0, 1, 2, 3, 4}, 4)
    delivered, skipped = read_train(src, global_batch_size=3)
    assert set(delivered) <= {0, 1, 2, 3, 4} and skipped == 4
    assert not (tmp_path / "outside").exists()


# ---------------------------------------------------------------------------------------------
# 3. Damaged shards and indexes: skipped and counted, or stopped; never a hang or a wrong sample
# ---------------------------------------------------------------------------------------------


def flip_bit(path: Path, offset: int, bit: int = 2) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


def test_bit_flips_are_found_or_skipped(tmp_path: Path) -> None:
    """A flipped bit in a member header ends the shard there (found by index, inspect and subset;
    the rest of the shard counted as lost in training); one in an image's data fails its CRC (a
    skipped sample; only reading the image finds it)."""
    src = tmp_path / "src"
    write_set(src, (4, 4, 4))
    header_flipped, data_flipped = src / shard_name(1), src / shard_name(2)
    at = header_flipped.read_bytes().index(f"{sample_key(5)}.png".encode())
    flip_bit(header_flipped, at + 100)  # the header's mode field: its checksum no longer matches
    image = png(9)
    at = data_flipped.read_bytes().index(image) + image.index(b"IDAT") + 6
    flip_bit(data_flipped, at)  # inside the compressed pixels of sample 9

    assert read_eval(src) == ({0, 1, 2, 3, 4, 8, 10, 11}, 4)
    delivered, skipped = read_train(src, global_batch_size=4)
    assert set(delivered) <= {0, 1, 2, 3, 4, 8, 10, 11} and skipped == 4
    check_skipped(skipped, len(delivered) + skipped, 0.25)
    with pytest.raises(DataError, match="4 of 16 samples"):  # over runtime.max_skipped_fraction: stop
        check_skipped(skipped, len(delivered) + skipped, 0.2)

    shown = invoke("shards", "inspect", str(src), "--json")
    assert shown.exit_code == 0, shown.output
    damaged = json.loads(shown.stdout)["damaged"]
    assert [d["name"] for d in damaged] == [header_flipped.name]
    assert "is damaged: no valid tar header" in damaged[0]["reason"]
    assert "damaged" in invoke("shards", "inspect", str(src)).stdout
    one_line_error(
        invoke("shards", "subset", str(src), str(tmp_path / "out"), "--per-class", "1"),
        4,
        f"shard {header_flipped} is damaged",
    )
    (src / "index.json").unlink()
    one_line_error(
        invoke("shards", "index", str(src)), 4, "1 of 3 shards", f"shard {header_flipped} is damaged"
    )
    assert not (src / "index.json").exists() and not (tmp_path / "out").exists()


FLIP_EVERY_BIT = """
import io
import sys

import numpy as np
from PIL import Image

from contrastive.data.decode import decode

buffer = io.BytesIO()
Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, "PNG")
data = buffer.getvalue()
original = decode(data)
for position in range(len(data)):
    for bit in range(8):
        flipped = bytearray(data)
        flipped[position] ^= 1 << bit
        try:
            image = decode(bytes(flipped))
        except Exception:
            continue
        if not image.equal(original):
            sys.exit(f"bit {bit} of byte {position} flipped gave another image")
print("ok")
"""


def test_no_bit_flip_in_a_png_crashes_the_decoder_or_changes_the_image() -> None:
    """With the default (torchvision) decoder, every single-bit flip of a PNG is an exception or
    the same image: never a dead process (torchvision 0.29 segfaults on a libpng error in the pixel
    data) nor other pixels. Run in a subprocess, so that a crash fails the test, not the session."""
    process = subprocess.run(
        [sys.executable, "-c", FLIP_EVERY_BIT], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert process.returncode == 0, f"exit {process.returncode}: {process.stdout[-500:]}"
    assert process.stdout.strip() == "ok"


def test_a_shard_cut_at_a_member_boundary(tmp_path: Path) -> None:
    """Cut cleanly after a whole sample (no end-of-archive blocks): tarfile sees a short but
    well-formed tar; the index check and the pipeline's count still find it."""
    src = tmp_path / "src"
    write_set(src, (4, 4))
    shard = src / shard_name(1)
    data = shard.read_bytes()
    shard.write_bytes(data[: data.index(f"{sample_key(6)}.png".encode())])  # samples 4 and 5 whole

    assert read_eval(src) == ({0, 1, 2, 3, 4, 5}, 2)
    assert read_train(src)[1] == 2
    assert json.loads(invoke("shards", "inspect", str(src), "--json").stdout)["missing"] == [shard.name]
    (src / "index.json").unlink()
    one_line_error(invoke("shards", "index", str(src)), 4, f"shard {shard} is damaged")


def test_an_index_that_counts_more_samples_than_the_shards_hold(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_set(src, (4, 4))

    def inflate(doc: dict[str, Any]) -> None:  # a consistent edit: count, total and class counts
        doc["shards"][0]["count"] += 2
        doc["total"] += 2
        doc["class_counts"] = [c + 1 for c in doc["class_counts"]]

    edit_index(src, inflate)
    assert read_eval(src) == (set(range(8)), 2)  # the two missing samples: padding rows, counted
    delivered, skipped = read_train(src)
    assert set(delivered) <= set(range(8)) and skipped == 2 and len(delivered) == 10
    damaged = summarize(src)["damaged"]
    assert damaged == [{"name": shard_name(0), "reason": "holds 4 samples, the index says 6"}]


def test_an_index_that_counts_fewer_samples_than_the_shards_hold(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_set(src, (4, 4))

    def deflate(doc: dict[str, Any]) -> None:
        doc["shards"][0]["count"] -= 2
        doc["total"] -= 2
        doc["class_counts"] = [c - 1 for c in doc["class_counts"]]

    edit_index(src, deflate)
    assert read_eval(src) == ({0, 1, 4, 5, 6, 7}, 0)  # samples past the indexed count: never read
    delivered, skipped = read_train(src)
    assert set(delivered) == {0, 1, 4, 5, 6, 7} and skipped == 0
    damaged = summarize(src)["damaged"]
    assert damaged == [{"name": shard_name(0), "reason": "holds 4 samples, the index says 2"}]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda doc: doc["shards"][0].update(count=9), "shard counts add up to 13, but total says 8"),
        (lambda doc: doc.update(total=10), "shard counts add up to 8, but total says 10"),
        (
            lambda doc: (doc["shards"][0].update(count=-4), doc["shards"][1].update(count=12)),
            "shard part-000.tar has a negative count or size",
        ),
    ],
    ids=["count", "total", "negative"],
)
def test_an_index_whose_numbers_do_not_add_up_is_refused(
    tmp_path: Path, edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    src = tmp_path / "src"
    write_set(src, (4, 4))
    edit_index(src, edit)
    with pytest.raises(DataError, match=message):
        webdataset_source(str(src))
    one_line_error(invoke("shards", "inspect", str(src)), 4, str(src / "index.json"), message)


def test_a_zero_byte_shard(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_set(src, (4, 4))
    empty = src / shard_name(1)
    empty.write_bytes(b"")
    assert read_eval(src) == ({0, 1, 2, 3}, 4)
    assert read_train(src)[1] == 4
    assert json.loads(invoke("shards", "inspect", str(src), "--json").stdout)["missing"] == [empty.name]
    (src / "index.json").unlink()
    one_line_error(invoke("shards", "index", str(src)), 4, f"shard {empty} is empty (0 bytes)")


def test_an_empty_but_valid_tar(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with tarfile.open(src / shard_name(0), "w"):
        pass
    one_line_error(invoke("shards", "index", str(src)), 4, "hold no samples with an image")

    write_shard(src / shard_name(1), [out_sample(i) for i in range(4)], 0)
    index = index_directory(src)  # an empty tar beside real shards: indexed as 0 samples
    assert [s.count for s in index.shards] == [0, 4]
    assert read_eval(src) == ({0, 1, 2, 3}, 0)
    assert read_train(src)[1] == 0
    assert summarize(src)["damaged"] == []

    with tarfile.open(src / shard_name(1), "w"):  # a shard emptied after it was indexed
        pass
    assert read_eval(src) == (set(), 4)
    with pytest.raises(DataError, match="no readable sample"):
        read_train(src)
    assert summarize(src)["missing"] == [shard_name(1)]


def test_a_fifo_in_place_of_a_shard_does_not_hang(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_set(src, (4, 4))
    fifo = src / shard_name(1)
    fifo.unlink()
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    assert read_eval(src) == ({0, 1, 2, 3}, 4)
    assert read_train(src)[1] == 4
    with pytest.raises(DataError, match=f"no readable sample in the shards .*{fifo}"):
        read_train(src, num_workers=2)  # the worker that reads only the FIFO: stopped, not stuck
    assert summarize(src)["missing"] == [fifo.name]


def test_a_run_stops_when_more_than_max_skipped_fraction_is_lost(tmp_path: Path) -> None:
    """Through ``contrastive run``: an index claiming samples its shards lack stops the run with
    exit 4 and one line, once the lost share passes ``runtime.max_skipped_fraction``."""
    src = tmp_path / "src"
    write_set(src, (4, 4))

    def inflate(doc: dict[str, Any]) -> None:  # 4 samples claimed that shard 1 does not hold
        doc["shards"][1]["count"] += 4
        doc["total"] += 4
        doc["class_counts"] = [c + 2 for c in doc["class_counts"]]

    edit_index(src, inflate)
    dataset = f'name = "webdataset"\nurls = "{src}"\nlabelled = false'
    spec = write_spec(tmp_path / "spec.toml", tiny_pretrain_spec(dataset=dataset, batch_size=4, max_steps=3))
    result = invoke(
        "run", str(spec), "--run-dir", str(tmp_path / "run"), "--set", "runtime.max_skipped_fraction=0.1"
    )
    one_line_error(result, 4, "samples", "were skipped")
    assert not (tmp_path / "run" / "pretrain" / "final.pt").exists()
