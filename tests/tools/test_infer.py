"""tools/infer.py's inputs: directories expand into their images, bad inputs are named before
the model loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.tools_for_tests import load_tool

ROOT = Path(__file__).resolve().parents[2]


infer = load_tool("infer")


def write_image(path: Path, height: int = 40, width: int = 60, fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(path, format=fmt)
    return path


def test_a_directory_stands_for_its_images_sorted(tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    for name in ("b.png", "C.JPG", "a.jpeg"):
        write_image(frames / name, fmt="PNG" if name.endswith("png") else "JPEG")
    (frames / "notes.txt").write_text("not an image")
    write_image(frames / "sub" / "d.png")
    single = write_image(tmp_path / "z.png")
    assert infer.image_paths([single, frames]) == [
        single, frames / "C.JPG", frames / "a.jpeg", frames / "b.png"
    ]  # fmt: skip


def test_bad_inputs_are_named_one_line_each(tmp_path: Path) -> None:
    tiny = write_image(tmp_path / "tiny.png", 1, 1)
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    empty = tmp_path / "empty"
    empty.mkdir()
    first = write_image(tmp_path / "a" / "frame.png")
    second = write_image(tmp_path / "b" / "frame.jpg", fmt="JPEG")
    missing = tmp_path / "missing.png"
    with pytest.raises(ValueError) as info:
        infer.image_paths([tiny, fake, empty, first, second, missing])
    lines = str(info.value).splitlines()
    expected = {
        str(tiny): "image is 1×1, smaller than 32 px a side",
        str(fake): "not a readable image file",
        str(empty): "directory without .bmp/.jpeg/.jpg/.png/.tif/.tiff/.webp files",
        str(second): f"its panel frame.png would overwrite the one of {first}",
        str(missing): "no such file or directory",
    }
    assert sorted(line.split(": ")[0] for line in lines) == sorted(expected)
    for line in lines:
        path, message = line.split(": ", 1)
        assert expected[path] in message, line


def test_cli_refuses_a_tiny_image_before_loading_the_model(tmp_path: Path) -> None:
    tiny = write_image(tmp_path / "tiny.png", 1, 1)
    command = [sys.executable, str(ROOT / "tools/infer.py"), str(tmp_path / "no-export"), str(tiny)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [*command, "--out-dir", str(tmp_path / "out")], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2
    assert f"{tiny}: image is 1×1, smaller than 32 px a side" in proc.stderr
    assert not (tmp_path / "out").exists()
