"""Time our EG3D generator: a full forward and its stages, plus peak memory, printed as JSON.

    python scripts/benchmark_generator.py                          # ffhq512-128, batch 1 and 4, CPU
    python scripts/benchmark_generator.py --device cuda --dtype bfloat16 --channels-last --compile

Random weights (speed does not depend on values). Each batch size runs in its own subprocess so the
CPU peak resident memory is per configuration. Reference: NVIDIA's code with its reference ops takes
about 5.5 s per 512x512 image on this project's 2-core CPU machine (shared/eg3d/BEHAVIOUR.md §17).
This is a benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from cameras import canonical_camera_label, look_at_label  # noqa: E402
from networks.eg3d.configs import build_generator, randomize_generator_weights_  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def summary(times: list[float], batch: int) -> dict:
    median = statistics.median(times)
    return {"median_s": round(median, 4), "per_image_s": round(median / batch, 4), "runs_s": [round(t, 4) for t in times]}


def run_one(args: argparse.Namespace, batch: int) -> dict:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = randomize_generator_weights_(build_generator(args.config), seed=0, calibration_samples=0).eval().to(device)
    if args.channels_last:
        generator.use_channels_last()
    if args.compile:
        generator.backbone.synthesis = torch.compile(generator.backbone.synthesis)
        generator.superresolution = torch.compile(generator.superresolution)
    z = torch.randn(batch, generator.z_dim, device=device)
    c_cond = canonical_camera_label(batch, device=device)
    c = look_at_label(torch.full((batch,), 0.3), torch.full((batch,), -0.1), device=device)
    autocast_dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]

    def autocast():
        return torch.autocast(device_type=device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)

    with torch.no_grad(), autocast():
        ws = generator.mapping(z, c_cond)
        planes = generator.synthesize_planes(ws)
        volume = generator.volume_render(planes, c)
        stages = {
            "mapping": lambda: generator.mapping(z, c_cond),
            "backbone": lambda: generator.synthesize_planes(ws),
            "renderer": lambda: generator.volume_render(planes, c),
            "superresolution": lambda: generator.superresolve(volume.feature_image, ws),
            "full_forward": lambda: generator(z, c, c_cond=c_cond),
        }
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        results = {name: summary(time_call(fn, device, args.warmup, args.repeats), batch) for name, fn in stages.items()}
    peak = (
        {"peak_cuda_allocated_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}
        if device.type == "cuda"
        else {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    )
    return {"batch": batch, **results, **peak}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="ffhq512-128")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone and super-resolution")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.single:
        print(json.dumps(run_one(args, args.batch[0])))
        return
    runs = []
    for batch in args.batch:
        command = [
            sys.executable, __file__, "--single", "--batch", str(batch), "--config", args.config,
            "--device", args.device, "--dtype", args.dtype, "--threads", str(args.threads),
            "--warmup", str(args.warmup), "--repeats", str(args.repeats),
        ] + (["--channels-last"] if args.channels_last else []) + (["--compile"] if args.compile else [])
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(output.strip().splitlines()[-1]))
    info = {
        "config": args.config, "device": args.device, "dtype": args.dtype, "channels_last": args.channels_last,
        "compile": args.compile, "torch": torch.__version__, "threads": args.threads or torch.get_num_threads(),
    }
    print(json.dumps({"setup": info, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
