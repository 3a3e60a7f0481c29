"""tools/export.py on bad input: a checkpoint of another config, a truncated checkpoint and a
config with a syntax error each end in one ``error:`` line and exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from adperception.export.checkpoint import build_model, network_state_dict
from tests.engine.test_tools import load_tool

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/quickstart.py"


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return network_state_dict(build_model(Config.fromfile(CONFIG).model))


def export(capsys, config: Path, checkpoint: Path, out: Path) -> tuple[int, str]:
    code = load_tool("export").main([str(config), str(checkpoint), "--out", str(out)])
    return code, capsys.readouterr().err


def test_a_checkpoint_of_another_config_is_refused(state, tmp_path, capsys) -> None:
    (first, weight), second = next(iter(state.items())), list(state)[1]
    other = {**state, first: torch.zeros(*weight.shape[:-1], weight.shape[-1] + 1)}
    del other[second]
    checkpoint = tmp_path / "other.pth"
    torch.save(dict(state_dict=other, meta=dict(iter=0)), checkpoint)
    code, err = export(capsys, CONFIG, checkpoint, tmp_path / "out")
    assert code == 2
    wrong, right = list(other[first].shape), list(weight.shape)
    assert err == (
        f"error: checkpoint {checkpoint} does not fit the model: 1 entries differ in shape, "
        f"first: {first} (checkpoint {wrong} vs model {right}); 1 model entries missing from the "
        f"checkpoint: {second}\n"
    )
    assert not (tmp_path / "out").exists()


def test_a_truncated_checkpoint_is_named(state, tmp_path, capsys) -> None:
    checkpoint = tmp_path / "iter_1.pth"
    torch.save(dict(state_dict=state), checkpoint)
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    code, err = export(capsys, CONFIG, checkpoint, tmp_path / "out")
    assert code == 2
    assert err.startswith(f"error: cannot read checkpoint {checkpoint} (truncated, damaged or ")
    assert "PytorchStreamReader" in err and err.count("\n") == 1


def test_a_config_syntax_error_is_named(tmp_path, capsys) -> None:
    config = tmp_path / "typo.py"
    config.write_text(f"_base_ = [{str(CONFIG)!r}]\nmodel = dict(backbone=dict(\n")
    code, err = export(capsys, config, tmp_path / "none.pth", tmp_path / "out")
    assert (code, err) == (2, f"error: {config}, line 2: syntax error: '(' was never closed\n")
