"""Make PyPI's CUDA-only torchvision 0.28 importable next to the CPU build of torch 2.13.

torchvision's ``_meta_registrations`` registers fake kernels for ``torchvision::nms`` and
``torchvision::qnms`` at import time. Those operator schemas normally come from its
compiled ``_C.so``, which links CUDA libraries and so fails to load on a CPU-only torch:
``import torchvision`` (and every library that imports it: lightning, timm, lpips,
torchmetrics) then dies with "operator torchvision::nms does not exist".

This module defines the two schemas (plus a small pure-torch CPU ``nms`` kernel) *only when
the real ops are missing*, lazily on the first ``import torchvision``. ``scripts/setup.sh``
copies it into the virtual environment's site-packages with a one-line ``.pth`` that calls
``register()``, so every interpreter of that environment (pytest, DDP children) gets it.
On a machine whose torchvision loads its own ops, ``install()`` does nothing.
"""

from __future__ import annotations

import sys

_LIBRARY = None


def _nms_cpu(boxes, scores, iou_threshold: float):
    """Greedy non-maximum suppression (boxes as x1, y1, x2, y2); returns kept indices."""
    import torch

    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    keep: list[int] = []
    suppressed = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    for i in scores.argsort(descending=True).tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        inter = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0) * (
            torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)
        ).clamp(min=0)
        suppressed |= inter / (areas[i] + areas - inter) > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)


def install() -> None:
    """Define the missing torchvision operator schemas; a no-op where they exist."""
    global _LIBRARY
    if _LIBRARY is not None:
        return
    import torch

    try:
        torch.ops.torchvision.nms  # noqa: B018 - attribute access is the probe
        return
    except (AttributeError, RuntimeError):
        pass
    _LIBRARY = torch.library.Library("torchvision", "DEF")
    _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.impl("nms", _nms_cpu, "CPU")


class _InstallOnTorchvisionImport:
    """Meta-path hook: runs ``install()`` right before torchvision is first imported."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            install()
        return None


def register() -> None:
    if not any(isinstance(f, _InstallOnTorchvisionImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _InstallOnTorchvisionImport())
