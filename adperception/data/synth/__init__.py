"""SynthDrive: procedural street scenes ray-cast into every target of the data contract."""

from adperception.data.synth.camera import Camera
from adperception.data.synth.generate import SPLITS, generate_dataset, generate_sample
from adperception.data.synth.render import Frame, render
from adperception.data.synth.scene import Scene, sample_scene

__all__ = [
    "SPLITS",
    "Camera",
    "Frame",
    "Scene",
    "generate_dataset",
    "generate_sample",
    "render",
    "sample_scene",
]
