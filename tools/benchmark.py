"""Benchmarks; each subcommand prints and optionally writes a JSON record.

python tools/benchmark.py synth [--num 40] [--height 256] [--width 512] [--json FILE]
python tools/benchmark.py train [--config configs/ad_mtl.py] [--height 512] [--width 1024]
                                [--batch 1] [--iters 3] [--amp bfloat16] [--json FILE]
python tools/benchmark.py balancers [--config configs/quickstart.py] [--batch 2] [--iters 8]
                                    [--methods NAME ...] [--peers [PEER ...]] [--json FILE]
python tools/benchmark.py architectures [--configs NAME=CONFIG ...] [--batch 4] [--iters 5]
                                        [--json FILE]
python tools/benchmark.py profile [--config configs/quickstart.py] [--batch N] [--iters 5]
                                  [--data-root DIR] [--json FILE]
python tools/benchmark.py inference [--sizes quick full] [--batches 1 8] [--iters N] [--amp]
                                    [--configs SIZE=CONFIG ...] [--json FILE] [--markdown FILE]
"""

# ruff: noqa: E402  (the environment is set before torch is imported)

from __future__ import annotations

import os

# See tools/train.py: OpenMP threads must not spin while they wait on a shared CPU.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import datetime
import inspect
import json
import math
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from adperception.data.synth import generate_sample
from adperception.data.synth.writer import sample_stem, write_sample

SYNTH_TARGET_PER_CORE = 20.0
ROOT = Path(__file__).resolve().parents[1]


def bench_synth(args: argparse.Namespace) -> dict:
    """SynthDrive samples rendered and written per second on one core (one process)."""
    render_s, write_s = [], []
    with tempfile.TemporaryDirectory() as root:
        generate_sample(args.seed, "train", 0, height=args.height, width=args.width)  # warm-up
        for index in range(args.num):
            start = time.perf_counter()
            scene, frame = generate_sample(
                args.seed, "train", index, height=args.height, width=args.width
            )
            mid = time.perf_counter()
            write_sample(root, "train", sample_stem(index), frame, scene.camera)
            render_s.append(mid - start)
            write_s.append(time.perf_counter() - mid)
        size = sum(f.stat().st_size for f in Path(root).rglob("*") if f.is_file())
    total = sum(render_s) + sum(write_s)
    return {
        "benchmark": "synth",
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cores_available": len(os.sched_getaffinity(0)),
        "height": args.height,
        "width": args.width,
        "samples": args.num,
        "samples_per_s_per_core": args.num / total,
        "target_samples_per_s_per_core": SYNTH_TARGET_PER_CORE,
        "render_ms_median": 1e3 * statistics.median(render_s),
        "write_ms_median": 1e3 * statistics.median(write_s),
        "bytes_per_sample": size / args.num,
    }


def _synth_batch(batch: int, height: int, width: int) -> dict:
    """A packed training batch of SynthDrive frames rendered at ``height`` × ``width``."""
    from mmengine.dataset import pseudo_collate

    from adperception.data.datasets.cityscapes import TRAIN_ID_LUT, instance_boxes
    from adperception.data.transforms import PackMTLInputs

    samples = []
    for index in range(batch):
        _, frame = generate_sample(0, "train", index, height=height, width=width)
        boxes, labels = instance_boxes(frame.instance_ids)
        samples.append(
            PackMTLInputs()(
                dict(
                    img=frame.image,
                    gt_seg_map=TRAIN_ID_LUT[frame.label_ids],
                    gt_depth_map=frame.depth,
                    gt_normals_map=frame.normals,
                    gt_bboxes=boxes,
                    gt_bboxes_labels=labels,
                    img_path="",
                    sample_idx=index,
                )
            )
        )
    return pseudo_collate(samples)


