"""The project's mmengine Runner and what ``tools/train.py`` and ``tools/test.py`` do to a config
before handing it to the runner."""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import importlib
import json
import os
import os.path as osp
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.dist import is_distributed, master_only
from mmengine.fileio import LocalBackend, get_file_backend
from mmengine.hooks import CheckpointHook
from mmengine.model import is_model_wrapper
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.registry import MODEL_WRAPPERS, init_default_scope
from mmengine.runner import Runner
from mmengine.runner.checkpoint import _load_checkpoint_to_model

from adperception.engine.checkpoint import (
    AtomicCheckpointHook,
    check_state_dict_fits,
    install_checkpoint_allowlist,
    naming_full_disk,
    read_checkpoint,
    remove_stale_temporaries,
    replace_durably,
    temporary_path,
    write_bytes_durably,
)
from adperception.engine.hooks import RNGStateHook
from adperception.engine.validate import ConfigError, UserError
from adperception.registry import OPTIM_WRAPPERS, RUNNERS

#: Packages whose import registers the datasets, transforms, models and metrics (this package
#: registers the runner and hooks).
REGISTERING_PACKAGES = (
    "adperception.data",
    "adperception.models",
    "adperception.evaluation",
)
#: How configs may name mmengine's CheckpointHook; MTLRunner runs AtomicCheckpointHook instead.
CHECKPOINT_HOOK_TYPES = ("CheckpointHook", "mmengine.CheckpointHook", CheckpointHook)
#: The file in the work dir that a training run holds locked (``hold_work_dir``).
WORK_DIR_LOCK = "train.lock"
#: Where each launcher puts a process's global rank before torch.distributed starts.
RANK_VARIABLES = {"pytorch": "RANK", "slurm": "SLURM_PROCID", "mpi": "OMPI_COMM_WORLD_RANK"}


def setup_runtime() -> None:
    """Make configs resolve in the ``adperception`` scope with every project class registered,
    and let checkpoints load under ``weights_only=True``."""
    init_default_scope("adperception")
    for package in REGISTERING_PACKAGES:
        importlib.import_module(package)
    install_checkpoint_allowlist()


