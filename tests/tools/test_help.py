"""Every command-line tool answers ``--help`` with its usage, and so does every subcommand of
the benchmark (argparse %-formats help strings: a docstring with a bare percent sign used as
one made ``tools/benchmark.py --help`` raise)."""

from __future__ import annotations

import contextlib
import io
import runpy
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"
SCRIPTS = sorted(
    path.name for path in TOOLS.glob("*.py") if 'if __name__ == "__main__"' in path.read_text()
)
BENCHMARK_COMMANDS = [
    "synth", "train", "balancers", "inference", "architectures", "inference-one", "profile",
]  # fmt: skip


def _help(script: str, *args: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The tool's stdout for ``script *args --help``, which must exit with status 0."""
    monkeypatch.setattr(sys, "argv", [script, *args, "--help"])
    monkeypatch.syspath_prepend(str(TOOLS))
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        runpy.run_path(str(TOOLS / script), run_name="__main__")
    assert done.value.code in (0, None), out.getvalue()
    return out.getvalue()


def test_every_tool_is_covered() -> None:
    assert {"train.py", "test.py", "benchmark.py", "run_delta_m.py", "export.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_tool_help(script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert f"usage: {script}" in _help(script, monkeypatch=monkeypatch)


@pytest.mark.parametrize("command", BENCHMARK_COMMANDS)
def test_benchmark_command_help(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    text = _help("benchmark.py", command, monkeypatch=monkeypatch)
    assert f"usage: benchmark.py {command}" in text
    assert "--json" in text  # every command can write its record


def test_benchmark_lists_its_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    text = _help("benchmark.py", monkeypatch=monkeypatch)
    for command in BENCHMARK_COMMANDS:
        assert command in text