def _build_trainable(config, balancer: dict | None = None, amp: str | None = None):
    """The model of ``config`` (a path or a ``Config``), initialised, in train mode, on the GPU
    if there is one, with its optim wrapper (mixed precision in ``amp``'s dtype if given).

    Python's, NumPy's and torch's random streams are seeded first (0): every benchmark run
    starts from the same weights and draws the same augmentations and denoising queries, as a
    measurement that is compared across runs must (unseeded, a test's profile run once drew
    a step whose detector matched on non-finite costs)."""
    import copy

    import torch
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.runner import set_random_seed

    from adperception.engine import setup_runtime
    from adperception.engine.runner import enable_amp
    from adperception.registry import MODELS

    setup_runtime()
    set_random_seed(0)
    cfg = copy.deepcopy(config) if isinstance(config, Config) else Config.fromfile(config)
    if balancer is not None:
        cfg.model.balancer = balancer
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    if torch.cuda.is_available():
        model.cuda()
    if amp is not None:
        enable_amp(cfg, allow_cpu=True)
        cfg.optim_wrapper.dtype = amp
    return cfg, model, build_optim_wrapper(model, cfg.optim_wrapper)


# dense bf16 tensor-core peak by device name (the vendor's figure, without sparsity); MFU is
# model FLOPs per second over it
PEAK_BF16_FLOPS = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12}


def _step_flops(model, batch, wrapper) -> int:
    """The FLOPs of one training step (forward and backward) by torch's FLOP counter: matrix
    products and convolutions; ops it has no formula for (mmcv's deformable attention, norms,
    activations) count zero, so MFU from it is a lower bound."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model.train_step(batch, wrapper)
    return counter.get_total_flops()


def bench_train(args: argparse.Namespace) -> dict:
    """Training iterations per second of a config's model (forward, backward, AdamW step) on
    SynthDrive frames rendered at the requested size; with ``--amp`` in mixed precision, with
    the steps skipped for a non-finite loss or gradient counted, and the model FLOPs
    utilisation where the device's peak is known."""
    import torch

    _, model, wrapper = _build_trainable(args.config, amp=args.amp)
    batch = _synth_batch(args.batch, args.height, args.width)
    flops = _step_flops(model, batch, wrapper)  # also the warm-up
    times, losses = [], []
    for _ in range(args.iters):
        start = time.perf_counter()
        log_vars = model.train_step(batch, wrapper)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        losses.append(float(log_vars["loss"]) if "loss" in log_vars else math.nan)
    step = statistics.median(times)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in device), None)
    return {
        "benchmark": "train",
        "date": datetime.date.today().isoformat(),
        "device": device,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "config": args.config,
        "height": args.height,
        "width": args.width,
        "batch": args.batch,
        "amp": args.amp,
        "steps": args.iters,
        "skipped_steps": int(getattr(wrapper, "skipped_steps", 0)),
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "step_s_median": step,
        "iters_per_s": 1.0 / step,
        "images_per_s": args.batch / step,
        "flops_per_step": flops,
        "mfu": flops / step / peak if peak and args.amp == "bfloat16" else None,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


# benchmark name -> model.balancer; "equal" is the baseline of every ratio
BALANCER_METHODS = {
    "equal": dict(type="EqualWeighting"),
    "static": dict(type="StaticWeighting", weights=dict(det=1.0, seg=1.0, depth=0.5, normals=0.5)),
    "uncertainty": dict(type="UncertaintyWeighting"),
    "dwa": dict(type="DWA", epoch_iters=2),
    "gradnorm": dict(type="GradNorm"),
    "trend": dict(type="TrendWeighting", warmup=2),
    "famo": dict(type="FAMO"),
    "rlw": dict(type="RLW"),
    "log_loss": dict(type="LogLossWeighting"),
    "pcgrad": dict(type="PCGrad"),
    "cagrad": dict(type="CAGrad"),
    "imtlg": dict(type="IMTLG"),
    "mgda": dict(type="MGDA"),
    "nash_mtl": dict(type="NashMTL"),
    "fairgrad": dict(type="FairGrad"),
    "aligned_mtl": dict(type="AlignedMTL"),
    "escalation": dict(type="Escalation"),
    "pcgrad_k8": dict(type="PCGrad", surgery_interval=8),
    "pcgrad_chunked": dict(type="PCGrad", chunk_numel=1 << 18),
    "pcgrad_batched": dict(type="PCGrad", batched_backward=True),
    "pcgrad_sequential": dict(type="PCGrad", batched_backward=False),
    "pcgrad_reference": dict(type="PCGradReference"),
}


def _balancer_config(name: str) -> dict:
    """``model.balancer`` of a method of ours or of a peer (``tools/benchmark_peers.py``)."""
    if name in BALANCER_METHODS:
        return BALANCER_METHODS[name]
    from benchmark_peers import peer_config

    return peer_config(name)


def _peak_step_bytes(model, batch, wrapper) -> int:
    """The most memory one training step holds at once above what was held before it: CUDA's
    allocator peak on a GPU; on the CPU, the peak of the running sum of every allocation and
    free torch's profiler records over the step (in time order; torch's dispatch-mode memory
    tracker cannot look into vmap's batched tensors, which TorchJD's backward makes)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        model.train_step(batch, wrapper)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    return peak_cpu_bytes(lambda: model.train_step(batch, wrapper))


def peak_cpu_bytes(fn) -> int:
    """The most CPU memory ``fn()`` holds at once above what was held before it: the peak of the
    running sum of every allocation and free torch's profiler records (in time order)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start
    )
    live = peak = 0
    for event in events:
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def _first_gradients(config, batch, balancer: dict):
    """Every parameter's gradient at the first step of a fresh model (seed 0), flattened, as
    the balancer leaves it for the optimizer; and the model."""
    import torch

    torch.manual_seed(0)
    _, model, wrapper = _build_trainable(config, balancer)
    captured = []

    def capture() -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        captured.append(
            torch.cat(
                [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]
            )
        )
        wrapper.zero_grad()

    wrapper.apply_gradients = capture
    torch.manual_seed(1)  # the detector's denoising queries are random: the same for each
    model.train_step(batch, wrapper)
    return captured[0], model


