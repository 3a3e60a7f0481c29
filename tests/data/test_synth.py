"""SynthDrive: geometry checked against closed forms, determinism, the on-disk encoding."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adperception.data import formats
from adperception.data.check import MAX_INSTANCE_SHARE, largest_instance
from adperception.data.datasets import SynthDrive
from adperception.data.formats import INSTANCE_OFFSET
from adperception.data.synth import (
    Camera,
    Scene,
    generate_dataset,
    generate_sample,
    render,
    sample_scene,
)
from adperception.data.synth.raycast import Box, Sphere
from adperception.data.synth.scene import LABEL, Ground, SceneObject
from adperception.data.synth.writer import sample_path, sample_stem

ROOT = Path(__file__).resolve().parents[2]
H, W = 64, 128


def empty_scene(camera: Camera, *objects: SceneObject) -> Scene:
    # Two travel lanes split at x = -0.5, the ego car in the right one; parking strips beyond.
    ground = Ground(
        road=(-4.0, 3.0),
        sidewalk=(-7.0, 6.0),
        lane_lines=(-0.5,),
        travel=(-3.5, 2.5),
        ego_lane=(-0.5, 2.5),
    )
    return Scene(
        camera=camera,
        ground=ground,
        objects=objects,
        sun=(0.3, -0.8, 0.52),
        haze_distance=400.0,
        exposure=1.0,
    )


def pixel_grid(camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(
        (np.arange(camera.width) - camera.u0) / camera.fx,
        (np.arange(camera.height) - camera.v0) / camera.fy,
    )


@pytest.mark.parametrize("pitch", [0.0, 0.038, 0.08])
def test_ground_plane_depth_normals_and_labels_match_closed_form(pitch: float) -> None:
    camera = Camera.cityscapes(W, H, pitch=pitch, yaw=0.02)
    frame = render(empty_scene(camera), np.random.default_rng(0))
    a, b = pixel_grid(camera)
    # A camera ray (a, b, 1) pitched down by p falls by b·cos p + sin p per metre of depth.
    fall = b * np.cos(pitch) + np.sin(pitch)
    with np.errstate(divide="ignore"):
        expected = np.where(fall > 0, camera.mount_height / fall, 0.0)
    expected[expected > 400.0] = 0.0
    ground = expected > 0
    assert (frame.label_ids[~ground] == LABEL["sky"]).all()
    np.testing.assert_allclose(frame.depth, expected, rtol=1e-5)
    np.testing.assert_allclose(
        frame.normals[ground],
        np.broadcast_to([0.0, -np.cos(pitch), -np.sin(pitch)], (ground.sum(), 3)),
        atol=1e-6,
    )
    assert (frame.normals[~ground] == 0).all()
    # Lateral position of the hit: the rotated ray's x times the depth.
    x = expected * (a * np.cos(0.02) + np.sin(0.02) * (-b * np.sin(pitch) + np.cos(pitch)))
    road = ground & (x > -3.9) & (x < 2.9)
    walk = ground & (((x > -6.9) & (x < -4.1)) | ((x > 3.1) & (x < 5.9)))
    assert (frame.label_ids[road] == LABEL["road"]).all()
    assert (frame.label_ids[walk] == LABEL["sidewalk"]).all()
    assert (frame.label_ids[ground & ((x < -7.1) | (x > 6.1))] == LABEL["terrain"]).all()


def test_drivable_area_and_lane_masks_follow_the_road_geometry() -> None:
    """BDD100K's encodings of the empty street, against the lateral position of each ground hit
    in closed form: the ego lane is direct (0), the other lane alternative (1), parking strips,
    pavements and sky background (2); the dashed separator is one single-white dashed lane over
    its whole length, gaps included (BDD100K annotates a dashed line as one polyline), the edge
    lines single-white solid, the kerbs road curb; nothing else is a lane."""
    pitch, yaw = 0.038, 0.02
    camera = Camera.cityscapes(W * 4, H * 4, pitch=pitch, yaw=yaw)
    frame = render(empty_scene(camera), np.random.default_rng(0))
    a, b = pixel_grid(camera)
    fall = b * np.cos(pitch) + np.sin(pitch)
    with np.errstate(divide="ignore"):
        depth = np.where(fall > 0, camera.mount_height / fall, 0.0)
    depth[depth > 400.0] = 0.0
    ground = depth > 0
    x = depth * (a * np.cos(yaw) + np.sin(yaw) * (-b * np.sin(pitch) + np.cos(pitch)))

    def band(lo: float, hi: float) -> np.ndarray:
        return ground & (x > lo) & (x < hi)

    assert (frame.drivable[band(-0.49, 2.49)] == 0).all()
    assert (frame.drivable[band(-3.49, -0.51)] == 1).all()
    not_drivable = band(-7.0, -3.51) | band(2.51, 7.0) | ~ground
    assert (frame.drivable[not_drivable] == 2).all()
    assert band(-0.49, 2.49).any() and band(-3.49, -0.51).any() and not_drivable.any()

    # bit 4 = dashed, bits 0-2 = category (format.rst): single white 6, road curb 4.
    separator = band(-0.57, -0.43)
    assert separator.sum() > 100
    assert (frame.lanes[separator] == 0b0001_0000 | 6).all()
    edges = band(-3.74, -3.70) | band(2.70, 2.74)  # 0.25 m inside the road, 0.07 m half-width
    assert edges.any() and (frame.lanes[edges] == 6).all()
    kerbs = band(-4.14, -4.01) | band(3.01, 3.14)  # the pavement side of the road's edges
    assert kerbs.any() and (frame.lanes[kerbs] == 4).all()
    unmarked = ~(band(-0.6, -0.4) | band(-4.2, -3.6) | band(2.6, 3.2))
    assert (frame.lanes[unmarked] == 255).all()


def test_box_face_and_sphere_surface_from_back_projected_depth() -> None:
    camera = Camera.cityscapes(W, H, pitch=0.0)
    car = SceneObject(
        Box((1.0, -0.8, 12.0), (0.9, 0.7, 2.2)),
        LABEL["car"],
        LABEL["car"] * INSTANCE_OFFSET,
        (0.5, 0.1, 0.1),
    )
    ball = SceneObject(
        Sphere((-2.5, -2.0, 9.0), 1.0), LABEL["vegetation"], LABEL["vegetation"], (0.2, 0.5, 0.2)
    )
    frame = render(empty_scene(camera, car, ball), np.random.default_rng(0))
    a, b = pixel_grid(camera)
    points = frame.depth[..., None] * np.stack([a, b, np.ones_like(a)], axis=-1)
    centre_cam = np.array([-2.5, -2.0 + camera.mount_height, 9.0])

    front = (frame.label_ids == LABEL["car"]) & np.isclose(frame.normals[..., 2], -1.0)
    assert front.sum() > 50
    np.testing.assert_allclose(frame.depth[front], 12.0 - 2.2, rtol=1e-6)

    on_ball = frame.label_ids == LABEL["vegetation"]
    assert on_ball.sum() > 50
    offsets = points[on_ball] - centre_cam
    np.testing.assert_allclose(np.linalg.norm(offsets, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(frame.normals[on_ball], offsets, atol=1e-5)


def test_sample_is_deterministic_and_depends_on_its_index() -> None:
    first = generate_sample(3, "train", 5, height=H, width=W)[1]
    again = generate_sample(3, "train", 5, height=H, width=W)[1]
    other = generate_sample(3, "val", 5, height=H, width=W)[1]
    for name in ("image", "label_ids", "instance_ids", "depth", "normals", "drivable", "lanes"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    assert not np.array_equal(first.label_ids, other.label_ids)


def test_instance_ids_follow_cityscapes_encoding_and_normals_are_unit() -> None:
    for index in range(4):
        frame = generate_sample(0, "train", index, height=H, width=W)[1]
        inst, label = frame.instance_ids.astype(np.int64), frame.label_ids.astype(np.int64)
        things = inst >= INSTANCE_OFFSET
        np.testing.assert_array_equal(inst[things] // INSTANCE_OFFSET, label[things])
        np.testing.assert_array_equal(inst[~things], label[~things])
        for name in ("person", "rider", "car", "truck", "bus", "motorcycle", "bicycle"):
            assert not ((label == LABEL[name]) & ~things).any(), name
        valid = frame.depth > 0
        np.testing.assert_array_equal(valid, label != LABEL["sky"])
        np.testing.assert_allclose(np.linalg.norm(frame.normals[valid], axis=-1), 1.0, atol=1e-5)


def test_scenes_contain_cut_and_occluded_instances() -> None:
    cut = occluded = 0
    for index in range(6):
        scene, frame = generate_sample(1, "train", index, height=H, width=W)
        inst = frame.instance_ids
        border = np.concatenate([inst[:, 0], inst[:, -1], inst[-1, :]])
        cut += len(np.unique(border[border >= INSTANCE_OFFSET]))
        # An instance is occluded when rendering it alone shows pixels that the scene hides.
        for iid in np.unique(inst[inst >= INSTANCE_OFFSET]):
            alone = tuple(o for o in scene.objects if o.instance_id == iid)
            solo = render(
                Scene(
                    scene.camera,
                    scene.ground,
                    alone,
                    scene.sun,
                    scene.haze_distance,
                    scene.exposure,
                ),
                np.random.default_rng(0),
            )
            occluded += int((solo.instance_ids == iid).sum() > (inst == iid).sum())
    assert cut > 0 and occluded > 0


def test_no_solid_reaches_into_the_ego_car_or_its_following_distance() -> None:
    # The ego car (1.8 m wide, under 2 m tall) from 4 m behind the camera to 5 m ahead: its
    # bonnet and the shortest gap a driver leaves to the car ahead. Level frame, y down.
    keep_out = np.array([-0.9, -2.0, -4.0]), np.array([0.9, 0.0, 5.0])
    for seed in range(200):
        scene = sample_scene(np.random.default_rng(seed), W, H)
        camera = scene.camera.origin
        for obj in scene.objects:
            corners = obj.solid.corners()
            lo, hi = corners.min(axis=0), corners.max(axis=0)
            assert not ((lo < camera) & (camera < hi)).all(), f"seed {seed}: camera in {obj}"
            assert not ((lo < keep_out[1]) & (hi > keep_out[0])).all(), f"seed {seed}: {obj}"


def test_no_instance_covers_most_of_a_generated_frame() -> None:
    shares = [
        largest_instance(generate_sample(seed, "train", index, height=H, width=W)[1].instance_ids)
        for seed in range(3)
        for index in range(16)
    ]
    assert max(share for _, share in shares) < MAX_INSTANCE_SHARE, max(shares, key=lambda s: s[1])


def read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_written_tree_is_independent_of_worker_count(tmp_path: Path) -> None:
    counts = {"train": 3, "val": 2}
    generate_dataset(tmp_path / "one", counts, seed=7, height=H, width=W, workers=1)
    generate_dataset(tmp_path / "two", counts, seed=7, height=H, width=W, workers=2)
    one, two = read_tree(tmp_path / "one"), read_tree(tmp_path / "two")
    assert len(one) == 5 * 7 and one == two  # 7 PNGs per sample


def test_disparity_and_normals_files_decode_to_the_rendered_targets(tmp_path: Path) -> None:
    generate_dataset(tmp_path, {"val": 1}, seed=2, height=H, width=W)
    scene, frame = generate_sample(2, "val", 0, height=H, width=W)
    stem = sample_stem(0)
    code = formats.read_png(
        sample_path(tmp_path, "val", stem, formats.DISPARITY_SUFFIX), channels=1, dtype=np.uint16
    )
    cam = scene.camera
    depth = formats.disparity_png_to_depth(code, cam.baseline, cam.fx)
    valid = frame.depth > 0
    np.testing.assert_array_equal(depth > 0, valid)
    # The code rounds disparity (baseline·fx / depth, in px) to the nearest 1/256 px.
    bf = cam.baseline * cam.fx
    error = np.abs(bf / depth[valid].astype(np.float64) - bf / frame.depth[valid])
    assert error.max() <= 0.5 / 256 + 1e-6
    normals = formats.decode_normals_png(
        formats.read_png(
            sample_path(tmp_path, "val", stem, formats.NORMALS_SUFFIX), channels=3, dtype=np.uint16
        )
    )
    np.testing.assert_allclose(normals, frame.normals, atol=1e-4)
    labels = formats.read_png(
        sample_path(tmp_path, "val", stem, formats.LABEL_IDS_SUFFIX), channels=1, dtype=np.uint8
    )
    np.testing.assert_array_equal(labels, frame.label_ids)
    # The BDD100K masks, as the SynthDrive reader decodes them (its 0 / 1 / 2 drivable ids; lane
    # ids 2 + category where the byte's background bit 3 is clear).
    raw = SynthDrive(data_root=str(tmp_path), split="val", pipeline=[]).get_raw_sample(0)
    np.testing.assert_array_equal(raw["gt_drivable_map"], frame.drivable)
    lanes = frame.lanes & 0b1000 == 0
    np.testing.assert_array_equal(raw["gt_lane_map"] > 0, lanes)
    np.testing.assert_array_equal(raw["gt_lane_map"][lanes], (frame.lanes[lanes] & 0b111) + 2)


def test_an_older_tree_gains_the_files_of_a_new_task(tmp_path: Path) -> None:
    """A tree written before a task existed lacks its files; generating again writes them."""
    generate_dataset(tmp_path, {"train": 2}, seed=3, height=H, width=W)
    lane = sample_path(tmp_path, "train", sample_stem(1), "_lane.png")
    before = lane.read_bytes()
    lane.unlink()
    assert generate_dataset(tmp_path, {"train": 2}, seed=3, height=H, width=W) == 1
    assert lane.read_bytes() == before


def test_interrupted_sample_is_never_visible_and_is_completed_by_a_rerun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_replace = formats.os.replace

    def killed_at_image(src: str, dst: str) -> None:
        if dst.endswith(formats.IMAGE_SUFFIX):
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(formats.os, "replace", killed_at_image)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(tmp_path / "cut", {"train": 1}, seed=4, height=H, width=W)
    monkeypatch.undo()
    image = sample_path(tmp_path / "cut", "train", sample_stem(0), formats.IMAGE_SUFFIX)
    assert not image.exists()  # partners without an image: not a sample
    assert list(image.parent.glob("*.tmp"))

    assert generate_dataset(tmp_path / "cut", {"train": 1}, seed=4, height=H, width=W) == 1
    generate_dataset(tmp_path / "clean", {"train": 1}, seed=4, height=H, width=W)
    assert not list((tmp_path / "cut").rglob("*.tmp"))
    assert read_tree(tmp_path / "cut") == read_tree(tmp_path / "clean")


def test_cli_writes_the_layout_and_refuses_other_settings(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    cmd = [
        sys.executable,
        str(ROOT / "tools/make_synthetic.py"),
        "--out",
        str(out),
        "--train",
        "2",
        "--val",
        "1",
        "--height",
        str(H),
        "--width",
        str(W),
        "--workers",
        "1",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    for folder, n in (
        ("leftImg8bit/train", 2),
        ("leftImg8bit/val", 1),
        ("gtFine/val", 2),
        ("disparity/train", 2),
        ("camera/val", 1),
        ("normals/train", 2),
    ):
        assert len(list((out / folder / "synthdrive").iterdir())) == n, folder
    clash = subprocess.run([*cmd, "--seed", "1"], capture_output=True, text=True, cwd=ROOT)
    assert clash.returncode == 2 and "other settings" in clash.stderr


def test_turned_box_pixels_lie_on_its_faces_with_their_normals() -> None:
    camera = Camera.cityscapes(W, H, pitch=0.0)
    yaw, centre, half = 0.5, np.array([0.5, -0.8, 10.0]), np.array([0.9, 0.7, 2.2])
    car = SceneObject(
        Box(tuple(centre), tuple(half), yaw),
        LABEL["car"],
        LABEL["car"] * INSTANCE_OFFSET,
        (0.5, 0.1, 0.1),
    )
    frame = render(empty_scene(camera, car), np.random.default_rng(0))
    on_box = frame.label_ids == LABEL["car"]
    assert on_box.sum() > 100
    a, b = pixel_grid(camera)
    points = frame.depth[on_box, None] * np.stack([a, b, np.ones_like(a)], axis=-1)[on_box]
    turn = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
    centre_cam = centre + [0.0, camera.mount_height, 0.0]
    local = (points - centre_cam) @ turn  # box frame: world = turn @ local
    scaled = np.abs(local) / half
    np.testing.assert_allclose(scaled.max(axis=1), 1.0, atol=1e-4)
    face = scaled.argmax(axis=1)
    expected_local = np.zeros_like(local)
    expected_local[np.arange(len(face)), face] = np.sign(local[np.arange(len(face)), face])
    np.testing.assert_allclose(frame.normals[on_box], expected_local @ turn.T, atol=1e-5)


def test_generated_tree_reads_back_through_the_reader_and_pipeline(tmp_path: Path) -> None:
    from adperception.data.datasets import SynthDrive
    from adperception.data.datasets.cityscapes import DET_CLASSES, TRAIN_ID_LUT

    generate_dataset(tmp_path, {"val": 2}, seed=5, height=H, width=W)
    pipeline = [dict(type="RandomFlip", prob=1.0), dict(type="PackMTLInputs")]
    dataset = SynthDrive(data_root=str(tmp_path), split="val", pipeline=pipeline)
    assert len(dataset) == 2 and dataset.tasks == (
        "det",
        "seg",
        "depth",
        "normals",
        "drivable",
        "lanes",
    )
    for idx in range(2):
        frame = generate_sample(5, "val", idx, height=H, width=W)[1]
        raw = dataset.get_raw_sample(idx)
        np.testing.assert_array_equal(raw["img"], frame.image)
        np.testing.assert_array_equal(raw["gt_seg_map"], TRAIN_ID_LUT[frame.label_ids])
        np.testing.assert_allclose(raw["gt_depth_map"], frame.depth, rtol=0.02)
        # One box per rendered instance, bounding exactly its visible pixels.
        inst = frame.instance_ids
        expected = set()
        for value in np.unique(inst[inst >= INSTANCE_OFFSET]):
            rows, cols = np.nonzero(inst == value)
            name = next(n for n, i in LABEL.items() if i == value // INSTANCE_OFFSET)
            box = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
            expected.add((*box, DET_CLASSES.index(name)))
        got = {
            (*box.astype(int).tolist(), int(label))
            for box, label in zip(raw["gt_bboxes"], raw["gt_bboxes_labels"], strict=True)
        }
        assert got == expected and len(raw["gt_bboxes"]) == len(expected)
        packed = dataset[idx]
        assert packed["inputs"].shape == (3, H, W)
        np.testing.assert_array_equal(
            packed["inputs"].permute(1, 2, 0).numpy(), frame.image[:, ::-1]
        )
        normals = packed["data_samples"].gt_normals.data.permute(1, 2, 0).numpy()
        np.testing.assert_allclose(normals[..., 0], -raw["gt_normals_map"][:, ::-1, 0], atol=1e-6)
