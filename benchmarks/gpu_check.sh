#!/usr/bin/env bash
# One-GPU check of contrastive's training throughput, in one short run (about 3-5 minutes on an H200).
#
#   benchmarks/gpu_check.sh               # on a machine with one NVIDIA GPU
#   benchmarks/gpu_check.sh --cpu-smoke   # tiny sizes on the CPU: exercises every step of the script
#
# What it does, in order (each phase is timed and guarded by a timeout; a failed phase is reported
# in the summary, the next one still runs, and the script exits 1):
#   1. python: $PYTHON or python3 (torch must import; CUDA must be available unless --cpu-smoke).
#      contrastive is used as installed when it imports from this checkout; otherwise
#      `pip install --no-deps --no-build-isolation -e .` (torch is never reinstalled), missing
#      pure-Python dependencies from $WHEELHOUSE or the index, in a --system-site-packages venv when
#      the interpreter refuses installs; if pip cannot install, an offline shim on PYTHONPATH
#      (symlinks plus a dist-info carrying pyproject's entry points).
#   2. data: IMAGES random smooth-plus-noise JPEGs (IMAGE_SIDE px, 10 class folders) written by a
#      multiprocessing pool, then `contrastive shards build imagefolder` (one epoch covers the run).
#   3. pretrain: `contrastive run` of a SimCLR pretraining spec: ResNet-DEPTH, bf16, channels_last,
#      global batch BATCH, STEPS steps, WORKERS data-loader workers, simclr augmentation (its
#      photometric part batched on the GPU). images/s = steps after the first SKIP_WINDOWS logged
#      windows of LOG_EVERY steps (metrics.jsonl), i.e. start-up and warm-up excluded.
#   4. supervised: a plain torchvision ResNet-DEPTH step loop (same batch and resolution, bf16
#      autocast, channels_last, cross entropy, SGD) on GPU-resident random tensors: no data loading,
#      so it is the compute ceiling of one view per image.
#   5. benchmarks/train_step.py on the GPU with the same model, batch, size and precision: the
#      framework's step vs a hand-written loop on in-memory batches (the overhead ratio).
#   6. summary: GPU name, images/s of each, the ratios; written to $OUT (or $WORK/out).
#
# Settings (environment): PYTHON, WORK (scratch; default /tmp/contrastive_gpu_check), OUT, WHEELHOUSE,
# IMAGES, IMAGE_SIDE, SIZE, BATCH, STEPS, LOG_EVERY, SKIP_WINDOWS, WORKERS, DEPTH, TS_STEPS, TS_REPEATS,
# FORCE_SHIM=1 (use the offline shim even when pip could install; for testing the fallback).
set -uo pipefail

SMOKE=0
for arg in "$@"; do
    case "$arg" in
        --cpu-smoke) SMOKE=1 ;;
        -h | --help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
    esac
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${WORK:-/tmp/contrastive_gpu_check}"
OUT_DIR="${OUT:-$WORK/out}"
NPROC="$(nproc 2>/dev/null || echo 4)"
mkdir -p "$WORK" "$OUT_DIR"
exec > >(tee "$OUT_DIR/gpu_check.log") 2>&1
TEE_PID=$!

if [ "$SMOKE" = 1 ]; then
    DEVICE=cpu
    : "${IMAGES:=256}" "${IMAGE_SIDE:=40}" "${SIZE:=32}" "${BATCH:=32}" "${STEPS:=6}" "${LOG_EVERY:=2}"
    : "${SKIP_WINDOWS:=1}" "${WORKERS:=1}" "${DEPTH:=18}" "${TS_STEPS:=3}" "${TS_REPEATS:=1}"
    ENCODER_EXTRA=$'cifar_stem = true\nbase_width = 16'
    TS_MODEL=(--depth "$DEPTH" --base-width 16 --cifar-stem --batch "$BATCH" --threads 1)
else
    DEVICE=cuda
    : "${STEPS:=60}" "${BATCH:=256}" "${SIZE:=224}" "${IMAGE_SIDE:=256}" "${LOG_EVERY:=10}"
    : "${SKIP_WINDOWS:=2}" "${DEPTH:=50}" "${TS_STEPS:=20}" "${TS_REPEATS:=3}"
    : "${IMAGES:=$((STEPS * BATCH))}"
    : "${WORKERS:=$((NPROC >= 16 ? 12 : (NPROC > 2 ? NPROC - 1 : 1)))}"
    ENCODER_EXTRA=""
    TS_MODEL=(--depth "$DEPTH" --base-width 64 --no-cifar-stem --batch "$BATCH" --threads 0)
