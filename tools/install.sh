#!/usr/bin/env bash
# Installs adperception and its pinned OpenMMLab stack. Idempotent: a second run checks and exits.
#
# Where: the active virtualenv if one is active, else .venv/ in the repo root (created here).
# mmcv 2.1.0 has no wheel for torch 2.14, so it is built from the PyPI sdist with its compiled
# ops and the wheel is cached under $ADPERCEPTION_CACHE/wheels (default ~/.cache/adperception),
# keyed by mmcv, torch, CUDA and Python versions: a warm install takes seconds.
# Two rough edges of that build are handled here, not hidden:
#   - mmcv's setup.py imports pkg_resources, gone from setuptools >= 70: the build runs without
#     isolation in an environment holding setuptools < 70;
#   - its setup.py asks for -std=c++14/17 while torch >= 2.13's headers demand C++20: the flag is
#     raised to the standard the installed torch's headers require.
# CUDA ops are built when a GPU is visible or FORCE_CUDA=1 (Docker builds); else CPU ops only.
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TORCH_SPEC=("torch==2.14.1" "torchvision==0.29.1")
export MMCV_VERSION="2.1.0"
CACHE="${ADPERCEPTION_CACHE:-$HOME/.cache/adperception}"

log() { printf '[install] %s\n' "$*"; }
die() { printf '[install] ERROR: %s\n' "$*" >&2; exit 1; }
trap 'die "step failed at line $LINENO: $BASH_COMMAND"' ERR

if [[ -n "${VIRTUAL_ENV:-}" ]]; then
    VENV="$VIRTUAL_ENV"
    log "using the active virtualenv $VENV"
else
    VENV="$ROOT/.venv"
    if [[ ! -x "$VENV/bin/python" ]]; then
        BASE_PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
        log "creating $VENV with $BASE_PY"
        "$BASE_PY" -m venv "$VENV" || die "could not create a virtualenv at $VENV"
    fi
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

"$PY" - <<'EOF' || die "Python >= 3.10 is required"
import sys
sys.exit(0 if sys.version_info >= (3, 10) else 1)
EOF

# The venv module seeds an old pip (23.x here) whose resolver crashes on some of this stack's
# metadata ("expected string or bytes-like object, got 'NoneType'"): bring pip up first.
"${PIP[@]}" install -q "pip>=24" || die "could not upgrade pip"

# 1. torch: keep an installed torch inside the supported range (e.g. a CUDA build), else the pin.
if "$PY" -c "import torch, torchvision" 2>/dev/null; then
    log "torch $("$PY" -c 'import torch; print(torch.__version__)') already installed"
else
    log "installing ${TORCH_SPEC[*]}"
    "${PIP[@]}" install -q "${TORCH_SPEC[@]}"
fi
"$PY" - <<'EOF' || die "installed torch is outside the supported range 2.11 <= torch <= 2.14.1"
import re, torch
v = tuple(int(x) for x in re.match(r"(\d+)\.(\d+)\.(\d+)", torch.__version__).groups())
raise SystemExit(0 if (2, 11, 0) <= v <= (2, 14, 1) else 1)
EOF

# 2. mmcv with compiled ops, from the wheel cache or built once from the sdist.
mmcv_ok() {
    "$PY" -c "import mmcv, mmcv._ext; assert mmcv.__version__ == '$MMCV_VERSION'" 2>/dev/null
}

