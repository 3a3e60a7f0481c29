"""``UserError`` keeps its one-line message when torch re-raises it from a DataLoader worker."""

from __future__ import annotations

import pytest
import torch

from adperception.data.formats import DataFileError
from adperception.errors import UserError


class Broken(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, idx: int) -> None:
        raise DataFileError(f"camera/frame_{idx}.json: baseline is not finite (inf)")


def test_a_data_error_from_a_worker_is_still_one_line_naming_the_file(capsys) -> None:
    loader = torch.utils.data.DataLoader(Broken(), num_workers=1)
    with pytest.raises(DataFileError) as caught:
        next(iter(loader))
    assert isinstance(caught.value, UserError)
    assert str(caught.value) == "camera/frame_0.json: baseline is not finite (inf)"
    assert caught.value.report() == 2
    assert capsys.readouterr().err == ("error: camera/frame_0.json: baseline is not finite (inf)\n")


def test_in_the_main_process_the_message_is_untouched() -> None:
    assert str(DataFileError("a.png: empty file (0 bytes)")) == "a.png: empty file (0 bytes)"