fi
WARM_STEPS=$((SKIP_WINDOWS * LOG_EVERY))
if [ "$WARM_STEPS" -ge "$STEPS" ]; then
    echo "STEPS ($STEPS) must exceed SKIP_WINDOWS x LOG_EVERY ($WARM_STEPS)" >&2
    exit 2
fi

declare -A STATUS=()
declare -A SPENT=()
PHASES=()

# limited COMMAND...: run a command under the current phase's time limit.
PHASE_LIMIT=600
limited() { timeout --kill-after=10 "$PHASE_LIMIT" "$@"; }

# phase NAME TIMEOUT_S COMMAND...: run, time and record the exit status; never aborts the script.
# COMMAND is a program (run under the limit) or a shell function (which runs its programs limited).
phase() {
    local name="$1"
    PHASE_LIMIT="$2"
    shift 2
    echo
    echo "=== $name (limit ${PHASE_LIMIT}s) ==="
    local start=$SECONDS
    if declare -F "$1" >/dev/null; then "$@"; else limited "$@"; fi
    local rc=$?
    SPENT[$name]=$((SECONDS - start))
    STATUS[$name]=$rc
    PHASES+=("$name")
    echo "=== $name: exit $rc after ${SPENT[$name]}s ==="
    return $rc
}

PY="${PYTHON:-python3}"
echo "contrastive gpu_check: repo $REPO, work $WORK, out $OUT_DIR, $NPROC CPUs, smoke=$SMOKE"
date -u +"started %Y-%m-%dT%H:%M:%SZ"

# --------------------------------------------------------------------------------------------------
# 1. Python environment
# --------------------------------------------------------------------------------------------------
DEPS=(pluggy attrs click rich matplotlib PIL numpy torchvision)
pip_name() { case "$1" in PIL) echo pillow ;; *) echo "$1" ;; esac; }

torch_ok() {
    "$PY" - "$DEVICE" <<'EOF'
import sys
import torch
cuda = torch.cuda.is_available()
print(f"torch {torch.__version__}, CUDA available: {cuda}")
sys.exit(0 if cuda or sys.argv[1] == "cpu" else 1)
EOF
}

contrastive_ok() {
    # Imports from this checkout, and the built-in plugins are found through their entry points.
    "$PY" - "$REPO" <<'EOF'
import os
import sys
import contrastive
from contrastive.registry import load_registry
here = os.path.realpath(os.path.join(sys.argv[1], "contrastive"))
if os.path.realpath(os.path.dirname(contrastive.__file__)) != here:
    sys.exit(f"contrastive imports from {contrastive.__file__}, not from {here}")
registry = load_registry()
for category, name in (("encoders", "resnet"), ("datasets", "webdataset"), ("augmentations", "simclr")):
    registry.get(category, name)
print(f"contrastive {contrastive.__version__} from {here}")
EOF
}

missing_deps() {
    local dep
    for dep in "${DEPS[@]}"; do
        "$PY" -c "import $dep" 2>/dev/null || pip_name "$dep"
    done
}

pip_install() {
    local source=()
    if [ -n "${WHEELHOUSE:-}" ]; then source=(--no-index --find-links "$WHEELHOUSE"); fi
    "$PY" -m pip install --quiet --no-input --disable-pip-version-check --timeout 15 --retries 1 \
        "${source[@]}" "$@"
}

make_venv() {
    echo "this interpreter refuses installs: making a venv with its packages visible in $WORK/venv"
    "$PY" -m venv --system-site-packages "$WORK/venv" || return 1
    PY="$WORK/venv/bin/python"
}

make_shim() {
    # Offline fallback: the packages by symlink and a dist-info with the entry points, on PYTHONPATH.
    local shim="$WORK/shim"
    echo "installing an offline shim in $shim"
    rm -rf "$shim" && mkdir -p "$shim" || return 1
    ln -s "$REPO/contrastive" "$shim/contrastive" && ln -s "$REPO/plugins" "$shim/contrastive_plugins" || return 1
    "$PY" - "$REPO/pyproject.toml" "$shim" <<'EOF' || return 1
import pathlib
import sys
import tomllib
project = tomllib.loads(pathlib.Path(sys.argv[1]).read_text())["project"]
info = pathlib.Path(sys.argv[2]) / f"contrastive-{project['version']}.dist-info"
info.mkdir()
(info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: contrastive\nVersion: {project['version']}\n")
groups = {"console_scripts": project.get("scripts", {}), **project.get("entry-points", {})}
lines = [f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()) for group, entries in groups.items()]
(info / "entry_points.txt").write_text("\n".join(lines))
EOF
    export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
}

