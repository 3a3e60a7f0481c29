"""``tools/benchmark.py profile``: where one training step of a multi-task model goes.

The whole step (``model.train_step``: preprocessing, the forward of every part, the balancer,
the backward, the optimizer) is set against its parts, each run alone on the same batch: the
preprocessing; the backbone's forward and backward; each sharing group's neck and each task's
head, forward, loss and backward, from detached copies of their inputs; and the optimizer
step. Their sum is what the step would cost with nothing in between; the step's excess over
it is the balancer, the framework and any waste. Within the detector the DETR encoder's and
decoder's forwards and the Hungarian matching are timed as they run; the batch's loading
(the config's train pipeline, in this process) is timed apart, since training loads it in a
dataloader worker. One more step runs under ``torch.profiler`` for the operators that cost
most.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import Tensor, nn

GOAL_STEP_OVER_PARTS = 1.3  # issue 13 §4: the step within 1.3× the sum of its parts


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _tensors(tree) -> list[Tensor]:
    """Every tensor in a nest of dicts, lists and tuples, in order."""
    if isinstance(tree, Tensor):
        return [tree]
    if isinstance(tree, dict):
        tree = list(tree.values())
    if isinstance(tree, list | tuple):
        return [t for item in tree for t in _tensors(item)]
    return []


def _detached(tensors: list[Tensor]) -> list[Tensor]:
    """Inputs for a part run alone: detached copies that require grad, so the part's backward
    stops at its own input, as it would hand its gradient on in the whole step."""
    return [t.detach().requires_grad_() for t in tensors]


def _backward(outputs) -> None:
    """The backward of a part from unit cotangents on each output: the same work whatever
    gradient the parts after it would send."""
    tensors = [t for t in _tensors(outputs) if t.requires_grad]
    torch.autograd.backward(tensors, [torch.ones_like(t) for t in tensors])


class Stopwatch:
    """Seconds per label, one list entry per measured batch."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self._pending: dict[str, float] = defaultdict(float)

    @contextmanager
    def time(self, label: str) -> Iterator[None]:
        _sync()
        start = time.perf_counter()
        yield
        _sync()
        self._pending[label] += time.perf_counter() - start

    def add(self, label: str, seconds: float) -> None:
        self._pending[label] += seconds

    def end_batch(self) -> None:
        """Close one batch's measurement: every label timed in it gets one entry."""
        for label, seconds in self._pending.items():
            self.seconds[label].append(seconds)
        self._pending.clear()

    def medians(self) -> dict[str, float]:
        return {label: statistics.median(v) for label, v in self.seconds.items()}


@contextmanager
def timed_forwards(watch: Stopwatch, modules: dict[str, nn.Module]) -> Iterator[None]:
    """Adds each module's forward time, under its label, while the context is open."""
    starts: dict[str, float] = {}
    handles = []
    for label, module in modules.items():

        def pre(_module, _args, label=label) -> None:
            _sync()
            starts[label] = time.perf_counter()

        def post(_module, _args, _output, label=label) -> None:
            _sync()
            watch.add(label, time.perf_counter() - starts.pop(label))

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def timed_calls(watch: Stopwatch, label: str, owner: object, name: str) -> Iterator[None]:
    """Adds the time of every call of ``owner.name`` (an instance's method) under ``label``."""
    original: Callable = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            watch.add(label, time.perf_counter() - start)

    setattr(owner, name, wrapper)
    try:
        yield
    finally:
        delattr(owner, name)  # the class's method shows through again


@contextmanager
def detector_timers(watch: Stopwatch, model: nn.Module) -> Iterator[None]:
    """The DETR encoder's and decoder's forwards and the Hungarian matching of every head that
    holds an mmdet detection transformer."""
    modules: dict[str, nn.Module] = {}
    with ExitStack() as stack:
        for task, head in model.heads.items():
            detector = getattr(head, "detector", None)
            for part in ("encoder", "decoder"):
                if isinstance(getattr(detector, part, None), nn.Module):
                    modules[f"{task}.{part}_forward"] = getattr(detector, part)
            assigner = getattr(getattr(detector, "bbox_head", None), "assigner", None)
            if assigner is not None:
                stack.enter_context(timed_calls(watch, f"{task}.matching", assigner, "assign"))
        stack.enter_context(timed_forwards(watch, modules))
        yield


def run_parts(model: nn.Module, batch: dict, wrapper, watch: Stopwatch) -> None:
    """The step's parts, each alone, timed into ``watch``."""
    model.zero_grad(set_to_none=True)
    with watch.time("preprocess"):
        data = model.data_preprocessor(copy.copy(batch), True)
    inputs, samples = data["inputs"], data["data_samples"]
    with watch.time("backbone"):
        branches = model.backbone(inputs)
        _backward(branches)
    for group, neck in model.necks.items():
        feats = _detached(list(branches[group]))
        with watch.time(f"neck.{group}"):
            out = neck(tuple(feats))
            _backward(out)
        for task, head in model.heads.items():
            if model.task_groups[task] != group:
                continue
            head_in = _detached(list(out))
            with watch.time(f"head.{task}"):
                terms = head.loss(head_in, samples)
                torch.stack([v.sum() for v in terms.values()]).sum().backward()
    with watch.time("optimizer"):
        wrapper.step()
        wrapper.zero_grad()


