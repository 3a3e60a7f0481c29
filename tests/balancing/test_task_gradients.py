"""Per-task gradient bookkeeping: the Gram matrix of a sharing group's task gradients, accumulated
over column slices, and the sign of its update, taken in chunks."""

from __future__ import annotations

import torch

from adperception.balancing.stats import update_sign
from adperception.balancing.task_gradients import unscaled_gram
from tests.tools_for_tests import load_tool


def test_the_sliced_gram_is_the_float64_gram_of_the_unscaled_rows() -> None:
    rows = torch.randn(3, 10, generator=torch.Generator().manual_seed(0)) * 1e3
    scale = 2.0**12  # an AMP loss scale
    exact = rows.double() / scale
    expected = exact @ exact.T
    for columns in (4, 10, 1 << 20):  # slices of 4, 4, 2; one slice; one slice, wider
        gram = unscaled_gram(rows, scale, columns=columns)
        assert gram.dtype == torch.float64 and gram.device.type == "cpu"
        torch.testing.assert_close(gram, expected, rtol=1e-12, atol=0)


def test_a_non_finite_entry_shows_on_its_rows_diagonal() -> None:
    rows = torch.ones(3, 7)
    rows[1, 5] = float("inf")
    rows[2, 0] = float("nan")
    finite = torch.isfinite(unscaled_gram(rows, 1.0, columns=3).diagonal())
    assert finite.tolist() == [True, False, False]
    # the largest float32 values, squared and summed in float64, stay finite
    big = torch.full((1, 1000), torch.finfo(torch.float32).max)
    assert torch.isfinite(unscaled_gram(big, 1.0)).all()


def test_the_update_sign_is_taken_in_chunks_without_changing_it() -> None:
    update = torch.tensor([-2.5, 0.0, 3.0, -0.0, 1e-30, -1e30, 7.0])
    for chunk in (1, 3, 7, 100):
        signs = update_sign(update, chunk=chunk)
        assert signs.dtype == torch.int8
        assert signs.tolist() == [-1, 0, 1, 0, 1, -1, 1]


def test_the_gram_holds_a_slice_in_float64_not_all_the_rows() -> None:
    """4 rows of 2^20 float32 values (16 MiB): a float64 copy of the rows and its quotient by
    the scale would hold 64 MiB; slices of 2^18 columns hold 8 MiB at a time."""
    rows = torch.ones(4, 1 << 20)
    peak = load_tool("benchmark").peak_cpu_bytes(lambda: unscaled_gram(rows, 2.0, columns=1 << 18))
    assert peak <= 4 * (1 << 18) * 8 + 4096  # one float64 slice, and the 4×4 results
