"""mmengine checkpoints that load under torch's ``weights_only=True`` and survive a crash mid-write.

Loading: mmengine 0.10.7 reads checkpoints with ``torch.load(path, map_location=...)``, whose
default since torch 2.6 is ``weights_only=True``: tensors, containers and primitives load, every
other global in the pickle must be allow-listed. ``install_checkpoint_allowlist`` allows exactly
what mmengine's own checkpoints hold beyond that, found by saving a Runner checkpoint (LR
schedulers, message hub, logger, best-metric checkpoint) and listing its globals with
``torch.serialization.get_unsafe_globals_in_checkpoint``:

- ``mmengine.logging.history_buffer.HistoryBuffer``, the message hub's log scalars, which pickle
  their statistics methods as ``getattr(HistoryBuffer, "min" | "max" | "current" | "mean")``;
  ``builtins.getattr`` is therefore bound to ``history_buffer_statistic``, which resolves those
  four names and rejects every other attribute;
- numpy arrays and scalars (``_reconstruct``, ``ndarray``, ``scalar``, ``dtype``) of numeric
  dtypes only (bool, integers, floats): no object arrays.

``collections.Counter`` (MultiStepLR's milestones) and ``OrderedDict`` are allowed by torch
itself. Nothing here ever loads with ``weights_only=False``: any other global fails with torch's
``UnpicklingError``.

Reading: ``read_checkpoint`` names the file when it is missing, truncated or refused, and
``check_state_dict_fits`` says in one line how a checkpoint differs from the model it is loaded
into.

Writing: see ``AtomicCheckpointHook`` and ``adperception.engine.runner.MTLRunner``; every write
goes to a ``temporary_path`` first, and a full disk is a ``UserError`` naming the file and the
free space. A kill mid-write leaves that temporary behind; ``remove_stale_temporaries`` deletes
those of dead processes when the next training run starts.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import os.path as osp
import pickle
import re
import shutil
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.logging import HistoryBuffer, print_log
from mmengine.runner import Runner
from mmengine.runner.checkpoint import _load_checkpoint

from adperception.engine.validate import UserError
from adperception.registry import HOOKS

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray

#: HistoryBuffer's default statistics, the only attributes a checkpoint may ``getattr``.
HISTORY_BUFFER_STATISTICS = ("min", "max", "current", "mean")
#: Scalar types whose dtypes may occur in a checkpoint's numpy arrays and scalars.
NUMERIC_TYPES = (
    np.bool_,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.float16,
    np.float32,
    np.float64,
)
#: Where numpy 2 and numpy 1 pickles name the array and scalar constructors.
NUMPY_MULTIARRAY_MODULES = ("numpy._core.multiarray", "numpy.core.multiarray")
LAST_CHECKPOINT = "last_checkpoint"
#: ``temporary_path``'s names: ``.{name}.{pid}.tmp``.
TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")
#: How many differing keys a ``CheckpointError`` lists per kind.
SHOWN_KEYS = 3


class CheckpointError(UserError):
    """A checkpoint that cannot be read, or that does not fit the model it is loaded into."""


def history_buffer_statistic(owner: object, name: str) -> Callable:
    """``getattr`` as a checkpoint may call it: one of HistoryBuffer's default statistics."""
    if owner is not HistoryBuffer or name not in HISTORY_BUFFER_STATISTICS:
        raise pickle.UnpicklingError(
            f"checkpoint calls getattr({owner!r}, {name!r}); only HistoryBuffer statistics "
            f"{HISTORY_BUFFER_STATISTICS} are allowed"
        )
    return getattr(HistoryBuffer, name)


def checkpoint_safe_globals() -> list[Callable | tuple[Callable, str]]:
    """The globals ``torch.load(weights_only=True)`` must accept to read mmengine checkpoints."""
    safe: list[Callable | tuple[Callable, str]] = [
        HistoryBuffer,
        (history_buffer_statistic, "builtins.getattr"),
        np.ndarray,
        np.dtype,
        *sorted({type(np.dtype(t)) for t in NUMERIC_TYPES}, key=str),
    ]
    for module in NUMPY_MULTIARRAY_MODULES:
        safe += [
            (_multiarray._reconstruct, f"{module}._reconstruct"),
            (_multiarray.scalar, f"{module}.scalar"),
        ]
    return safe


def install_checkpoint_allowlist() -> None:
    """Allow-list ``checkpoint_safe_globals`` for every ``weights_only`` load of this process."""
    torch.serialization.add_safe_globals(checkpoint_safe_globals())


def fsync_dir(path: str) -> None:
    """Make a rename inside directory ``path`` durable (POSIX; a no-op where unsupported)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp: str, path: str) -> None:
    """fsync the complete file ``tmp``, rename it over ``path`` and fsync the directory, so that
    ``path`` holds either its old or its new contents, even after a crash or power loss."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(osp.dirname(osp.abspath(path)))


def temporary_path(path: str) -> str:
    """The hidden sibling of ``path`` that this process writes before renaming it to ``path``."""
    head, tail = osp.split(path)
    return osp.join(head, f".{tail}.{os.getpid()}.tmp")


@contextlib.contextmanager
def naming_full_disk(path: str) -> Iterator[None]:
    """Turn a full disk or quota (ENOSPC, EDQUOT) while writing ``path`` into a ``UserError``
    naming the file and the space left; OSError's own message names neither."""
    try:
        yield
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        directory = osp.dirname(osp.abspath(path))
        free = shutil.disk_usage(directory).free / 2**20
        raise UserError(
            f"cannot write {path}: {os.strerror(error.errno)} ({free:.1f} MiB free in {directory})"
        ) from error


