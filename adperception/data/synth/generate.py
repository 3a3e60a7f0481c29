"""Generates a SynthDrive tree: deterministic per sample, in parallel, resumable.

Sample ``index`` of ``split`` is drawn from ``SeedSequence(seed, spawn_key=(split, index))``, so
its content depends on nothing else: not the worker count, not the order, not the other splits.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from adperception.data.synth.render import Frame, render
from adperception.data.synth.scene import Scene, sample_scene
from adperception.data.synth.writer import sample_path, sample_stem, suffixes, write_sample

SPLITS = ("train", "val", "test")
MANIFEST = "synthdrive.json"
GENERATOR_VERSION = 2  # bumped when a seed draws other samples; 2: the ego car kept clear


def generate_sample(
    seed: int, split: str, index: int, *, height: int = 256, width: int = 512
) -> tuple[Scene, Frame]:
    """The scene and rendered frame of one sample; identical on every call."""
    sequence = np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split), index))
    scene_rng, noise_rng = (np.random.default_rng(s) for s in sequence.spawn(2))
    scene = sample_scene(scene_rng, width, height)
    return scene, render(scene, noise_rng)


def _write_one(job: tuple[str, str, int, int, int, int]) -> str:
    root, split, index, seed, height, width = job
    scene, frame = generate_sample(seed, split, index, height=height, width=width)
    write_sample(root, split, sample_stem(index), frame, scene.camera)
    return split


def generate_dataset(
    root: str | os.PathLike,
    counts: dict[str, int],
    *,
    seed: int = 0,
    height: int = 256,
    width: int = 512,
    workers: int = 1,
    progress: Callable[[Iterator[str], int], Iterator[str]] | None = None,
) -> int:
    """Writes the samples of ``counts`` ({split: n}) that are not complete yet under ``root``.

    A manifest records seed and resolution; generating into a tree made with other settings is
    refused rather than mixing two datasets. Returns the number of samples written.
    """
    root = Path(root)
    unknown = set(counts) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; expected some of {SPLITS}")
    settings = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "height": height,
        "width": width,
    }
    manifest = root / MANIFEST
    if manifest.exists():
        previous = json.loads(manifest.read_text())
        clash = {k: (previous.get(k), v) for k, v in settings.items() if previous.get(k) != v}
        if clash:
            raise ValueError(
                f"{manifest}: the tree was generated with other settings "
                f"(existing, requested): {clash}; use another --out"
            )
    root.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({**settings, "counts": counts}, indent=2))
    for tmp in root.rglob("*.tmp"):  # temporaries of a killed run
        tmp.unlink()

    jobs = [
        (str(root), split, i, seed, height, width)
        for split, n in counts.items()
        for i in range(n)
        # complete = every file: a tree from before a task was added gets that task's files
        if not all(sample_path(root, split, sample_stem(i), s).exists() for s in suffixes())
    ]
    if workers > 1 and len(jobs) > 1:
        with get_context("spawn").Pool(workers) as pool:
            done = pool.imap_unordered(_write_one, jobs, chunksize=4)
            for _ in progress(done, len(jobs)) if progress else done:
                pass
    else:
        done = map(_write_one, jobs)
        for _ in progress(done, len(jobs)) if progress else done:
            pass
    return len(jobs)