@RUNNERS.register_module()
class MTLRunner(Runner):
    """mmengine's Runner with checkpoints that a kill at any moment cannot corrupt.

    ``save_checkpoint`` writes to a temporary file in the same directory, fsyncs it and renames
    it over the target, so a checkpoint file is always complete; the checkpoint hook is
    ``AtomicCheckpointHook``, which replaces ``last_checkpoint`` atomically after the new file
    is in place and deletes outdated checkpoints only then. Configs select it with
    ``runner_type = "MTLRunner"`` (the tools' default). ``RNGStateHook`` is a default hook too.

    Checkpoints are read by ``load_checkpoint``: a damaged file is an error naming it, no text
    from a checkpoint is ever evaluated, and ``test`` and ``val`` refuse one that does not fit
    the model.

    Without CUDA, ``--launcher pytorch`` trains on CPU processes: mmengine's ``init_dist`` and
    its DDP wrapper both pin a CUDA device, so here the process group is initialised with
    ``env_cfg.dist_cfg`` (backend gloo, set by the tools) and DDP gets no ``device_ids``.
    """

    #: Set by ``test`` and ``val``: evaluating a checkpoint that does not fit measures noise.
    _loading_for_evaluation = False
    _resuming = False

    def setup_env(self, env_cfg: dict) -> None:
        if self.distributed and not is_distributed() and not torch.cuda.is_available():
            init_cpu_process_group(self.launcher, env_cfg.get("dist_cfg", {}))
        super().setup_env(env_cfg)

    def wrap_model(self, model_wrapper_cfg: dict | None, model: nn.Module) -> nn.Module:
        if not self.distributed or is_model_wrapper(model):
            return super().wrap_model(model_wrapper_cfg, model)
        wrapper_cfg = dict(
            type="MTLDistributedDataParallel",
            broadcast_buffers=False,
            find_unused_parameters=self.cfg.get("find_unused_parameters", False),
        )
        wrapper_cfg.update(model_wrapper_cfg or {})
        if torch.cuda.is_available():
            return super().wrap_model(wrapper_cfg, model)
        return MODEL_WRAPPERS.build(wrapper_cfg, default_args=dict(module=model.to("cpu")))

    def register_default_hooks(self, hooks: dict | None = None) -> None:
        hooks = dict(hooks or {})
        checkpoint = hooks.get("checkpoint", dict(type="CheckpointHook", interval=1))
        if isinstance(checkpoint, Mapping) and checkpoint.get("type") in CHECKPOINT_HOOK_TYPES:
            hooks["checkpoint"] = {**checkpoint, "type": AtomicCheckpointHook}
        # Resumed runs continue bit for bit only with the torch RNG state in the checkpoint.
        hooks.setdefault("rng_state", dict(type=RNGStateHook))
        super().register_default_hooks(hooks)

    def test(self) -> dict:
        self._loading_for_evaluation = True
        return super().test()

    def val(self) -> dict:
        self._loading_for_evaluation = True
        return super().val()

    def resume(self, *args, **kwargs) -> None:
        self._resuming = True
        try:
            super().resume(*args, **kwargs)
        finally:
            self._resuming = False

    def load_checkpoint(
        self,
        filename: str,
        map_location: str | Callable = "cpu",
        strict: bool = False,
        revise_keys: Sequence[tuple[str, str]] = ((r"^module\.", ""),),
    ) -> dict:
        """mmengine's ``load_checkpoint`` (same arguments and hooks; ``resume`` and ``load_from``
        both come here), reading with ``read_checkpoint`` and dropping ``meta['config']``
        unread: mmengine's ``resume`` executes that string as Python (``Config.fromstring``) to
        compare GPU counts, and a checkpoint that passes the ``weights_only`` allow-list can
        still hold code there. mmengine writes its config as ``meta['cfg']`` and never reads it
        back, so the dropped check only ever ran for foreign checkpoints. Before ``test`` and
        ``val``, a checkpoint that does not fit the model raises ``CheckpointError``.

        ``load_from`` for training (fine-tuning, not ``--resume``) starts the balancer and the
        gradient diagnostics fresh: the checkpoint's step count, escalation, task weights and
        loss history belong to the run that wrote it, and its iteration count restarts here."""
        checkpoint = read_checkpoint(filename, map_location)
        meta = checkpoint.get("meta")
        if isinstance(meta, dict) and meta.pop("config", None) is not None:
            self.logger.warning(
                f"{filename}: meta['config'] ignored; text from a checkpoint is never evaluated"
            )
        if not self._resuming and not self._loading_for_evaluation:
            self._start_training_state_fresh(filename, checkpoint)
        self.call_hook("after_load_checkpoint", checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        if self._loading_for_evaluation:
            found = checkpoint.get("state_dict", checkpoint)
            for pattern, replacement in revise_keys:
                found = {re.sub(pattern, replacement, key): value for key, value in found.items()}
            check_state_dict_fits(
                model.state_dict(), found, checkpoint=filename, config=self.cfg.filename
            )
        checkpoint = _load_checkpoint_to_model(model, checkpoint, strict, revise_keys=revise_keys)
        self._has_loaded = True
        self.logger.info(f"Load checkpoint from {filename}")
        return checkpoint

    def _start_training_state_fresh(self, filename: str, checkpoint: dict) -> None:
        state = checkpoint.get("state_dict", checkpoint)
        dropped = [key for key in state if re.match(r"^(module\.)?balancer\.", key)]
        for key in dropped:
            del state[key]
        had_diagnostics = checkpoint.pop("diagnostics", None) is not None
        if dropped or had_diagnostics:
            self.logger.info(
                f"load_from {filename}: fine-tuning starts the balancer fresh ({len(dropped)} "
                "balancer entries of the checkpoint not loaded: step count, escalation, task "
                "weights"
                + (", and the gradient diagnostics' loss history" if had_diagnostics else "")
                + "); use --resume to continue them"
            )

    @master_only
    def save_checkpoint(
        self,
        out_dir: str,
        filename: str,
        file_client_args: dict | None = None,
        save_optimizer: bool = True,
        save_param_scheduler: bool = True,
        meta: dict | None = None,
        by_epoch: bool = True,
        backend_args: dict | None = None,
    ) -> None:
        kwargs = dict(
            save_optimizer=save_optimizer,
            save_param_scheduler=save_param_scheduler,
            meta=meta,
            by_epoch=by_epoch,
        )
        local = file_client_args is None and isinstance(
            get_file_backend(out_dir, backend_args=backend_args), LocalBackend
        )
        if not local:  # object stores have their own write semantics
            super().save_checkpoint(
                out_dir, filename, file_client_args, backend_args=backend_args, **kwargs
            )
            return
        tmp_name = temporary_path(filename)
        tmp_path, path = osp.join(out_dir, tmp_name), osp.join(out_dir, filename)
        try:
            with naming_full_disk(path):
                super().save_checkpoint(out_dir, tmp_name, backend_args=backend_args, **kwargs)
                replace_durably(tmp_path, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp_path)
            raise


def init_cpu_process_group(launcher: str, dist_cfg: Mapping) -> None:
    """``torch.distributed`` on CPU processes started by torchrun (``launcher="pytorch"``)."""
    if launcher != "pytorch":
        raise RuntimeError(
            f"launcher {launcher!r} needs CUDA; on CPU start the processes with torchrun "
            "(tools/dist_train.sh, --launcher pytorch)"
        )
    kwargs = {key: value for key, value in dist_cfg.items() if key != "init_backend"}
    if kwargs.get("timeout") is not None:
        kwargs["timeout"] = datetime.timedelta(seconds=kwargs["timeout"])
    torch.distributed.init_process_group(**{"backend": "gloo", **kwargs})


def build_runner(cfg: Config) -> Runner:
    """The runner of ``cfg.runner_type``, ``MTLRunner`` when the config names none."""
    cfg.setdefault("runner_type", "MTLRunner")
    return RUNNERS.build(cfg)


def set_work_dir(cfg: Config, work_dir: str | None) -> None:
    """``work_dir``, else the config's, else ``./work_dirs/{config file stem}``."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("./work_dirs", osp.splitext(osp.basename(cfg.filename))[0])


@contextlib.contextmanager
def hold_work_dir(work_dir: str, launcher: str = "none") -> Iterator[None]:
    """Hold ``work_dir`` for one training run, so that a second run into it fails at start-up
    naming the first one's pid, instead of interleaving its log and overwriting its checkpoints.

    The launching process (global rank 0, read from the launcher's environment: the other ranks
    of the same run share the dir) takes an exclusive ``flock`` on ``work_dir/train.lock`` and
    writes its pid there. The kernel drops the lock when the process exits, however it exits,
    so the file a dead run leaves blocks nothing. Holding the lock, it deletes the temporaries
    that killed checkpoint writes left (``remove_stale_temporaries``).
    """
    variable = RANK_VARIABLES.get(launcher)
    if variable is not None and int(os.environ.get(variable, "0")) != 0:
        yield
        return
    os.makedirs(work_dir, exist_ok=True)
    path = osp.join(work_dir, WORK_DIR_LOCK)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UserError(
                f"work dir {work_dir} is in use by another training run (pid {holder}, which "
                f"holds {path}); wait for it to end or choose another --work-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        remove_stale_temporaries(work_dir)
        yield
    finally:
        os.close(fd)


def set_resume(cfg: Config, resume: str | None) -> None:
    """``resume="auto"``: resume from ``work_dir/last_checkpoint``; a path: resume from it."""
    if resume == "auto":
        cfg.resume = True
        cfg.load_from = None
    elif resume is not None:
        cfg.resume = True
        cfg.load_from = resume


def enable_amp(cfg: Config, allow_cpu: bool = False) -> bool:
    """Mixed precision with dynamic loss scaling (unless the config sets ``loss_scale``).

    ``OptimWrapper`` becomes mmengine's ``AmpOptimWrapper``; another wrapper class names its
    registered AMP counterpart in a class attribute ``amp_variant``; a wrapper that already is
    an ``AmpOptimWrapper`` is kept. Any other wrapper raises ``ConfigError``. Without CUDA this
    warns and leaves the config alone (returns False), unless ``allow_cpu`` (CPU autocast, which
    ``MTLAmpOptimWrapper`` supports: the benchmarks' dry runs).
    """
    if not torch.cuda.is_available() and not allow_cpu:
        warnings.warn("--amp ignored: CUDA is not available", stacklevel=2)
        return False
    wrapper_type = cfg.optim_wrapper.get("type", "OptimWrapper")
    wrapper = OPTIM_WRAPPERS.get(wrapper_type) if isinstance(wrapper_type, str) else wrapper_type
    variant = getattr(wrapper, "amp_variant", None)
    if wrapper is OptimWrapper:
        variant = "AmpOptimWrapper"
    if variant is not None:
        cfg.optim_wrapper.type = variant
    elif not (isinstance(wrapper, type) and issubclass(wrapper, AmpOptimWrapper)):
        raise ConfigError(
            f"--amp: optim_wrapper.type {wrapper_type!r} is no AmpOptimWrapper and names no "
            "registered AMP counterpart in its class attribute `amp_variant`"
        )
    cfg.optim_wrapper.setdefault("loss_scale", "dynamic")
    return True


def select_dist_backend(cfg: Config) -> None:
    """Use gloo where the config asks for nccl and CUDA is not available (CPU training)."""
    dist_cfg = cfg.get("env_cfg", {}).get("dist_cfg")
    if dist_cfg is not None and dist_cfg.get("backend") == "nccl" and not torch.cuda.is_available():
        dist_cfg.backend = "gloo"


def _to_builtin(value: object) -> object:
    if isinstance(value, (np.generic, torch.Tensor)):
        return value.item()
    raise TypeError(f"metric value of type {type(value).__name__} is not JSON serialisable")


def dump_metrics(metrics: Mapping[str, object], path: str) -> None:
    """Write ``metrics`` (numbers, numpy or 0-d tensor scalars) to ``path`` as a JSON object."""
    text = json.dumps(dict(metrics), indent=2, sort_keys=True, default=_to_builtin)
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    write_bytes_durably(path, (text + "\n").encode())


def shutdown_dist() -> None:
    """Free the process groups while the interpreter is still fully alive.

    A gloo process group left to interpreter shutdown keeps its worker threads; one that drops
    the last reference to a finished work item then takes the GIL while Python finalises, and
    the rank dies with "terminate called without an active exception" (SIGABRT) after training
    finished, so torchrun reports the whole job failed (1 run in 3 on CPU, 2 ranks). The DDP
    wrapper holds the group too, and the runner's reference cycles keep it alive past
    ``destroy_process_group``: collecting them first lets the group's destructor join its
    threads here.
    """
    import gc

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
        gc.collect()