def write_bytes_durably(path: str, data: bytes) -> None:
    """Write ``data`` to ``temporary_path(path)``, then ``replace_durably`` it."""
    tmp = temporary_path(path)
    try:
        with naming_full_disk(path):
            with open(tmp, "wb") as f:
                f.write(data)
            replace_durably(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temporaries(directory: str) -> list[str]:
    """Delete the ``temporary_path`` files in ``directory`` whose writing process is dead (a
    kill mid-write); log and return their paths. A live process's temporary is kept: it may be
    writing it now."""
    removed = []
    for entry in os.scandir(directory) if osp.isdir(directory) else ():
        match = TEMPORARY.match(entry.name)
        if match is None or not entry.is_file() or _pid_alive(int(match["pid"])):
            continue
        size = entry.stat().st_size / 2**20
        try:
            os.remove(entry.path)
        except FileNotFoundError:  # removed meanwhile
            continue
        removed.append(entry.path)
        print_log(
            f"removed {entry.path} ({size:.1f} MiB): the temporary of a write of "
            f"{match['name']} that process {match['pid']} did not finish",
            logger="current",
            level=logging.WARNING,
        )
    return removed


def read_checkpoint(path: str, map_location: str | Callable | None = "cpu") -> dict:
    """The checkpoint at ``path`` (a file or any location mmengine reads), a file loaded with
    ``weights_only=True``. A missing, truncated or damaged file, or one holding objects outside
    the allow-list, is a ``CheckpointError`` naming the file; torch's own messages do not."""
    local = osp.expanduser(path)
    try:
        if osp.isfile(local):  # explicit: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD changes the default
            checkpoint = torch.load(local, map_location=map_location, weights_only=True)
        else:  # a URL, or a missing file that mmengine's loader names
            checkpoint = _load_checkpoint(path, map_location=map_location)
    except FileNotFoundError as error:
        raise CheckpointError(f"checkpoint {path}: no such file") from error
    except Exception as error:  # torch's reader: RuntimeError, EOFError, UnpicklingError, ...
        unpickler = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
        detail = unpickler[1] if unpickler else str(error).split(". ")[0]
        if unpickler is not None and "global" in detail:
            raise CheckpointError(
                f"checkpoint {path} is refused: it holds objects outside the weights_only "
                f"allow-list ({detail.split(' was not an allowed global')[0]})"
            ) from error
        raise CheckpointError(
            f"cannot read checkpoint {path} (truncated, damaged or not a torch file?): "
            f"{type(error).__name__}{': ' + detail if detail else ''}"
        ) from error
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(checkpoint).__name__}, not a dict of tensors"
        )
    return checkpoint


def _listing(keys: list[str]) -> str:
    return ", ".join(keys[:SHOWN_KEYS]) + (", ..." if len(keys) > SHOWN_KEYS else "")


def _shape(value: object) -> list[int]:
    return list(getattr(value, "shape", ()))


def check_state_dict_fits(
    expected: Mapping[str, object],
    found: Mapping[str, object],
    *,
    checkpoint: str,
    config: str | None = None,
    allow_unexpected: bool = False,
) -> None:
    """Raise a one-line ``CheckpointError`` when the checkpoint's state dict ``found`` differs
    from the model's ``expected`` in shapes, missing keys or (unless ``allow_unexpected``) keys
    the model lacks, naming the first few of each. Loading with ``strict=False`` instead logs one
    line per difference and evaluates a model that is mostly its random initialisation."""
    differ = [
        f"{key} (checkpoint {_shape(found[key])} vs model {_shape(value)})"
        for key, value in expected.items()
        if key in found and _shape(found[key]) != _shape(value)
    ]
    missing = [key for key in expected if key not in found]
    unexpected = [] if allow_unexpected else [key for key in found if key not in expected]
    parts = []
    if differ:
        parts.append(f"{len(differ)} entries differ in shape, first: {_listing(differ)}")
    if missing:
        parts.append(
            f"{len(missing)} model entries missing from the checkpoint: {_listing(missing)}"
        )
    if unexpected:
        parts.append(f"{len(unexpected)} entries the model lacks: {_listing(unexpected)}")
    if parts:
        target = f"config {config}" if config else "the model"
        raise CheckpointError(f"checkpoint {checkpoint} does not fit {target}: {'; '.join(parts)}")


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` (same arguments) in crash-safe order.

    mmengine deletes the outdated checkpoint (``max_keep_ckpts``) before writing the new one and
    rewrites ``last_checkpoint`` in place (truncate, then write); a kill in between leaves no
    checkpoint, or an empty pointer that resume then fails on. Here the new checkpoint is written
    first (atomically by ``MTLRunner.save_checkpoint``), ``last_checkpoint`` is replaced
    atomically, and only then is the outdated checkpoint deleted. ``MTLRunner`` uses this hook in
    place of ``CheckpointHook``.
    """

    def _save_checkpoint_with_step(self, runner: Runner, step: int, meta: dict) -> None:
        outdated = None
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info("keep_ckpt_ids", list(self.keep_ckpt_ids))

        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info("last_ckpt", self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir,
            filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args,
        )
        if not is_main_process():
            return
        write_bytes_durably(osp.join(runner.work_dir, LAST_CHECKPOINT), self.last_ckpt.encode())
        if outdated is not None:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(outdated))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # DeepSpeed checkpoints are directories
                self.file_backend.rmtree(path)
