"""Start-up checks of a config, run before any runner is built, so that a wrong task name, a
class count that disagrees with the dataset, a task the data lacks, an unknown balancer or a
schedule that cannot train fails in seconds with a message that names the config key, instead of
deep inside the first iteration (or, for ``train_cfg.max_iters=0``, not at all).

The model config is the multi-task one: ``model.heads`` maps task names to head configs and
``model.backbone.branches`` maps group names to lists of tasks (the registered backbone's default
when the config leaves it out).
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import os
from collections.abc import Iterator, Mapping, Sequence
from numbers import Real

from mmengine.config import Config

from adperception.errors import UserError
from adperception.registry import BALANCERS, DATASETS, MODELS
from adperception.tasks.base import default_branches, get_task, task_names


class ConfigError(UserError, ValueError):
    """A config that cannot train or test; the message names every problem and its key path."""


def load_config(path: str | os.PathLike) -> Config:
    """``Config.fromfile``; a missing file or a syntax error is a ``ConfigError`` naming the file
    (and line).

    mmengine parses configs partly without their names, so a syntax error would read
    ``File "<unknown>", line 2``; the file and its ``_base_`` files are parsed here first.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such config file")
    try:
        _parse_python_configs(path)
        return Config.fromfile(path)
    except FileNotFoundError as error:  # a base file; mmengine's message names it
        raise ConfigError(f"{path}: {error}") from error
    except SyntaxError as error:  # also an imported module's
        if error.lineno is None:  # mmengine's own: its message names file and line
            raise ConfigError(error.msg) from error
        where = f"{error.filename}, line {error.lineno}"
        raise ConfigError(f"{where}: syntax error: {error.msg}") from error


def _parse_python_configs(path: str, seen: frozenset[str] = frozenset()) -> None:
    """Parse the Python config ``path`` and the local files its ``_base_`` lists, each under its
    own name, so that a ``SyntaxError`` says which file."""
    if not path.endswith(".py") or path in seen:
        return
    with open(path, encoding="utf-8") as file:
        tree = ast.parse(file.read(), filename=path)
    for node in tree.body:
        names = [t.id for t in getattr(node, "targets", ()) if isinstance(t, ast.Name)]
        if "_base_" not in names:
            continue
        with contextlib.suppress(ValueError, TypeError):  # computed: for mmengine
            bases = ast.literal_eval(node.value)
            for base in [bases] if isinstance(bases, str) else bases:
                base_path = os.path.join(os.path.dirname(path), base)
                if "::" not in base and os.path.isfile(base_path):
                    _parse_python_configs(base_path, seen | {path})


def validate_config(
    cfg: Mapping,
    *,
    dataloaders: Sequence[str] = ("train_dataloader",),
    evaluation: bool = False,
) -> None:
    """Check ``cfg``'s tasks and, for each of ``dataloaders`` present in it, that its dataset
    provides every task of ``model.heads`` with the heads' class counts. With ``evaluation``
    (tools/test.py) a dataset may lack some of the model's tasks: a model trained on several
    datasets is evaluated on each for the tasks it labels.

    Raises ``ConfigError`` listing every problem; dataset files that cannot be read raise the
    dataset's own error.
    """
    model = cfg.get("model") or {}
    validate_model_tasks(model)
    validate_balancer(model)
    heads = model.get("heads") or {}
    if not heads:
        return
    problems = []
    for loader in dataloaders:
        if cfg.get(loader) is None:
            continue
        leaves = list(dataset_configs(cfg[loader]["dataset"], f"{loader}.dataset"))
        if len(leaves) == 1:
            problems += dataset_problems(
                heads, leaves[0][1], leaves[0][0], require_tasks=not evaluation
            )
        else:
            problems += mixed_dataset_problems(heads, leaves, f"{loader}.dataset")
    if problems:
        raise ConfigError("\n".join(problems))


def validate_model_tasks(model: Mapping, *, key: str = "model") -> None:
    """Check that every task in ``model.heads`` and ``model.backbone.branches`` is one of
    registered task and that every head's task has a branch; raise ``ConfigError`` otherwise."""
    registered = task_names()
    known = ", ".join(registered)
    heads = model.get("heads") or {}
    problems = [
        f"{key}.heads.{task}: unknown task '{task}' (tasks are {known})"
        for task in heads
        if task not in registered
    ]
    branches, branches_key = backbone_branches(model.get("backbone") or {}, f"{key}.backbone")
    if branches is not None:
        problems += [
            f"{branches_key}.{group}: unknown task '{task}' (tasks are {known})"
            for group, tasks in branches.items()
            for task in tasks
            if task not in registered
        ]
        branched = {task for tasks in branches.values() for task in tasks}
        listing = ", ".join(f"{group}={list(tasks)}" for group, tasks in branches.items())
        problems += [
            f"{key}.heads.{task}: task '{task}' has no branch in {branches_key} ({listing})"
            for task in heads
            if task in registered and task not in branched
        ]
    if problems:
        raise ConfigError("\n".join(problems))


def validate_balancer(model: Mapping, *, key: str = "model") -> None:
    """Check that ``model.balancer`` and its ``weighting`` name registered balancers; the model
    builds them only deep inside its constructor, where a wrong name is a bare KeyError."""
    balancer = model.get("balancer")
    if not isinstance(balancer, Mapping):
        return
    entries = [(f"{key}.balancer", balancer)]
    if isinstance(balancer.get("weighting"), Mapping):
        entries.append((f"{key}.balancer.weighting", balancer["weighting"]))
    BALANCERS.import_from_location()
    choices = ", ".join(sorted(BALANCERS.module_dict))
    problems = []
    for path, cfg in entries:
        name = cfg.get("type")
        if name is None:
            problems.append(f"{path}.type: missing (registered balancers: {choices})")
        elif isinstance(name, str) and BALANCERS.get(name) is None:
            problems.append(f"{path}.type: unknown balancer '{name}' (registered: {choices})")
    if problems:
        raise ConfigError("\n".join(problems))


