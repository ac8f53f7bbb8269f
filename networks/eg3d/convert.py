"""Convert an official EG3D ``.pkl`` into a plain state dict plus ``generator.json``.

    python -m networks.eg3d.convert ffhqrebalanced512-128.pkl checkpoints/ffhq512-128 [--format pt]

The pickle is read by the restricted unpickler of ``networks.eg3d.checkpoint`` (no NVIDIA code is
imported or executed). Before anything is written, the weights are loaded strictly into our own
generator built from the pickle's constructor kwargs, so a converted folder is known to load.
Both files are written atomically (temp file in the same folder, fsync, rename).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from networks.eg3d.checkpoint import (
    CheckpointError,
    SavedGeneratorFiles,
    build_generator_from_checkpoint,
    read_nvidia_pickle,
    save_generator_checkpoint,
)

PLANE_AXES_NOTES = {
    "eg3d": "eg3d (NVIDIA's XY, XZ, ZX projection, which the released weights depend on; our default)",
    "orthogonal": "orthogonal (XY, XZ, ZY; only for generators trained with the corrected planes)",
}


@dataclass
class ConfigMatch:
    """How converted kwargs compare with the closest named configuration."""

    config_name: str
    differences: list[str]  # dotted kwarg paths that differ; empty means identical

    def describe(self) -> str:
        if not self.differences:
            return f"{self.config_name} (identical constructor kwargs)"
        shown = ", ".join(self.differences[:6]) + (" ..." if len(self.differences) > 6 else "")
        return f"custom (closest: {self.config_name}; differs in {shown})"


def _differences(left: Any, right: Any, prefix: str = "") -> list[str]:
    if isinstance(left, dict) and isinstance(right, dict):
        found: list[str] = []
        for key in list(left) + [key for key in right if key not in left]:
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in left or key not in right:
                found.append(where)
            else:
                found.extend(_differences(left[key], right[key], where))
        return found
    if isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
        same = len(left) == len(right) and all(not _differences(a, b) for a, b in zip(left, right))
        return [] if same else [prefix]
    return [] if left == right else [prefix]


def closest_named_config(generator_kwargs: dict[str, Any]) -> ConfigMatch:
    from networks.eg3d.configs import GENERATOR_CONFIGS

    matches = [
        ConfigMatch(name, _differences(generator_kwargs, config["generator_kwargs"]))
        for name, config in GENERATOR_CONFIGS.items()
    ]
    return min(matches, key=lambda match: len(match.differences))


def convert_pickle(input_path: Path, out_dir: Path, weights_format: str) -> SavedGeneratorFiles:
    """Read, verify by a strict load into our generator, write; prints a summary."""
    record = read_nvidia_pickle(input_path)
    checkpoint = record.to_checkpoint()
    build_generator_from_checkpoint(checkpoint)  # raises CheckpointError if it would not load
    saved = save_generator_checkpoint(checkpoint, out_dir, weights_format)  # type: ignore[arg-type]

    values = sum(tensor.numel() for tensor in checkpoint.state_dict.values())
    print(f"converted {input_path} -> {saved.weights_path} + {saved.kwargs_path}")
    print(f"  generator: {record.class_name} (persistence v{record.persistence_version})")
    print(f"  config: {closest_named_config(checkpoint.metadata.generator_kwargs).describe()}")
    print(f"  tensors: {len(checkpoint.state_dict)} ({values:,} values)")
    print(f"  neural rendering resolution: {record.neural_rendering_resolution}")
    projection = str(checkpoint.metadata.generator_kwargs.get("plane_projection", "eg3d"))
    print(f"  plane axes: {PLANE_AXES_NOTES.get(projection, projection)}")
    return saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m networks.eg3d.convert",
        description="Convert an official EG3D .pkl into generator.safetensors|pt + generator.json "
        "(no NVIDIA code is imported or executed).",
    )
    parser.add_argument("input", type=Path, help="official EG3D pickle, e.g. ffhqrebalanced512-128.pkl")
    parser.add_argument("out_dir", type=Path, help="folder for generator.<format> and generator.json")
    parser.add_argument(
        "--format", choices=("safetensors", "pt"), default="safetensors", dest="weights_format"
    )
    args = parser.parse_args(argv)
    try:
        convert_pickle(args.input, args.out_dir, args.weights_format)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