def two_task_config(config: str, tasks: tuple[str, str] = ("seg", "normals")):
    """The config's network with two tasks only, both on every shared parameter (one branch):
    PCGrad of two tasks is deterministic, so ours and the peers' must give the same update.
    Segmentation and normals, since their first gradients on the quickstart model conflict
    (cosine −0.10), so that the projection acts."""
    from mmengine.config import Config

    from adperception.engine.delta_m import keep_heads

    cfg = Config.fromfile(config)
    keep_heads(cfg, tasks)
    cfg.model.backbone.branches = {"shared": list(tasks)}
    return cfg


def peer_agreement(config: str, batch: dict, peers: Sequence[str]) -> dict:
    """‖g_peer − g_ours‖ / ‖g_ours‖ of the first step's gradients, two tasks, PCGrad; and the
    cosine of the two task gradients there (below 0 the projection acted, above it every
    method must give their plain sum)."""
    cfg = two_task_config(config)
    ours, model = _first_gradients(cfg, batch, BALANCER_METHODS["pcgrad"])
    (group,) = model.balancer.stats.groups.values()
    gram = group.gram
    agreement = {"task_cosine": float(gram[0, 1] / (gram[0, 0] * gram[1, 1]).sqrt())}
    for name in peers:
        if name.endswith("pcgrad"):
            theirs, _ = _first_gradients(cfg, batch, _balancer_config(name))
            agreement[name] = float((theirs - ours).norm() / ours.norm())
    return agreement