def validate_training(cfg: Mapping) -> None:
    """Check what only training uses: every ``lr`` under ``optim_wrapper`` is a number >= 0, and
    ``train_cfg.max_iters`` / ``max_epochs`` are positive (0 would exit 0 having trained
    nothing). Raises ``ConfigError`` listing every problem."""
    problems = [
        f"{path} = {value!r}: a learning rate must be a number >= 0"
        for path, value in find_key(cfg.get("optim_wrapper") or {}, "lr", "optim_wrapper")
        if isinstance(value, bool) or not isinstance(value, Real) or value < 0
    ]
    train_cfg = cfg.get("train_cfg") or {}
    for name in ("max_iters", "max_epochs"):
        value = train_cfg.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            problems.append(f"train_cfg.{name} = {value!r}: must be a positive integer")
    if problems:
        raise ConfigError("\n".join(problems))


def backbone_branches(backbone: Mapping, key: str) -> tuple[Mapping | None, str]:
    """The backbone's ``branches`` and where they come from: the config, else the registered
    class's default; ``None`` for a backbone without branches."""
    if "branches" in backbone:
        return backbone["branches"], f"{key}.branches"
    cls = MODELS.get(backbone["type"]) if isinstance(backbone.get("type"), str) else None
    if cls is None:
        return None, key
    default = inspect.signature(cls).parameters.get("branches")
    if default is None or default.default is inspect.Parameter.empty:
        return None, key
    branches = default_branches() if default.default is None else default.default
    return branches, f"{key}.branches (default of {backbone['type']})"


def dataset_configs(dataset: Mapping, key: str) -> Iterator[tuple[str, Mapping]]:
    """The leaf dataset configs under dataset wrappers (``dataset=``, ``datasets=[...]``), each
    with its key path."""
    if "dataset" in dataset:
        yield from dataset_configs(dataset["dataset"], f"{key}.dataset")
    elif "datasets" in dataset:
        for i, inner in enumerate(dataset["datasets"]):
            yield from dataset_configs(inner, f"{key}.datasets[{i}]")
    else:
        yield key, dataset


def dataset_problems(
    heads: Mapping, dataset_cfg: Mapping, key: str, *, require_tasks: bool = True
) -> list[str]:
    """Class counts and (with ``require_tasks``) tasks of ``heads`` that the dataset built from
    ``dataset_cfg`` (at config path ``key``; lazily: metainfo needs no files, ``tasks`` scans
    them) disagrees with."""
    dataset = DATASETS.build({"_scope_": "adperception", **dataset_cfg, "lazy_init": True})
    dataset_type = dataset_cfg["type"]
    provided = getattr(dataset, "tasks", None)
    problems = []
    if provided is not None and require_tasks:
        problems += [
            f"model.heads.{task}: {key} ({dataset_type}, data_root '{dataset.data_root}') does "
            f"not provide task '{task}' (it provides {', '.join(provided) or 'none'})"
            for task in heads
            if task in task_names() and task not in provided
        ]
    for task in heads:
        metainfo_key = get_task(task).class_key if task in task_names() else None
        lacking = provided is not None and task not in provided
        if metainfo_key is None or metainfo_key not in dataset.metainfo or lacking:
            continue
        expected = len(dataset.metainfo[metainfo_key])
        for path, value in find_key(heads[task], "num_classes", f"model.heads.{task}"):
            if value != expected:
                problems.append(
                    f"{path} = {value} but {key} ({dataset_type}) has {expected} classes in "
                    f"metainfo['{metainfo_key}']"
                )
    return problems


def mixed_dataset_problems(
    heads: Mapping, leaves: Sequence[tuple[str, Mapping]], key: str
) -> list[str]:
    """The problems of a loader that mixes datasets (partial labels): each task of ``heads``
    needs labels in at least one of them, and no dataset may have more classes than its head
    (the first dataset's class names are the concatenation's; the others' ids must be a prefix
    of them, e.g. Cityscapes' 8 detection classes within BDD100K's 10)."""
    problems, provided = [], set()
    for leaf_key, dataset_cfg in leaves:
        dataset = DATASETS.build({"_scope_": "adperception", **dataset_cfg, "lazy_init": True})
        tasks = set(getattr(dataset, "tasks", task_names()))
        provided |= tasks
        for task in heads:
            metainfo_key = get_task(task).class_key if task in task_names() else None
            if metainfo_key is None or metainfo_key not in dataset.metainfo or task not in tasks:
                continue
            count = len(dataset.metainfo[metainfo_key])
            for path, value in find_key(heads[task], "num_classes", f"model.heads.{task}"):
                if value < count:
                    problems.append(
                        f"{path} = {value} but {leaf_key} ({dataset_cfg['type']}) has {count} "
                        f"classes in metainfo['{metainfo_key}']"
                    )
    problems += [
        f"model.heads.{task}: no dataset of {key} provides task '{task}' (together they provide "
        f"{', '.join(t for t in task_names() if t in provided) or 'none'})"
        for task in heads
        if task in task_names() and task not in provided
    ]
    return problems


def find_key(node: object, name: str, path: str) -> Iterator[tuple[str, object]]:
    """Every ``name`` key in nested dicts and lists, with its dotted path."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key == name:
                yield f"{path}.{key}", value
            else:
                yield from find_key(value, name, f"{path}.{key}")
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from find_key(value, name, f"{path}[{i}]")
