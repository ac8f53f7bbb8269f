"""A generator's identity: what ties a trained encoder or AFA to the generator it was trained against."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch
from torch import nn


@dataclass(frozen=True)
class GeneratorFingerprint:
    """What ties an encoder (and an AFA) to one generator: its shape facts and a hash of its weights."""

    w_dim: int
    num_ws: int
    img_resolution: int
    neural_rendering_resolution: int
    plane_projection: str
    weights_sha256: str

    @classmethod
    def of(cls, generator: nn.Module) -> "GeneratorFingerprint":
        return cls(
            w_dim=int(generator.w_dim), num_ws=int(generator.num_ws), img_resolution=int(generator.img_resolution),
            neural_rendering_resolution=int(generator.neural_rendering_resolution),
            plane_projection=str(generator.renderer.plane_projection), weights_sha256=_weights_sha256(generator),
        )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "GeneratorFingerprint":
        return cls(**{item.name: values[item.name] for item in fields(cls)})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def differences(self, other: "GeneratorFingerprint") -> list[str]:
        """'name: mine != theirs' for every differing field (empty = same generator)."""
        return [
            f"{item.name}: {getattr(other, item.name)!r} (checkpoint) != {getattr(self, item.name)!r} (this run)"
            for item in fields(self) if getattr(self, item.name) != getattr(other, item.name)
        ]


def _weights_sha256(module: nn.Module) -> str:
    """SHA-256 over the state dict (names, dtypes, shapes, values), in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{data.dtype}:{list(data.shape)}".encode())
        if data.numel():
            digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
