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

Writing: see ``AtomicCheckpointHook`` and ``adperception.engine.runner.MTLRunner``.
"""

from __future__ import annotations

import contextlib
import os
import os.path as osp
import pickle
from collections.abc import Callable

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.logging import HistoryBuffer
from mmengine.runner import Runner

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


def write_bytes_durably(path: str, data: bytes) -> None:
    """Write ``data`` to a temporary sibling of ``path``, then ``replace_durably`` it."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        replace_durably(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


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
