#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md in one command on a bare GPU machine that has its own
# CUDA build of torch and no package registry: install the project against that torch, build
# mmcv with its CUDA ops from the carried sdist, run the GPU-marked tests, the balancer
# benchmark, bf16 AMP training of configs/ad_mtl.py at 512×1024 (throughput and MFU) and the
# inference benchmark, and write one JSON of it all (OUT/gpu_check.json) beside each step's own.
#
#   bash tools/gpu_check.sh prepare [WHEELS]  here, with a package registry: the sdist of mmcv
#                                             and the wheels the GPU image lacks, for its Python
#                                             (3.12), into WHEELS (default .gpu-wheels/, ignored)
#   bash tools/gpu_check.sh run OUT [WHEELS]  there: the whole check, about 10 minutes on an H200
#   bash tools/gpu_check.sh dry-run OUT       anywhere, in the installed environment: every check
#                                             step on what there is (the CPU), at toy sizes
#
# Each step is timed and its exit status kept; a failed step does not stop the others, but the
# script exits non-zero if any failed. The steps' logs are OUT/<step>.log.
set -Euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { printf '[gpu_check] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }

# The GPU image's Python and the distributions it already holds (KINDS.md of the lending
# workplace, 2026-11); everything else adperception needs travels as a wheel.
DEVICE_PYTHON=3.12
DEVICE_HAS="torch torchvision triton numpy scipy scikit-learn scikit-image matplotlib pillow
opencv-python-headless onnx onnxruntime safetensors tensorboard tqdm timm regex rich pyyaml
packaging filelock fsspec jinja2 networkx sympy mpmath typing-extensions setuptools wheel pip
pytest pytest-timeout pluggy iniconfig contourpy cycler fonttools kiwisolver pyparsing
python-dateutil six protobuf grpcio absl-py markdown werkzeug markupsafe tensorboard-data-server
huggingface-hub requests urllib3 idna certifi charset-normalizer joblib threadpoolctl imageio
tifffile lazy-loader pandas pytz tzdata hf-xet tokenizers safetensors ninja cmake"

prepare() {
    local dest="${1:-.gpu-wheels}" py="${PYTHON:-.venv/bin/python}"
    [[ -x "$py" ]] || die "prepare needs the installed environment ($py); run make install"
    mkdir -p "$dest"
    # Every distribution adperception needs here (no extras), at the version installed here,
    # but those the image has and torch's own CUDA libraries.
    mapfile -t pins < <(DEVICE_HAS="$DEVICE_HAS" DEVICE_PYTHON="$DEVICE_PYTHON" "$py" - <<'EOF'
import os
import re
from importlib import metadata

from packaging.requirements import Requirement

has = {re.sub(r"[-_.]+", "-", n).lower() for n in os.environ["DEVICE_HAS"].split()}
# typing: in the standard library since 3.5 (cityscapesscripts names the backport anyway);
# opencv-python (mmengine's, mmcv's): the image's opencv-python-headless is the same cv2
has |= {"typing", "opencv-python"}
env = {"python_version": os.environ["DEVICE_PYTHON"], "extra": ""}
seen, todo = set(), ["adperception"]
while todo:
    name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
    if name in seen or name in has:
        continue  # what the image has brings its own requirements
    seen.add(name)
    for text in metadata.requires(name) or ():
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate(env):
            todo.append(req.name)
for name in sorted(seen - {"adperception"}):
    if name.startswith(("nvidia-", "cuda-")):
        continue
    print(f"{name}=={metadata.version(name)}")
EOF
    )
    log "downloading ${#pins[@]} distributions for Python $DEVICE_PYTHON into $dest"
    # setuptools < 70 (mmcv's setup.py imports pkg_resources) and wheel build the project too
    pins+=("setuptools==69.5.1" "wheel==0.45.1")
    local pin binary=(--only-binary=:all: --python-version "$DEVICE_PYTHON" --implementation cp
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64 --platform any)
    for pin in "${pins[@]}"; do
        # a wheel for the GPU machine's Python, else the sdist (mmcv; pure-Python backports);
        # pip reads an sdist's metadata by running its setup.py, and mmcv's imports
        # pkg_resources: that runs against a setuptools < 70 of its own
        if [[ "$pin" == mmcv==* ]] \
            || ! "$py" -m pip download -q --no-deps "${binary[@]}" -d "$dest" "$pin" 2>/dev/null; then
            [[ -d "$dest/.setuptools" ]] || "$py" -m pip install -q --no-deps \
                --target "$dest/.setuptools" "setuptools==69.5.1" 2>/dev/null \
                || die "could not fetch setuptools 69.5.1"
            PYTHONPATH="$dest/.setuptools" "$py" -m pip download -q --no-deps --no-binary=:all: \
                --no-build-isolation -d "$dest" "$pin" || die "could not download the sdist of $pin"
        fi
    done
    rm -rf "$dest/.setuptools"
    log "$(du -sh "$dest" | cut -f1) in $dest: carry it to the GPU machine with the checkout"
}

install_there() {  # $1: wheel folder; sets PY
    local wheels venv=/tmp/adperception-venv
    wheels="$(cd "$1" && pwd)" || die "no wheel folder $1: run 'tools/gpu_check.sh prepare' here first"
    # A venv over the image's own packages: its CUDA torch stays, nothing of the image changes.
    # The carried wheels are the exact closure resolved here, so they go in as they are
    # (--no-deps): no resolver run offline, and mmengine's opencv-python is the image's
    # opencv-python-headless.
    python3 -m venv --system-site-packages "$venv"
    "$venv/bin/python" -m pip install -q --no-index --no-deps "$wheels"/*.whl
    PIP_NO_INDEX=1 PIP_FIND_LINKS="$wheels" VIRTUAL_ENV="$venv" ADPERCEPTION_EXTRAS="" \
        ADPERCEPTION_NO_DEPS=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" \
        MAX_JOBS="${MAX_JOBS:-$(nproc)}" ADPERCEPTION_CACHE=/tmp/adperception-cache \
        bash tools/install.sh
    PY="$venv/bin/python"
}

STATUS=0
step() {  # $1: name, $2: time limit in s, the rest: the command; its log is OUT/<name>.log
    local name="$1" limit="$2" start rc
    shift 2
    log "$name: $*"
    start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    printf '%s %s %s\n' "$name" "$rc" "$((SECONDS - start))" >>"$OUT/steps.txt"
    if [[ $rc -ne 0 ]]; then
        STATUS=1
        log "$name failed (exit $rc after $((SECONDS - start)) s); the end of $OUT/$name.log:"
        tail -n 20 "$OUT/$name.log" >&2
    fi
}

checks() {  # $1: gpu or dry
    local bench=("$PY" tools/benchmark.py)
    local balancers=(--methods pcgrad pcgrad_reference pcgrad_sequential pcgrad_batched)
    local train=(--height 512 --width 1024 --batch 8 --iters 200 --amp bfloat16)
    local inference=(--amp --iters 20)
    if [[ "$1" == dry ]]; then
        balancers=(--methods pcgrad pcgrad_reference --batch 1 --iters 1)
        # fp32: bf16 autocast on a CPU without bf16 instructions takes a minute per step
        train=(--height 128 --width 256 --batch 1 --iters 1)
        inference=(--sizes quick --batches 1 --iters 1)
    fi
    : >"$OUT/steps.txt"
    step environment 120 "$PY" -c "import json, torch, mmcv, mmcv._ext; print(json.dumps(dict(
        torch=torch.__version__, cuda=torch.version.cuda, mmcv=mmcv.__version__,
        device=torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')))"
    step gpu_tests 300 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py \
        --junitxml "$OUT/gpu_tests.xml"
    step balancers 300 "${bench[@]}" balancers "${balancers[@]}" --json "$OUT/balancers.json"
    step train_bf16 300 "${bench[@]}" train --config configs/ad_mtl.py "${train[@]}" \
        --json "$OUT/train_bf16.json"
    step inference 300 "${bench[@]}" inference "${inference[@]}" --json "$OUT/inference.json" \
        --markdown "$OUT/inference.md"
    "$PY" - "$OUT" <<'EOF' || STATUS=1
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

out = Path(sys.argv[1])


def load(name):
    path = out / name
    return json.loads(path.read_text()) if path.exists() else None


steps = {}
for line in (out / "steps.txt").read_text().splitlines():
    name, rc, seconds = line.split()
    steps[name] = {"exit": int(rc), "seconds": int(seconds)}
env_log = (out / "environment.log").read_text().strip().splitlines()
tests = None
if (out / "gpu_tests.xml").exists():
    suite = ET.parse(out / "gpu_tests.xml").getroot().find("testsuite")
    tests = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
balancers, train = load("balancers.json"), load("train_bf16.json")
goals = {}
if balancers and "pcgrad_reference" in balancers:
    ratio = balancers["pcgrad"]["step_s"] / balancers["pcgrad_reference"]["step_s"]
    goals["exact_pcgrad_over_reference"] = {"value": ratio, "goal": "<= 0.7", "met": ratio <= 0.7}
if train and train["amp"] == "bfloat16":  # the dry run trains in fp32
    skipped = train["skipped_steps"]
    goals["bf16_skipped_steps"] = {"value": skipped, "goal": "0", "met": skipped == 0}
    mfu = train["mfu"]
    goals["ad_mtl_mfu"] = {"value": mfu, "goal": ">= 0.40", "met": mfu is not None and mfu >= 0.4}
record = {
    "environment": json.loads(env_log[-1]) if env_log else None,
    "steps": steps,
    "gpu_tests": tests,
    "balancers": balancers,
    "train_bf16": train,
    "inference": load("inference.json"),
    "goals": goals,
}
(out / "gpu_check.json").write_text(json.dumps(record, indent=2) + "\n")
print(json.dumps(goals, indent=2))
EOF
}

command="${1:-}"
case "$command" in
    prepare)
        prepare "${2:-.gpu-wheels}"
        ;;
    run)
        OUT="${2:?usage: tools/gpu_check.sh run OUT [WHEELS]}"
        mkdir -p "$OUT"
        export OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1
        python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null \
            || die "no CUDA device visible to python3's torch; use dry-run on a CPU"
        start=$SECONDS
        install_there "${3:-.gpu-wheels}" >"$OUT/install.log" 2>&1 \
            || { tail -n 30 "$OUT/install.log" >&2; die "the install failed ($OUT/install.log)"; }
        log "installed in $((SECONDS - start)) s"
        checks gpu
        log "done: $OUT/gpu_check.json"
        ;;
    dry-run)
        OUT="${2:?usage: tools/gpu_check.sh dry-run OUT}"
        mkdir -p "$OUT"
        PY="${PYTHON:-$(command -v python)}"
        checks dry
        log "done: $OUT/gpu_check.json"
        ;;
    *)
        die "usage: tools/gpu_check.sh prepare [WHEELS] | run OUT [WHEELS] | dry-run OUT"
        ;;
esac
exit "$STATUS"
