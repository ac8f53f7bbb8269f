"""Estimate GOAE's D_avg: the average background depth of canonical front-view samples.

    python -m data_prep.estimate_background_depth --generator ffhq512-128 \\
        --checkpoint pretrained/ffhqrebalanced512-128.pkl --num-samples 10000 \\
        --mask bisenet --bisenet-weights pretrained/79999_iter.pth --per-pixel
    python -m data_prep.estimate_background_depth --generator tiny --random-init \\
        --num-samples 8 --mask geometric --out outputs/tiny.background_depth.json

Each sample: z ~ N(0, I) (seeded), ws = mapping(z, c_front), rendered at c_front with deterministic
renderer draws; the background mask comes from BiSeNet face parsing or the geometric rule. The result
goes beside the generator checkpoint as ``<checkpoint stem>.background_depth.json`` (and
``.background_depth.pt`` with the per-pixel map when --per-pixel), or to --out. See
docs/background_depth.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from losses.background import (
    GeneratorRecord,
    MaskMethod,
    build_background_masker,
    default_stats_path,
    estimate_background_depth,
    file_sha256,
    save_background_depth_stats,
    without_per_pixel_map,
)


def build_argument_parser() -> argparse.ArgumentParser:
    from networks.eg3d.configs import GENERATOR_CONFIGS

    parser = argparse.ArgumentParser(
        prog="python -m data_prep.estimate_background_depth",
        description="Estimate D_avg (average background depth at the canonical front camera) for L_BG.",
    )
    parser.add_argument(
        "--generator", required=True, choices=sorted(GENERATOR_CONFIGS), help="generator configuration"
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="generator weights (NVIDIA .pkl or converted)"
    )
    parser.add_argument("--random-init", action="store_true", help="use random generator weights on purpose")
    parser.add_argument(
        "--generator-seed", type=int, default=0, help="seed of the random weights (--random-init)"
    )
    parser.add_argument(
        "--num-samples", type=int, required=True, help="canonical samples to average (paper: 100000)"
    )
    parser.add_argument(
        "--mask", choices=[method.value for method in MaskMethod], required=True, help="background mask"
    )
    parser.add_argument(
        "--bisenet-weights", type=Path, default=None, help="79999_iter.pth (with --mask bisenet)"
    )
    parser.add_argument("--per-pixel", action="store_true", help="also store the per-pixel D_avg map (.pt)")
    parser.add_argument("--out", type=Path, default=None, help="output JSON (default: beside the checkpoint)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="seed of the z samples")
    parser.add_argument("--truncation-psi", type=float, default=1.0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def output_path(args: argparse.Namespace) -> Path:
    if args.out is not None:
        return args.out
    if args.checkpoint is None:
        raise SystemExit("a random generator has no checkpoint to store D_avg beside: give --out PATH")
    return default_stats_path(args.checkpoint)


def check_arguments(args: argparse.Namespace) -> None:
    if args.checkpoint is None and not args.random_init:
        raise SystemExit(
            "give --checkpoint PATH, or --random-init to use random generator weights on purpose"
        )
    if args.checkpoint is not None and args.random_init:
        raise SystemExit("--checkpoint and --random-init exclude each other")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise SystemExit(f"generator checkpoint '{args.checkpoint}' does not exist")
    if args.mask == MaskMethod.BISENET.value and args.bisenet_weights is None:
        raise SystemExit(
            "--mask bisenet needs --bisenet-weights PATH "
            "(79999_iter.pth from zllrunning/face-parsing.PyTorch)"
        )
    if args.mask != MaskMethod.BISENET.value and args.bisenet_weights is not None:
        raise SystemExit("--bisenet-weights is only used with --mask bisenet")
    if args.num_samples < 1 or args.batch_size < 1:
        raise SystemExit("--num-samples and --batch-size must be positive")


def report_progress(done: int, total: int) -> None:
    print(
        f"\rrendered {done}/{total} canonical samples",
        end="" if done < total else "\n",
        file=sys.stderr,
        flush=True,
    )


def main(argv: list[str] | None = None) -> Path:
    from networks.eg3d.configs import generator_from_config

    args = build_argument_parser().parse_args(argv)
    check_arguments(args)
    destination = output_path(args)
    checkpoint = str(args.checkpoint) if args.checkpoint is not None else None
    device = torch.device(args.device)
    generator = generator_from_config(args.generator, checkpoint, args.random_init, args.generator_seed).to(
        device
    )
    masker = build_background_masker(args.mask, args.bisenet_weights, device=device)
    record = GeneratorRecord(
        name=args.generator,
        checkpoint=str(args.checkpoint.resolve()) if args.checkpoint is not None else None,
        checkpoint_sha256=file_sha256(args.checkpoint) if args.checkpoint is not None else None,
    )
    stats = estimate_background_depth(
        generator,
        masker,
        args.num_samples,
        record,
        batch_size=args.batch_size,
        seed=args.seed,
        truncation_psi=args.truncation_psi,
        device=device,
        on_batch=report_progress,
    )
    saved = save_background_depth_stats(
        stats if args.per_pixel else without_per_pixel_map(stats), destination
    )
    print(
        f"D_avg = {stats.mean_depth:.6f} over {stats.num_samples} samples ({args.mask} mask, "
        f"{100 * stats.background_fraction:.1f}% of pixels background, resolution "
        f"{stats.neural_rendering_resolution}); written to {saved}"
    )
    return saved


if __name__ == "__main__":
    main()
