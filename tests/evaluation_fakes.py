"""Small fake inverters and a synthetic MEAD-style set, for the metrics-callback and evaluate.py tests.

The fakes implement only the ``Inverter`` protocol (``generator`` + ``invert``), like any stage module:
* ``FakeInverterStage(mode="linear")``: ws = w_avg + a seeded linear map of the pooled image (a "bad"
  encoder whose output still depends on the image, and whose weights a Lightning checkpoint can carry);
* ``mode="mean"``: always w_avg (the linear map zeroed);
* ``mode="nearest"``: the true ws of the nearest image in a bank file (a perfect inverter).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cameras import look_at_label
from evaluation.protocols import deterministic_draws
from inversion.result import InversionResult
from metrics import ReferenceDepth

# MEAD's five views; "left" = negative yaw in our look-at convention (any fixed choice works: the
# protocol reads cameras from the label file).
MEAD_YAWS = {"left60": -60.0, "left30": -30.0, "front": 0.0, "right30": 30.0, "right60": 60.0}
BANK_POOL = 8


class FakeInverterStage(L.LightningModule):
    def __init__(self, generator: torch.nn.Module, mode: str = "linear", bank_file: str | None = None,
                 seed: int = 0, scale: float = 0.5) -> None:
        super().__init__()
        if mode not in ("linear", "mean", "nearest"):
            raise ValueError(f"unknown mode {mode!r}")
        self.generator = generator.eval().requires_grad_(False)
        self.mode = mode
        torch.manual_seed(seed)
        w_dim = int(generator.w_avg.shape[-1])
        self.linear = torch.nn.Linear(3 * 4 * 4, w_dim)
        with torch.no_grad():
            self.linear.weight.mul_(scale)
            if mode == "mean":
                self.linear.weight.zero_()
                self.linear.bias.zero_()
        self.bank_keys: torch.Tensor | None = None
        self.bank_ws: torch.Tensor | None = None
        if mode == "nearest":
            bank = torch.load(str(bank_file), map_location="cpu", weights_only=True)
            self.bank_keys, self.bank_ws = bank["keys"], bank["ws"]

    def invert(self, image: torch.Tensor, image_full: torch.Tensor, camera: torch.Tensor) -> InversionResult:
        if self.mode == "nearest":
            ws = self._nearest_ws(image_full)
        else:
            offset = self.linear(F.adaptive_avg_pool2d(image, 4).flatten(1))
            ws = self.generator.w_avg[None, None] + offset[:, None]
            ws = ws.expand(-1, self.generator.num_ws, -1)
        planes = self.generator.synthesize_planes(ws)
        return InversionResult(ws=ws, input_view_planes=planes, novel_view_planes=planes)

    def _nearest_ws(self, image_full: torch.Tensor) -> torch.Tensor:
        assert self.bank_keys is not None and self.bank_ws is not None
        keys = image_key(image_full).cpu()
        nearest = torch.cdist(keys, self.bank_keys).argmin(dim=1)
        return self.bank_ws[nearest].to(image_full.device)

    def validation_step(self, batch: object, batch_idx: int) -> None:
        return None  # the metrics callback does the work


def image_key(images: torch.Tensor) -> torch.Tensor:
    return F.adaptive_avg_pool2d(images.float(), BANK_POOL).flatten(1)


class BankReferenceDepth:
    """Reference depth of the synthetic MEAD set's views, looked up by "<person>/<frame>/<view>"."""

    def __init__(self, bank_file: str) -> None:
        bank = torch.load(bank_file, map_location="cpu", weights_only=True)
        self.depth = dict(zip(bank["view_ids"], bank["depth"]))

    def reference_depth(self, batch: object) -> ReferenceDepth:
        identifiers = [identifier.rsplit(".", 1)[0] for identifier in batch.identifiers]  # type: ignore[attr-defined]
        depth = torch.stack([self.depth[identifier] for identifier in identifiers])
        return ReferenceDepth(depth=depth.to(batch.image.device), mask=None)  # type: ignore[attr-defined]


def save_png(image: torch.Tensor, path: Path) -> None:
    pixels = (image.permute(1, 2, 0) * 127.5 + 128.0).clamp(0, 255).to(torch.uint8).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(pixels)).save(path)


@torch.no_grad()
def build_synthetic_mead(root: Path, generator: torch.nn.Module, persons: int = 2, frames: int = 2,
                         seed: int = 0) -> Path:
    """Render ``persons`` x ``frames`` identities at the five MEAD yaws into the documented layout
    (<root>/<person>/<frame>/<view>.png + dataset.json) and write <root>.bank.pt: per image a key and its
    true ws (for the perfect inverter), per view its depth (for the geometry metric)."""
    pivot = list(generator.rendering_kwargs.get("avg_camera_pivot", (0.0, 0.0, 0.2)))
    rng = torch.Generator().manual_seed(seed)
    labels, keys, bank_ws, view_ids, depths = [], [], [], [], []
    for person in range(persons):
        for frame in range(frames):
            z = torch.randn(1, generator.z_dim, generator=rng)
            ws = generator.mapping(z, look_at_label(0.0, 0.0, pivot=pivot), truncation_psi=0.7)
            planes = generator.synthesize_planes(ws)
            for view, yaw in MEAD_YAWS.items():
                camera = look_at_label(math.radians(yaw), 0.0, pivot=pivot)
                render = generator.render_planes(planes, ws, camera, draws=deterministic_draws(generator, 1, "cpu"))
                relative = f"P{person:03d}/frame{frame:03d}/{view}.png"
                save_png(render.image[0].clamp(-1, 1), root / relative)
                labels.append([relative, camera[0].tolist()])
                keys.append(image_key(render.image.clamp(-1, 1))[0])
                bank_ws.append(ws[0])
                view_ids.append(relative.rsplit(".", 1)[0])
                depths.append(render.image_depth[0])
    (root / "dataset.json").write_text(json.dumps({"labels": labels}))
    bank = root.parent / f"{root.name}.bank.pt"
    torch.save({"keys": torch.stack(keys), "ws": torch.stack(bank_ws), "view_ids": view_ids,
                "depth": torch.stack(depths)}, bank)
    return bank
