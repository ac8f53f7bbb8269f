"""Latent editing: loading directions, w+ edits with a list of strengths, the F-space edit (GOAE Eq. 10).

Directions are InterfaceGAN-style w+ deltas. Accepted files:

* ``.npy`` written by numpy (loaded with ``allow_pickle=False``);
* torch files (``.pt``/``.pth``, or any name) holding a tensor, loaded with ``weights_only=True``;
* torch zip archives with a ``.npy`` name (the authors' ``cat_black.npy``/``cat_smalleyes.npy``):
  recognised by the zip magic bytes ``PK``, whatever the suffix.

Accepted shapes: (1, num_ws, w_dim), (num_ws, w_dim) (one delta per layer), or (w_dim,) / (1, w_dim)
(the same delta on every layer). Everything is returned as a float32 [num_ws, w_dim] tensor.

w+ edit: w_edit = w + strength * d (+ an optional strength-independent offset, used for the authors'
glasses decorrelation d = alpha * d_attr - 0.8 * d_glasses, see ``authors_glasses_decorrelated``).

F-space edit (Eq. 10): F_hat = F* + (F(w_edit) - F(w)), where F(.) is the generator's feature map at
the refined block (``b32`` in GOAE) and F* the refined map. The skip (tri-plane) image at that block
is the one of w_edit, and synthesis then continues with the UNEDITED ws for the later blocks
(the authors' code does exactly this); the super-resolution is driven by w_edit when rendering.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from networks.eg3d.generator import TriPlaneGenerator
from networks.eg3d.outputs import BackboneFeatures

NUM_WS = 14  # EG3D 512 models: 14 w vectors
W_DIM = 512
NUMPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
TORCH_SUFFIXES = (".pt", ".pth")
# The authors subtract this multiple of the glasses direction from every non-glasses edit.
AUTHORS_GLASSES_WEIGHT = 0.8


@dataclass(frozen=True)
class EditDirection:
    name: str
    delta: torch.Tensor  # [num_ws, w_dim] float32


@dataclass(frozen=True)
class LatentEdit:
    """w_edit = w + strength * direction + offset (offset [num_ws, w_dim], zero unless stated)."""

    direction: EditDirection
    offset: torch.Tensor

    @classmethod
    def along(cls, direction: EditDirection) -> "LatentEdit":
        """The plain InterfaceGAN edit: strength 0 gives back w exactly."""
        return cls(direction=direction, offset=torch.zeros_like(direction.delta))

    def apply(self, ws: torch.Tensor, strength: float) -> torch.Tensor:
        """ws [N, num_ws, w_dim] -> edited ws of the same shape."""
        if ws.ndim != 3 or tuple(ws.shape[1:]) != tuple(self.direction.delta.shape):
            expected = ", ".join(map(str, self.direction.delta.shape))
            raise ValueError(f"ws must have shape [N, {expected}], got {list(ws.shape)}")
        delta = self.direction.delta.to(ws)
        return ws + strength * delta + self.offset.to(ws)

    def apply_strengths(self, ws: torch.Tensor, strengths: Sequence[float]) -> list[torch.Tensor]:
        """One edited ws per strength, in order."""
        return [self.apply(ws, float(strength)) for strength in strengths]


def authors_glasses_decorrelated(
    direction: EditDirection, glasses: EditDirection, glasses_weight: float = AUTHORS_GLASSES_WEIGHT
) -> LatentEdit:
    """The authors' edit for a NON-glasses attribute: w + alpha * d - 0.8 * d_glasses.

    Their directions are entangled with glasses (e.g. 'age' adds them); the constant offset removes
    them. It does not scale with the strength, so strength 0 is NOT the unedited w with this edit.
    """
    if direction.delta.shape != glasses.delta.shape:
        raise ValueError(
            f"direction {list(direction.delta.shape)} and glasses {list(glasses.delta.shape)} differ in shape"
        )
    return LatentEdit(direction=direction, offset=-glasses_weight * glasses.delta)


# ----------------------------------------------------------------------------- loading
def load_direction(path: str | Path, num_ws: int = NUM_WS, w_dim: int = W_DIM) -> EditDirection:
    """Load a direction file (see module docstring) as a float32 [num_ws, w_dim] delta."""
    path = Path(path)
    raw = _read_direction_array(path)
    delta = _as_layer_deltas(raw, num_ws, w_dim, path)
    if not bool(torch.isfinite(delta).all()):
        raise ValueError(f"{path}: edit direction contains NaN or infinite values")
    return EditDirection(name=path.stem, delta=delta)


def _read_direction_array(path: Path) -> torch.Tensor:
    if not path.is_file():
        raise FileNotFoundError(f"edit direction file not found: {path}")
    with open(path, "rb") as handle:
        magic = handle.read(8)
    if magic.startswith(ZIP_MAGIC):  # torch.save archive, whatever the suffix says
        return _tensor_from_torch_file(path)
    if magic.startswith(NUMPY_MAGIC):
        return torch.from_numpy(np.load(path, allow_pickle=False).astype(np.float32))
    if path.suffix.lower() in TORCH_SUFFIXES:  # torch's legacy (non-zip) format
        return _tensor_from_torch_file(path)
    raise ValueError(f"{path}: not a numpy .npy file nor a torch file (first bytes {magic!r})")


def _tensor_from_torch_file(path: Path) -> torch.Tensor:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, dict):
        tensors = [value for value in loaded.values() if isinstance(value, torch.Tensor)]
        if len(tensors) != 1:
            raise ValueError(
                f"{path}: expected a tensor or a dict with exactly one tensor, got keys {sorted(loaded)}"
            )
        loaded = tensors[0]
    if isinstance(loaded, np.ndarray):
        loaded = torch.from_numpy(loaded)
    if not isinstance(loaded, torch.Tensor):
        raise ValueError(f"{path}: expected a tensor, got {type(loaded).__name__}")
    return loaded.detach().float()


def _as_layer_deltas(raw: torch.Tensor, num_ws: int, w_dim: int, path: Path) -> torch.Tensor:
    shape = tuple(raw.shape)
    if shape in ((1, num_ws, w_dim), (num_ws, w_dim)):
        return raw.reshape(num_ws, w_dim).clone()
    if shape in ((w_dim,), (1, w_dim)):
        return raw.reshape(1, w_dim).expand(num_ws, w_dim).clone()
    raise ValueError(
        f"{path}: edit direction has shape {shape}; "
        f"expected (1, {num_ws}, {w_dim}), ({num_ws}, {w_dim}) or ({w_dim},)"
    )


# ----------------------------------------------------------------------------- F-space edit
@torch.no_grad()
def edit_features(
    G: TriPlaneGenerator,
    ws: torch.Tensor,
    ws_edit: torch.Tensor,
    refined: BackboneFeatures,
    noise_mode: str = "const",
) -> BackboneFeatures:
    """Eq. 10: F_hat = F* + (F(ws_edit) - F(ws)) at ``refined.block``; skip image of ws_edit.

    The difference is formed first so that ws_edit == ws gives F* back bit for bit.
    """
    if ws.shape != ws_edit.shape:
        raise ValueError(f"ws {list(ws.shape)} and ws_edit {list(ws_edit.shape)} differ in shape")
    unedited = G.synthesize_features(ws, refined.block, noise_mode)
    edited = G.synthesize_features(ws_edit, refined.block, noise_mode)
    if unedited.features.shape != refined.features.shape:
        raise ValueError(
            f"refined features {list(refined.features.shape)} do not match the generator's "
            f"{refined.block} features {list(unedited.features.shape)}"
        )
    return BackboneFeatures(
        block=refined.block,
        features=refined.features + (edited.features - unedited.features),
        skip_image=edited.skip_image,
    )


@torch.no_grad()
def edited_planes(
    G: TriPlaneGenerator,
    ws: torch.Tensor,
    ws_edit: torch.Tensor,
    refined: BackboneFeatures,
    noise_mode: str = "const",
) -> torch.Tensor:
    """Tri-planes of the F-space edit: ``edit_features``, then the later blocks driven by the UNEDITED ws.

    GOAE then mixes these with ``G.synthesize_planes(ws_edit)`` (occlusion-aware mix, stage 2) and
    renders with ws_edit; both are left to the caller.
    """
    features = edit_features(G, ws, ws_edit, refined, noise_mode)
    return G.synthesize_planes_from_features(ws, features, noise_mode)
