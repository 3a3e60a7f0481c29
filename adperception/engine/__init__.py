"""Training glue: the runner, crash-safe checkpoints that load under ``weights_only=True``, the
start-up checks of a config, and ``UserError``, the mistakes the tools report in one line.

Importing this package registers its runner, DDP wrapper, hooks and optim wrappers (RUNNERS,
MODEL_WRAPPERS, HOOKS, OPTIM_WRAPPERS name it as their location).
"""

from adperception.engine import ddp, hooks, optim_wrapper  # noqa: F401  (registration)
from adperception.engine.checkpoint import (
    AtomicCheckpointHook,
    CheckpointError,
    check_state_dict_fits,
    checkpoint_safe_globals,
    install_checkpoint_allowlist,
    read_checkpoint,
)
from adperception.engine.runner import (
    MTLRunner,
    build_runner,
    dump_metrics,
    enable_amp,
    hold_work_dir,
    select_dist_backend,
    set_resume,
    set_work_dir,
    setup_runtime,
    shutdown_dist,
)
from adperception.engine.validate import (
    ConfigError,
    UserError,
    load_config,
    validate_config,
    validate_model_tasks,
    validate_training,
)

__all__ = [
    "AtomicCheckpointHook",
    "CheckpointError",
    "ConfigError",
    "MTLRunner",
    "UserError",
    "build_runner",
    "check_state_dict_fits",
    "checkpoint_safe_globals",
    "dump_metrics",
    "enable_amp",
    "hold_work_dir",
    "install_checkpoint_allowlist",
    "load_config",
    "read_checkpoint",
    "select_dist_backend",
    "set_resume",
    "set_work_dir",
    "setup_runtime",
    "shutdown_dist",
    "validate_config",
    "validate_model_tasks",
    "validate_training",
]