def profile_step(model: nn.Module, batch: dict, wrapper, top: int) -> list[dict]:
    """The operators one training step spends most on, by their own CPU time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        model.train_step(batch, wrapper)
        _sync()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [
        {
            "op": e.key,
            "calls": e.count,
            "self_cpu_ms": e.self_cpu_time_total / 1e3,
            "share": e.self_cpu_time_total / total if total else 0.0,
        }
        for e in events[:top]
    ]


def _loader(cfg, batch: int, data_root: str | None):
    from mmengine.runner import Runner

    loader_cfg = copy.deepcopy(cfg.train_dataloader)
    loader_cfg.update(batch_size=batch, num_workers=0, persistent_workers=False)
    if data_root is not None:
        loader_cfg.dataset.data_root = data_root
    return Runner.build_dataloader(loader_cfg, seed=0)


def bench_profile(args: argparse.Namespace) -> dict:
    """Where one training step of a config's model goes: the whole step against its parts
    (preprocessing, backbone, each neck, each head's forward, loss and backward, optimizer)
    each measured alone on the same batch, the detector's encoder, decoder and matching within
    it, the batch's loading, and the profiler's costliest operators."""
    from benchmark import _build_trainable

    from adperception.data.formats import DataFileError

    cfg, model, wrapper = _build_trainable(args.config)
    batch_size = args.batch or cfg.train_dataloader.batch_size
    for attr in ("backbone", "necks", "heads", "task_groups"):
        if not hasattr(model, attr):
            raise SystemExit(f"{args.config}: profile needs a MultiTaskModel, not {type(model)}")
    try:
        loader = iter(_loader(cfg, batch_size, args.data_root))
        batches, load_s = [], []
        for _ in range(args.iters + 1):
            start = time.perf_counter()
            batches.append(next(loader))
            load_s.append(time.perf_counter() - start)
    except (DataFileError, FileNotFoundError, StopIteration) as error:
        root = args.data_root or cfg.train_dataloader.dataset.get("data_root")
        raise SystemExit(
            f"{args.config}: cannot load {args.iters + 1} training batches of {batch_size} "
            f"from {root} ({error}); `make data` generates the quickstart's SynthDrive, "
            "--data-root points at another copy"
        ) from error
    model.train_step(batches[0], wrapper)  # warm-up: the parameter-task tracing happens here
    run_parts(model, batches[0], wrapper, Stopwatch())
    watch = Stopwatch()
    for batch in batches[1:]:  # step and parts alternate, so a busy machine slows both alike
        with watch.time("step"):
            model.train_step(batch, wrapper)
        with detector_timers(watch, model):
            run_parts(model, batch, wrapper, watch)
        watch.end_batch()
    medians = watch.medians()
    step = medians.pop("step")
    inner = {k: medians.pop(k) for k in list(medians) if "_forward" in k or "matching" in k}
    parts = medians
    total = sum(parts.values())
    height, width = batches[1]["inputs"][0].shape[-2:]
    record = {
        "benchmark": "profile",
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "config": args.config,
        "balancer": type(model.balancer).__name__,
        "batch": batch_size,
        "height": int(height),
        "width": int(width),
        "steps": args.iters,
        "step_s": step,
        "parts_s": parts,
        "sum_of_parts_s": total,
        "step_over_parts": step / total,
        "goal_step_over_parts": GOAL_STEP_OVER_PARTS,
        "within_parts_s": inner,
        "load_s": statistics.median(load_s[1:]),
        "top_ops": profile_step(model, batches[-1], wrapper, args.top),
    }
    lines = [f"{'step':>24}: {step:.3f} s", f"{'sum of parts':>24}: {total:.3f} s"]
    lines += [f"{name:>24}: {s:.3f} s ({s / total:.0%})" for name, s in parts.items()]
    lines += [f"{name:>24}: {s:.3f} s (within its head)" for name, s in inner.items()]
    lines.append(f"step ÷ parts {step / total:.2f} (goal ≤ {GOAL_STEP_OVER_PARTS})")
    print("\n".join(lines), file=sys.stderr)
    return record


def add_arguments(profile: argparse.ArgumentParser) -> None:
    """The ``profile`` subcommand's options."""
    profile.add_argument("--config", default="configs/quickstart.py")
    profile.add_argument("--batch", type=int, help="default: the config's train batch size")
    profile.add_argument("--iters", type=int, default=5, help="measured batches")
    profile.add_argument("--data-root", help="another copy of the config's training data")
    profile.add_argument("--top", type=int, default=15, help="operators listed")
