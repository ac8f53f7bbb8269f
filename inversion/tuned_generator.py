"""A per-image tuned generator, carried by an inversion result as its tuned tensors only.

Pivotal tuning (PTI, Pose Opt.) changes the generator's weights for ONE image. The result of such an
inversion must therefore render through its own generator, never through the shared frozen one
(docs/pti.md). ``TunedGeneratorTensors`` holds, for every image of a batch, the tensors that replace
the frozen generator's (``[N, *shape]`` per name: only the tuned parts) and the rendering settings
the tuning used (the depth-sample counts, which PTI may double). ``generator_from(frozen)`` builds the
image's generator: a frozen copy of ``frozen`` with the tensors put in; ``frozen`` is never touched.

On disk (``generator.safetensors`` in an image's output folder) it is one image's tensors in
safetensors (no code can run when it is read), with the rendering settings and a format tag in the
file's metadata.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from networks.eg3d.generator import TriPlaneGenerator

TUNED_GENERATOR_FILE = "generator.safetensors"
FILE_FORMAT = "goae-tuned-generator/1"
FORMAT_KEY, RENDERING_KEY = "format", "rendering_kwargs"


class TunedGeneratorError(ValueError):
    """Tuned tensors that do not fit a generator, or an unreadable tuned-generator file (named)."""


@dataclass
class TunedGeneratorTensors:
    """tensors: generator state name -> [N, *shape] (one row per image); rendering_overrides: the
    ``rendering_kwargs`` entries the tuning rendered with (e.g. doubled depth samples)."""

    tensors: dict[str, torch.Tensor]
    rendering_overrides: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        sizes = {tensor.shape[0] for tensor in self.tensors.values()}
        if len(sizes) > 1:
            raise TunedGeneratorError(f"tuned tensors disagree on the number of images: {sorted(sizes)}")

    @property
    def num_images(self) -> int:
        return next(iter(self.tensors.values())).shape[0] if self.tensors else 0

    def sample(self, index: int) -> TunedGeneratorTensors:
        """Image ``index`` as a batch of one."""
        return TunedGeneratorTensors(
            {name: tensor[index : index + 1] for name, tensor in self.tensors.items()}, dict(self.rendering_overrides)
        )

    def float(self) -> TunedGeneratorTensors:
        return TunedGeneratorTensors(
            {name: tensor.float() for name, tensor in self.tensors.items()}, dict(self.rendering_overrides)
        )

    @classmethod
    def stack(cls, images: list[TunedGeneratorTensors]) -> TunedGeneratorTensors:
        """One batch from per-image (batch-of-one) tensors with the same names and settings."""
        names = [sorted(image.tensors) for image in images]
        if any(image_names != names[0] for image_names in names):
            raise TunedGeneratorError("per-image tuned tensors name different generator parts")
        return cls(
            {name: torch.cat([image.tensors[name] for image in images]) for name in names[0]},
            dict(images[0].rendering_overrides),
        )

    # ------------------------------------------------------------------ the image's generator
    def generator_from(self, frozen: TriPlaneGenerator) -> TriPlaneGenerator:
        """A frozen copy of ``frozen`` with this image's tensors and rendering settings (batch of one)."""
        if self.num_images != 1:
            raise TunedGeneratorError(f"a generator is built for one image, these tensors hold {self.num_images}")
        self.check_fits(frozen)
        tuned = copy.deepcopy(frozen)
        state = tuned.state_dict(keep_vars=True)
        with torch.no_grad():
            for name, tensor in self.tensors.items():
                state[name].copy_(tensor[0])
        tuned.rendering_kwargs = {**tuned.rendering_kwargs, **self.rendering_overrides}
        return tuned.eval().requires_grad_(False)

    def check_fits(self, generator: TriPlaneGenerator, source: str = "tuned tensors") -> None:
        state = generator.state_dict(keep_vars=True)
        unknown = sorted(name for name in self.tensors if name not in state)
        wrong = sorted(
            f"{name} {list(tensor.shape[1:])} vs {list(state[name].shape)}"
            for name, tensor in self.tensors.items()
            if name in state and tuple(tensor.shape[1:]) != tuple(state[name].shape)
        )
        if unknown or wrong:
            raise TunedGeneratorError(
                f"{source} do not fit the configured generator: unknown names {unknown[:4]}, shapes {wrong[:4]} "
                "(tuned with another generator config?)"
            )

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """One image's tensors as safetensors (float32), written atomically."""
        if self.num_images != 1:
            raise TunedGeneratorError(f"a tuned-generator file holds one image, these tensors hold {self.num_images}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {FORMAT_KEY: FILE_FORMAT, RENDERING_KEY: json.dumps(self.rendering_overrides, sort_keys=True)}
        tensors = {name: tensor[0].detach().float().cpu().contiguous() for name, tensor in self.tensors.items()}
        partial = path.with_name(f".{path.name}.tmp")
        save_file(tensors, str(partial), metadata=metadata)
        os.replace(partial, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> TunedGeneratorTensors:
        """A file written by :meth:`save`, as a batch of one."""
        path = Path(path)
        if not path.is_file():
            raise TunedGeneratorError(f"tuned-generator file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as file:
                metadata = file.metadata() or {}
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise TunedGeneratorError(f"{path}: not a readable safetensors file ({error})") from error
        if metadata.get(FORMAT_KEY) != FILE_FORMAT:
            raise TunedGeneratorError(
                f"{path}: not a tuned-generator file (metadata format {metadata.get(FORMAT_KEY)!r}, "
                f"expected {FILE_FORMAT!r})"
            )
        overrides = {str(key): int(value) for key, value in json.loads(metadata.get(RENDERING_KEY, "{}")).items()}
        return cls({name: tensor[None] for name, tensor in tensors.items()}, overrides)


def tuned_tensors_of(generator: TriPlaneGenerator, names: Mapping[str, object] | list[str]) -> dict[str, torch.Tensor]:
    """Detached copies of ``generator``'s state ``names`` as a batch of one."""
    state = generator.state_dict(keep_vars=True)
    return {name: state[name].detach().clone()[None] for name in names}


__all__ = ["TUNED_GENERATOR_FILE", "TunedGeneratorError", "TunedGeneratorTensors", "tuned_tensors_of"]
