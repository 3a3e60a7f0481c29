"""Training glue: the runner, crash-safe checkpoints that load under ``weights_only=True``, and
the start-up checks of a config.

Importing this package registers its runner, DDP wrapper, hooks and optim wrappers (RUNNERS,
MODEL_WRAPPERS, HOOKS, OPTIM_WRAPPERS name it as their location).
"""

from adperception.engine import ddp, hooks, optim_wrapper  # noqa: F401  (registration)
from adperception.engine.checkpoint import (
    AtomicCheckpointHook,
    checkpoint_safe_globals,
    install_checkpoint_allowlist,
)
from adperception.engine.runner import (
    MTLRunner,
    build_runner,
    dump_metrics,
    enable_amp,
    select_dist_backend,
    set_resume,
    set_work_dir,
    setup_runtime,
    shutdown_dist,
)
from adperception.engine.validate import ConfigError, validate_config, validate_model_tasks

__all__ = [
    "AtomicCheckpointHook",
    "ConfigError",
    "MTLRunner",
    "build_runner",
    "checkpoint_safe_globals",
    "dump_metrics",
    "enable_amp",
    "install_checkpoint_allowlist",
    "select_dist_backend",
    "set_resume",
    "set_work_dir",
    "setup_runtime",
    "shutdown_dist",
    "validate_config",
    "validate_model_tasks",
]