build_mmcv_wheel() {  # $1: cache dir for the wheel, $2: C++ standard, $3: 1 to build CUDA ops
    log "building mmcv $MMCV_VERSION from the sdist ($2, CUDA ops: $3)"
    log "this takes about 13 minutes on 2 cores; it happens once per torch/CUDA/Python version"
    local work start prev_setuptools src whl
    work="$(mktemp -d)"
    trap 'rm -rf "$work"; trap - RETURN' RETURN
    # mmcv's setup.py needs pkg_resources (setuptools < 70); torch's own pin is restored after.
    prev_setuptools="$("$PY" -c 'import setuptools; print(setuptools.__version__)' 2>/dev/null || true)"
    "${PIP[@]}" install -q "setuptools>=64,<70" wheel ninja
    "${PIP[@]}" download -q --no-deps --no-binary mmcv --no-build-isolation \
        "mmcv==$MMCV_VERSION" -d "$work" || die "could not download the mmcv $MMCV_VERSION sdist"
    tar -xzf "$work/mmcv-$MMCV_VERSION.tar.gz" -C "$work"
    src="$work/mmcv-$MMCV_VERSION"
    grep -q -- "-std=c++1[47]" "$src/setup.py" \
        || die "mmcv's setup.py no longer sets -std=c++14/17: revisit the C++ standard patch"
    sed -i -E "s/-std=c\+\+1[47]/-std=$2/g" "$src/setup.py"
    start=$SECONDS
    MMCV_WITH_OPS=1 FORCE_CUDA="$3" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
        "${PIP[@]}" wheel --no-build-isolation --no-deps -w "$work/dist" "$src" \
        || die "building mmcv $MMCV_VERSION failed (the compiler output is above)"
    if [[ -n "$prev_setuptools" ]]; then
        "${PIP[@]}" install -q "setuptools==$prev_setuptools"
    fi
    mkdir -p "$1"
    for whl in "$work"/dist/mmcv-*.whl; do
        cp "$whl" "$1/.$(basename "$whl").part"
        mv "$1/.$(basename "$whl").part" "$1/$(basename "$whl")"
    done
    log "built mmcv in $((SECONDS - start)) s, cached in $1"
}

MMCV_WHEEL=()
if mmcv_ok; then
    log "mmcv $MMCV_VERSION with ops already installed"
else
    read -r KEY CXX_STD WITH_CUDA < <("$PY" - <<'EOF'
import os, re, sys, torch
from pathlib import Path
header = Path(torch.__file__).parent / "include/torch/csrc/api/include/torch/all.h"
m = re.search(r"__cplusplus < (\d{4})\d\dL", header.read_text()) if header.exists() else None
std = {"2020": "c++20", "2023": "c++23"}.get(m.group(1) if m else "", "c++17")
cuda = os.environ.get("FORCE_CUDA") == "1" or torch.cuda.is_available()
accel = f"cu{torch.version.cuda}" if cuda and torch.version.cuda else "cpuops"
py = f"cp{sys.version_info.major}{sys.version_info.minor}"
print(f"mmcv{os.environ['MMCV_VERSION']}-torch{torch.__version__}-{accel}-{py}", std, int(cuda))
EOF
    )
    [[ -n "${KEY:-}" ]] || die "could not inspect the installed torch"
    WHEEL_DIR="$CACHE/wheels/$KEY"
    if compgen -G "$WHEEL_DIR/mmcv-$MMCV_VERSION-*.whl" >/dev/null; then
        log "using the cached mmcv wheel in $WHEEL_DIR"
    else
        build_mmcv_wheel "$WHEEL_DIR" "$CXX_STD" "$WITH_CUDA"
    fi
    MMCV_WHEEL=("$(compgen -G "$WHEEL_DIR/mmcv-$MMCV_VERSION-*.whl" | head -n 1)")
    # A broken or op-less mmcv (e.g. mmcv-lite) of the same version would shadow the wheel.
    "${PIP[@]}" uninstall -q -y mmcv mmcv-lite 2>/dev/null || true
fi

# 3. The project and the rest of its pinned dependencies (setup.cfg holds the pins), resolved
#    together with the mmcv wheel so that mmcv's own dependencies come in too.
log "installing adperception and its dependencies"
# ADPERCEPTION_EXTRAS: the extras to install (default dev; empty for none, as on a GPU machine
# that has no registry and needs no linters). ADPERCEPTION_NO_DEPS=1: the dependencies are in
# already (tools/gpu_check.sh installs the closure it carries), install no more.
EXTRAS="${ADPERCEPTION_EXTRAS-dev}"
NO_DEPS=()
[[ "${ADPERCEPTION_NO_DEPS:-0}" == 1 ]] && NO_DEPS=(--no-deps --no-build-isolation)
"${PIP[@]}" install -q "${NO_DEPS[@]}" "${MMCV_WHEEL[@]}" -e "$ROOT${EXTRAS:+[$EXTRAS]}"
"$PY" - <<'EOF' || die "the OpenMMLab stack does not import"
import mmcv._ext, mmdet, mmengine, mmseg  # noqa: F401
from mmcv.ops import nms  # noqa: F401
print(f"[install] ok: mmengine {mmengine.__version__}, mmcv {mmcv.__version__}, "
      f"mmdet {mmdet.__version__}, mmseg {mmseg.__version__}")
EOF