def bench_balancers(args: argparse.Namespace) -> dict:
    """Seconds per training step of the config's model under each balancer, side by side.

    Every method trains a fresh copy of the same initial model on the same batch. ``step_s``
    is the median step; for an amortised method (``surgery_interval`` k > 1) it is the mean
    over whole cycles of k steps, which the median would hide the surgery step from.
    ``step_cpu_s`` is the same of the process's CPU time: the work of a step, which time
    stolen by other jobs or a shared host's neighbours leaves out (wall-clock ratios measured
    on such a machine here varied by a quarter between identical runs, CPU-time ones by 1-3 %).
    ``task_grad_peak_mb``: the most memory the per-task gradients held at once;
    ``step_peak_mb`` (with ``--peers``): the most memory one step held above the model and
    optimizer state it started from.
    With ``--peers``, TorchJD's and LibMTL's surgery run beside ours (``benchmark_peers.py``),
    with their ratios to our exact PCGrad, and ``agreement`` compares the first update of
    two-task PCGrad, where every method must give the same one.
    """
    import torch

    methods = args.methods or list(BALANCER_METHODS)
    unknown = sorted(set(methods) - set(BALANCER_METHODS))
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; known: {list(BALANCER_METHODS)}")
    peers = []
    if args.peers is not None:
        from benchmark_peers import PEER_METHODS

        peers = args.peers or list(PEER_METHODS)
        unknown = sorted(set(peers) - set(PEER_METHODS))
        if unknown:
            raise SystemExit(f"unknown peer(s) {unknown}; known: {list(PEER_METHODS)}")
        methods = [*methods, *(m for m in ("pcgrad",) if m not in methods)]
    if "equal" not in methods:
        methods = ["equal", *methods]
    cfg, _, _ = _build_trainable(args.config)
    height, width = cfg.get("crop_size", (args.height, args.width))
    batch = _synth_batch(args.batch, height, width)
    records = {}
    for name in [*methods, *peers]:
        balancer = _balancer_config(name)
        torch.manual_seed(0)
        _, model, wrapper = _build_trainable(args.config, balancer)
        model.train_step(batch, wrapper)  # warm-up; the parameter-task tracing happens here
        interval = balancer.get("surgery_interval", 1)
        steps = max(args.iters, interval) // interval * interval
        times, cpu_times = [], []
        for _ in range(steps):
            start, cpu_start = time.perf_counter(), time.process_time()
            model.train_step(batch, wrapper)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
        peak = model.balancer.peak_task_gradient_bytes
        average = statistics.mean if interval > 1 else statistics.median
        records[name] = {
            "step_s": average(times),
            "step_cpu_s": average(cpu_times),
            "task_grad_peak_mb": peak / 2**20 if peak else None,
        }
        if peers:
            records[name]["step_peak_mb"] = _peak_step_bytes(model, batch, wrapper) / 2**20
        print(f"{name:>18}: {records[name]['step_s']:.3f} s/step", file=sys.stderr)
    for record in records.values():
        record["ratio_to_equal"] = record["step_s"] / records["equal"]["step_s"]
        record["cpu_ratio_to_equal"] = record["step_cpu_s"] / records["equal"]["step_cpu_s"]
    if peers:
        ours = records["pcgrad"]
        for name in peers:
            records[name]["ours_step_ratio"] = ours["step_s"] / records[name]["step_s"]
            records[name]["ours_memory_ratio"] = (
                ours["step_peak_mb"] / records[name]["step_peak_mb"]
            )
        records["agreement"] = peer_agreement(args.config, batch, peers)
    print(
        f"{args.config} at {height}x{width}, batch {args.batch}, {datetime.date.today()}, "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'} "
        f"({torch.get_num_threads()} threads)",
        file=sys.stderr,
    )
    return records


SUM_ROW = "sum of single-task"
# size name -> (multi-task config, (height, width), single-task config pattern; None derives them)
INFERENCE_SIZES = {
    "quick": ("configs/quickstart.py", (128, 256), None),
    "full": ("configs/ad_mtl.py", (512, 1024), "configs/single_task/{task}.py"),
}


def config_tasks(config: str) -> tuple[str, ...]:
    """The tasks a config trains: the heads it names, in registration order."""
    from mmengine.config import Config

    from adperception.tasks import tasks_in_order

    return tasks_in_order(Config.fromfile(config).model.heads)


VARIANTS = ("fp32", "bf16", "bf16_channels_last")


ARCHITECTURE_CONFIGS = {
    "partial sharing + adapters (quickstart)": "configs/quickstart.py",
    **{
        name.replace("_", " "): f"configs/experiments/architectures/{name}.py"
        for name in (
            "hard_sharing",
            "cross_stitch",
            "sluice",
            "mtan",
            "hyper_adapters",
            "task_norms",
            "multi_decoder",
        )
    },
}