setup_python() {
    torch_ok || { echo "torch is missing, or CUDA is not available to it (use --cpu-smoke without a GPU)"; return 1; }
    if [ "${FORCE_SHIM:-0}" != 1 ] && contrastive_ok 2>/dev/null; then
        echo "contrastive is already installed from this checkout"
        return 0
    fi
    local missing
    missing="$(missing_deps | tr '\n' ' ')"
    if [ -n "${missing// /}" ]; then
        echo "installing missing dependencies: $missing"
        # shellcheck disable=SC2086
        if ! pip_install $missing; then
            make_venv && pip_install $missing || echo "could not install: $missing (set WHEELHOUSE)"
        fi
    fi
    if [ "${FORCE_SHIM:-0}" = 1 ] || ! pip_install --no-deps --no-build-isolation -e "$REPO"; then
        make_shim || return 1
    fi
    contrastive_ok
}

# Not through phase(): it sets PY and PYTHONPATH in this shell.
start=$SECONDS
echo
echo "=== setup ==="
setup_python
STATUS[setup]=$?
SPENT[setup]=$((SECONDS - start))
PHASES+=(setup)
echo "=== setup: exit ${STATUS[setup]} after ${SPENT[setup]}s ==="
if [ "${STATUS[setup]}" != 0 ]; then
    echo "setup failed: nothing else can run"
    exit 1
fi
export PYTHONUNBUFFERED=1
CLI=("$PY" -m contrastive)

# --------------------------------------------------------------------------------------------------
# 2. Data: random JPEGs, then shards
# --------------------------------------------------------------------------------------------------
cat >"$WORK/make_images.py" <<'EOF'
"""Write COUNT smooth-plus-noise JPEGs of SIDE px into ROOT/class_NNN/ with a process pool."""

import os
import sys
from multiprocessing import Pool

import numpy as np
from PIL import Image

CLASSES = 10


def make(job: tuple[str, int, int]) -> None:
    root, index, side = job
    rng = np.random.default_rng(index)
    ys = np.linspace(0.0, 1.0, side)[:, None, None]
    xs = np.linspace(0.0, 1.0, side)[None, :, None]
    freq = 1.0 + 5.0 * rng.random((2, 3))
    phase = 6.3 * rng.random(3)
    image = 0.5 + 0.35 * np.sin(3 * freq[0] * xs + 2 * freq[1] * ys + phase)
    image = image + 0.08 * rng.standard_normal((side, side, 3))
    pixels = (255 * np.clip(image, 0.0, 1.0)).astype(np.uint8)
    path = os.path.join(root, f"class_{index % CLASSES:03d}", f"img_{index:07d}.jpg")
    Image.fromarray(pixels).save(path, quality=90)


if __name__ == "__main__":
    root, count, side, procs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    for label in range(CLASSES):
        os.makedirs(os.path.join(root, f"class_{label:03d}"), exist_ok=True)
    with Pool(procs) as pool:
        pool.map(make, [(root, i, side) for i in range(count)], chunksize=64)
    print(f"wrote {count} JPEGs of {side}x{side} px in {root}")
EOF

DATA_TAG="n${IMAGES}_s${IMAGE_SIDE}"
IMAGES_DIR="$WORK/images_$DATA_TAG"
SHARDS_DIR="$WORK/shards_$DATA_TAG"
make_data() {
    if [ ! -f "$IMAGES_DIR/.done" ]; then
        rm -rf "$IMAGES_DIR"
        limited "$PY" "$WORK/make_images.py" "$IMAGES_DIR" "$IMAGES" "$IMAGE_SIDE" "$NPROC" || return 1
        touch "$IMAGES_DIR/.done"
    fi
    local per_shard=$(((IMAGES + 4 * NPROC - 1) / (4 * NPROC)))
    limited "${CLI[@]}" shards build imagefolder "$IMAGES_DIR" "$SHARDS_DIR" \
        --maxcount "$((per_shard < 64 ? 64 : per_shard))" --workers "$NPROC"
}
phase data 300 make_data

# --------------------------------------------------------------------------------------------------
# 3. Pretraining through `contrastive run`
# --------------------------------------------------------------------------------------------------
RUN_DIR="$WORK/run"
cat >"$WORK/pretrain.toml" <<EOF
# Written by benchmarks/gpu_check.sh
[experiment]
name = "gpu_check"
seed = 0

[runtime]
device = "$DEVICE"
precision = "bf16"
channels_last = true
num_workers = $WORKERS
log_every = $LOG_EVERY
checkpoint_every = 1000000

[pretrain]
epochs = 1
batch_size = $BATCH
max_steps = $STEPS

[pretrain.dataset]
name = "webdataset"
urls = "$SHARDS_DIR"
labelled = false

[pretrain.augmentation]
name = "simclr"
size = $SIZE

[pretrain.encoder]
name = "resnet"
depth = $DEPTH
$ENCODER_EXTRA
EOF
run_pretrain() {
    rm -rf "$RUN_DIR"
    limited "${CLI[@]}" run "$WORK/pretrain.toml" --run-dir "$RUN_DIR" || return 1
    cp "$RUN_DIR/pretrain/metrics.jsonl" "$OUT_DIR/pretrain_metrics.jsonl"
    cp "$RUN_DIR/pretrain/results.json" "$OUT_DIR/pretrain_results.json"
}
phase pretrain 300 run_pretrain

# --------------------------------------------------------------------------------------------------
# 4. Supervised step loop (plain PyTorch, torchvision ResNet)
# --------------------------------------------------------------------------------------------------
cat >"$WORK/supervised.py" <<'EOF'
"""Plain supervised step loop: torchvision ResNet, bf16 autocast (CUDA), channels_last, cross entropy."""

import json
import sys
import time

import torch
from torch import nn

device_name, batch, size, steps, warmup, depth, out = sys.argv[1:8]
batch, size, steps, warmup = int(batch), int(size), int(steps), int(warmup)
device = torch.device(device_name)
torch.manual_seed(0)
try:
    import torchvision

    model: nn.Module = getattr(torchvision.models, f"resnet{depth}")(num_classes=1000)
    source = f"torchvision.models.resnet{depth}"
except (ImportError, AttributeError):
    from contrastive.registry import load_registry

    registry = load_registry()
    norm = registry.build("normalizations", "batch_norm")
    encoder = registry.build("encoders", "resnet", depth=int(depth), norm_layer=norm)
    model = nn.Sequential(encoder, nn.Linear(encoder.feature_dim, 1000))
    source = f"contrastive resnet{depth} + linear"
model = model.to(device, memory_format=torch.channels_last)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
criterion = nn.CrossEntropyLoss()
images = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
labels = torch.randint(0, 1000, (batch,), device=device)


def now() -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


model.train()
start = 0.0
for step in range(warmup + steps):
    if step == warmup:
        start = now()
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        loss = criterion(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
seconds = now() - start
result = {
    "model": source,
    "batch": batch,
    "size": size,
    "timed_steps": steps,
    "seconds": seconds,
    "images_per_second": steps * batch / seconds,
    "last_loss": float(loss.detach()),
}
print(json.dumps(result))
with open(out, "w") as handle:
    json.dump(result, handle, indent=2)
EOF
phase supervised 180 "$PY" "$WORK/supervised.py" "$DEVICE" "$BATCH" "$SIZE" "$((STEPS - WARM_STEPS))" \
    "$WARM_STEPS" "$DEPTH" "$OUT_DIR/supervised.json"

# --------------------------------------------------------------------------------------------------
# 5. Framework overhead on this device (benchmarks/train_step.py)
# --------------------------------------------------------------------------------------------------
TS_ARGS=(--device "$DEVICE" --size "$SIZE" "${TS_MODEL[@]}" --precision bf16 --channels-last
    --steps "$TS_STEPS" --warmup 5 --repeats "$TS_REPEATS" --json "$OUT_DIR/train_step.json")
phase train_step 300 "$PY" "$REPO/benchmarks/train_step.py" "${TS_ARGS[@]}"

# --------------------------------------------------------------------------------------------------
# 6. Summary
# --------------------------------------------------------------------------------------------------
echo
GPU_NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)"
GPU_NAME="${GPU_NAME:-none (nvidia-smi unavailable)}"
echo "nvidia-smi: $GPU_NAME"
STATUS_LINE=""
for name in "${PHASES[@]}"; do STATUS_LINE+="$name=${STATUS[$name]}:${SPENT[$name]}s "; done
"$PY" - "$OUT_DIR" "$GPU_NAME" "$BATCH" "$SIZE" "$DEPTH" "$STEPS" "$WARM_STEPS" "$WORKERS" \
    "$STATUS_LINE" "$SMOKE" <<'EOF'