def bench_architectures(args: argparse.Namespace) -> list[dict]:
    """Per architecture config, at its training crop: trainable parameters, multiply-accumulates
    per image of one forward (torch's FlopCounterMode: convolutions and matrix products; the
    deformable attention's grid sampling is not counted), median seconds per training step (its
    own balancer) on a SynthDrive batch, and images per second of batch-1 inference."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    configs = dict(item.split("=", 1) for item in args.configs) or dict(ARCHITECTURE_CONFIGS)
    records = []
    for name, config in configs.items():
        cfg, model, wrapper = _build_trainable(config)
        height, width = cfg.get("crop_size", (args.height, args.width))
        batch = _synth_batch(args.batch, height, width)
        times = []
        for _ in range(args.iters + 1):  # the first step warms up (and traces the sharing)
            start = time.perf_counter()
            model.train_step(batch, wrapper)
            times.append(time.perf_counter() - start)
        model.eval()
        inputs = torch.randn(1, 3, height, width)
        # With gradients on: the counter's module tracker fails on a module input that is a
        # view of a parameter (the multi-decoder's expanded query embeddings) under no_grad or
        # inference_mode, where such a view has no grad_fn (torch 2.14).
        with FlopCounterMode(display=False) as counter:
            model(inputs, mode="tensor")
        forward_s = time_inference(
            model, batch=1, height=height, width=width, iters=args.iters, warmup=1
        )
        record = {
            "benchmark": "architectures",
            "date": datetime.date.today().isoformat(),
            "device": "cpu",
            "torch_threads": torch.get_num_threads(),
            "architecture": name,
            "config": config,
            "height": height,
            "width": width,
            "batch": args.batch,
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "macs_per_image": counter.get_total_flops() / 2,
            "train_step_s_median": statistics.median(times[1:]),
            "inference_images_per_s": 1.0 / forward_s,
        }
        print(json.dumps(record), file=sys.stderr, flush=True)  # progress, one line per network
        records.append(record)
    return records


def build_inference_model(config: str, task: str | None = None):
    """A config's network in eval mode; ``task`` keeps one head and its own branch group, the way
    configs/single_task/*.py derive the single-task baselines from ad_mtl.py."""
    from mmengine.config import Config

    from adperception.engine import setup_runtime
    from adperception.registry import MODELS

    setup_runtime()
    cfg = Config.fromfile(config)
    if task is not None:
        if task not in cfg.model.heads:
            raise ValueError(f"{config}: model.heads has no '{task}' head to keep")
        cfg.model.backbone.branches = {task: [task]}
        cfg.model.heads = {task: cfg.model.heads[task]}
    return MODELS.build(cfg.model).eval()


def time_inference(
    model,
    *,
    batch: int,
    height: int,
    width: int,
    iters: int,
    warmup: int,
    variant: str = "fp32",
) -> float:
    """Median seconds per raw forward (``mode='tensor'``) of a normalised random batch, after
    ``warmup`` untimed ones; ``variant`` adds bf16 autocast and channels-last memory."""
    import torch

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")
    device = next(model.parameters()).device
    inputs = torch.randn(batch, 3, height, width, device=device)
    if variant == "bf16_channels_last":
        model.to(memory_format=torch.channels_last)
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=variant != "fp32")
    times = []
    with torch.inference_mode(), autocast:
        for step in range(warmup + iters):
            start = time.perf_counter()
            model(inputs, mode="tensor")
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_inference_one(args: argparse.Namespace) -> list[dict]:
    """One model at each batch size, ascending, in this process. The ``inference`` command runs
    every model in a fresh process, so that on CPU the peak-RSS growth is that model's alone."""
    import resource

    import torch

    from adperception.engine import setup_runtime

    setup_runtime()  # imports come before the baseline: they are not the model's memory
    cuda = torch.cuda.is_available()
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    model = build_inference_model(args.config, args.task).to("cuda" if cuda else "cpu")
    records = []
    for batch in sorted(args.batches):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        latency = time_inference(
            model,
            batch=batch,
            height=args.height,
            width=args.width,
            iters=args.iters,
            warmup=args.warmup,
            variant=args.variant,
        )
        if cuda:
            peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:  # weights + activations: the high-water mark only rises, hence batches ascending
            peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_start) / 1024
        records.append(
            {
                "config": args.config if args.task is None else f"{args.config}[{args.task}]",
                "tasks": list(model.heads),
                "size": f"{args.height}x{args.width}",
                "batch": batch,
                "variant": args.variant,
                "latency_s": latency,
                "images_per_s": batch / latency,
                "params": sum(p.numel() for p in model.parameters()),
                "peak_mem_mb": peak_mb,
                "device": torch.cuda.get_device_name() if cuda else "cpu",
            }
        )
    return records


def sum_of_single_task(records: list[dict], expected: Sequence[str]) -> dict:
    """The single-task models of the ``expected`` tasks run one after another on the same batch:
    latencies, parameters and memory add up (each model deployed in its own process)."""
    tasks = [task for record in records for task in record["tasks"]]
    if sorted(tasks) != sorted(expected):
        raise ValueError(
            f"the single-task records cover tasks {tasks}, not each of {list(expected)} once"
        )
    latency = sum(record["latency_s"] for record in records)
    return {
        "config": SUM_ROW,
        "tasks": tasks,
        "size": records[0]["size"],
        "batch": records[0]["batch"],
        "variant": records[0]["variant"],
        "latency_s": latency,
        "images_per_s": records[0]["batch"] / latency,
        "params": sum(record["params"] for record in records),
        "peak_mem_mb": sum(record["peak_mem_mb"] for record in records),
        "device": records[0]["device"],
    }


def _run_inference_one(
    config: str, task: str | None, size: tuple[int, int], args: argparse.Namespace, variant: str
) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "records.json"
        command = [sys.executable, str(Path(__file__).resolve()), "inference-one"]
        command += ["--config", config, "--height", str(size[0]), "--width", str(size[1])]
        command += ["--batches", *map(str, args.batches), "--variant", variant]
        command += ["--iters", str(args.iters), "--warmup", str(args.warmup), "--json", str(out)]
        command += ["--task", task] if task else []
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{config} ({task or 'all tasks'}) failed:\n{done.stderr[-3000:]}")
        return json.loads(out.read_text())


def bench_inference(args: argparse.Namespace) -> list[dict]:
    """The four-task network against the four single-task networks and their sum, per size,
    batch and (with --amp) bf16 / channels-last variant."""
    import torch

    cuda = torch.cuda.is_available()
    overrides = dict(item.split("=", 1) for item in args.configs)
    unknown = set(overrides) - set(INFERENCE_SIZES)
    if unknown:
        raise ValueError(
            f"--configs: unknown size(s) {sorted(unknown)}; use SIZE=CONFIG with a "
            f"size in {sorted(INFERENCE_SIZES)}"
        )
    records: list[dict] = []
    for size_name in args.sizes:
        config, size, single = INFERENCE_SIZES[size_name]
        if size_name in overrides:  # a user's network: its single-task variants are derived
            config, single = str(Path(overrides[size_name]).resolve()), None
        iters = args.iters or (20 if cuda else {"quick": 10, "full": 2}[size_name])
        run = argparse.Namespace(batches=args.batches, iters=iters, warmup=5 if cuda else 1)
        for variant in VARIANTS if args.amp else VARIANTS[:1]:
            four = _run_inference_one(config, None, size, run, variant)
            singles = [
                _run_inference_one(single.format(task=task), None, size, run, variant)
                if single
                else _run_inference_one(config, task, size, run, variant)
                for task in config_tasks(config)
            ]
            for index, record in enumerate(four):
                row = [r[index] for r in singles]
                records += [record, *row, sum_of_single_task(row, config_tasks(config))]
    return records


def inference_markdown(records: list[dict]) -> str:
    """The records as one Markdown table, in the order measured."""
    lines = [
        "| input | batch | variant | model | tasks | latency (s) | images/s | params (M) "
        "| peak mem (MB) | device |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        model = r["config"] if r["config"] == SUM_ROW else f"`{r['config']}`"
        lines.append(
            f"| {r['size'].replace('x', '×')} | {r['batch']} | {r['variant']} | {model} "
            f"| {'+'.join(r['tasks'])} | {r['latency_s']:.3f} | {r['images_per_s']:.2f} "
            f"| {r['params'] / 1e6:.2f} | {r['peak_mem_mb']:.0f} | {r['device']} |"
        )
    return "\n".join(lines) + "\n"


def _command(sub, name: str, run: Callable) -> argparse.ArgumentParser:
    """The subcommand that runs ``run``, described by its docstring: the first paragraph in the
    command list, the whole in its own ``--help``. argparse %-formats help strings, so the
    docstrings' percent signs are escaped there (a bare one made ``--help`` raise)."""
    doc = inspect.cleandoc(run.__doc__ or "")
    summary = " ".join(doc.split("\n\n")[0].split())
    parser = sub.add_parser(
        name,
        help=summary.replace("%", "%%"),
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run)
    return parser


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    synth = _command(sub, "synth", bench_synth)
    synth.add_argument("--num", type=int, default=40)
    synth.add_argument("--height", type=int, default=256)
    synth.add_argument("--width", type=int, default=512)
    synth.add_argument("--seed", type=int, default=0)
    train = _command(sub, "train", bench_train)
    train.add_argument("--config", default="configs/ad_mtl.py")
    train.add_argument("--height", type=int, default=512)
    train.add_argument("--width", type=int, default=1024)
    train.add_argument("--batch", type=int, default=1)
    train.add_argument("--iters", type=int, default=3, help="timed steps after the warm-up")
    train.add_argument("--amp", choices=["bfloat16", "float16"], help="mixed precision (CUDA)")
    balancers = _command(sub, "balancers", bench_balancers)
    balancers.add_argument("--config", default="configs/quickstart.py")
    balancers.add_argument("--batch", type=int, default=2)
    balancers.add_argument("--iters", type=int, default=8, help="timed steps per method")
    balancers.add_argument("--height", type=int, default=128, help="without crop_size in config")
    balancers.add_argument("--width", type=int, default=256, help="without crop_size in config")
    balancers.add_argument("--methods", nargs="+", choices=list(BALANCER_METHODS))
    balancers.add_argument(
        "--peers",
        nargs="*",
        metavar="PEER",
        help="also TorchJD's and LibMTL's (pip install .[peers]): these, or all when none named",
    )
    inference = _command(sub, "inference", bench_inference)
    inference.add_argument(
        "--sizes", nargs="+", choices=list(INFERENCE_SIZES), default=list(INFERENCE_SIZES)
    )
    inference.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    inference.add_argument(
        "--iters", type=int, help="timed forwards (default 20 on GPU; CPU: 10 quick, 2 full)"
    )
    inference.add_argument("--amp", action="store_true", help="also bf16 and channels-last")
    inference.add_argument(
        "--configs", nargs="+", default=[], metavar="SIZE=CONFIG", help="another 4-task network"
    )
    inference.add_argument("--markdown", type=Path, help="also write the table to this file")
    architectures = _command(sub, "architectures", bench_architectures)
    architectures.add_argument(
        "--configs",
        nargs="+",
        default=[],
        metavar="NAME=CONFIG",
        help="the networks to measure (default: the architecture table's)",
    )
    architectures.add_argument("--batch", type=int, default=4)
    architectures.add_argument("--iters", type=int, default=5, help="timed steps and forwards")
    architectures.add_argument("--height", type=int, default=128, help="without crop_size")
    architectures.add_argument("--width", type=int, default=256, help="without crop_size")
    one = _command(sub, "inference-one", bench_inference_one)
    one.add_argument("--config", required=True)
    one.add_argument("--task", help="keep this head only (derived single-task)")
    one.add_argument("--height", type=int, required=True)
    one.add_argument("--width", type=int, required=True)
    one.add_argument("--batches", nargs="+", type=int, default=[1])
    one.add_argument("--variant", choices=VARIANTS, default="fp32")
    one.add_argument("--iters", type=int, default=10)
    one.add_argument("--warmup", type=int, default=1)
    from benchmark_profile import add_arguments, bench_profile

    profile = _command(sub, "profile", bench_profile)
    add_arguments(profile)
    for p in (synth, train, balancers, architectures, inference, one, profile):
        p.add_argument("--json", type=Path, help="also write the record to this file")
    args = parser.parse_args()
    record = args.run(args)
    text = json.dumps(record, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    if args.command == "inference" and args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(inference_markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