import json
import pathlib
import sys

out = pathlib.Path(sys.argv[1])
gpu, batch, size, depth, steps, warm, workers, status, smoke = sys.argv[2:11]
batch, steps, warm = int(batch), int(steps), int(warm)


def load(name):
    path = out / name
    return json.loads(path.read_text()) if path.exists() else None


summary = {"gpu": gpu, "smoke": smoke == "1", "phases": status.strip(), "batch": batch, "size": int(size),
           "depth": int(depth), "pretrain_steps": steps, "warm_steps": warm, "num_workers": int(workers)}
metrics = out / "pretrain_metrics.jsonl"
if metrics.exists():
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    windows = [r for r in rows if "images_per_second" in r and r["step"] > warm]
    previous = {r["step"]: p["step"] for p, r in zip(rows, rows[1:])}
    images = seconds = 0.0
    for row in windows:
        count = (row["step"] - previous.get(row["step"], warm)) * batch
        images += count
        seconds += count / row["images_per_second"]
    if seconds:
        summary["pretrain_images_per_second"] = images / seconds
        summary["pretrain_timed_steps"] = int(images // batch)
        summary["pretrain_last_loss"] = rows[-1].get("loss")
supervised = load("supervised.json")
if supervised:
    summary["supervised_images_per_second"] = supervised["images_per_second"]
    summary["supervised_model"] = supervised["model"]
train_step = load("train_step.json")
if train_step:
    summary["framework_over_plain_loop"] = train_step["median_ratio"]
    in_memory = [r["framework"]["images_per_second"] for r in train_step["repeats"]]
    summary["framework_in_memory_images_per_second"] = sorted(in_memory)[len(in_memory) // 2]
pre, sup = summary.get("pretrain_images_per_second"), summary.get("supervised_images_per_second")
if pre and sup:
    summary["pretrain_over_supervised_images"] = pre / sup
    summary["pretrain_over_supervised_views"] = 2 * pre / sup
mem = summary.get("framework_in_memory_images_per_second")
if pre and mem:
    summary["pipeline_run_over_in_memory"] = pre / mem

lines = [
    f"GPU: {gpu}{' (CPU smoke run)' if smoke == '1' else ''}",
    f"phases (exit:seconds): {status.strip()}",
    f"setup: resnet{depth}, {size} px, global batch {batch}, bf16, channels_last, {workers} workers",
]
def fmt(key, text, unit=""):
    value = summary.get(key)
    lines.append(f"{text}: {value:.3f}{unit}" if isinstance(value, float) else f"{text}: n/a")
fmt("pretrain_images_per_second", "pretrain (contrastive run, real shards, 2 views)", " images/s")
fmt("supervised_images_per_second", "supervised plain loop (resident tensors, 1 view)", " images/s")
fmt("pretrain_over_supervised_images", "ratio pretrain/supervised, images")
fmt("pretrain_over_supervised_views", "ratio pretrain/supervised, views (2 per pretrain image)")
fmt("framework_in_memory_images_per_second", "pretrain step, framework on in-memory batches", " images/s")
fmt("framework_over_plain_loop", "ratio framework/plain loop (train_step.py median; target >= 0.97)")
fmt("pipeline_run_over_in_memory", "ratio pipeline run/in-memory framework (< 1: data-bound)")
text = "\n".join(lines)
print("=== summary ===")
print(text)
(out / "summary.txt").write_text(text + "\n")
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
EOF
date -u +"finished %Y-%m-%dT%H:%M:%SZ"
echo "outputs in $OUT_DIR: $(cd "$OUT_DIR" && ls | tr '\n' ' ')"
FAILED=0
for name in "${PHASES[@]}"; do [ "${STATUS[$name]}" = 0 ] || FAILED=1; done
[ "$FAILED" = 0 ] || echo "some phases failed (exit status 1); see the log above"
exec 1>&- 2>&-
wait "$TEE_PID" 2>/dev/null || true
exit "$FAILED"
