"""Image reconstruction losses of GOAE eq. (5)/(13): pixel L2 (lambda_1 = 1.0) and LPIPS (lambda_2 = 0.8).

* Pixel "L2" is pSp's: ``F.mse_loss`` (mean of squared differences over all pixels, channels and
  samples), not the un-squared norm the paper's ``||I_w+ - I||_2`` notation suggests; every pSp-family
  encoder (e4e, TriPlaneNet, GOAE) trains with the MSE.
* LPIPS is the ``lpips`` package's v0.1 AlexNet metric (pSp/e4e use AlexNet; the paper does not say):
  inputs in [-1, 1], per-layer unit-normalised features, learned linear heads (shipped in the lpips
  wheel), spatial average, summed over the five layers; averaged over the batch. ``net="vgg"`` gives
  the package's VGG16 variant (PTI's pivot search uses a VGG16 LPIPS).

The ImageNet backbones are NOT in any package and ``lpips.LPIPS(net='alex')`` would download them.
We therefore build lpips with ``pnet_rand=True`` (no download; the linear heads still come from the
wheel) and load the backbone from a configured local copy of torchvision's ``alexnet-owt-7be5be79.pth``
(or ``vgg16-397923af.pth``), or keep it random when the config says ``backbone_weights: random`` (tests only).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from losses.frozen import (
    RANDOM_INIT,
    FrozenNetworkHolder,
    PretrainedWeightsError,
    describe_key_mismatch,
    read_state_dict_file,
)

ALEXNET_ORIGIN = (
    "alexnet-owt-7be5be79.pth: torchvision's ImageNet AlexNet, downloadable from "
    "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth (what torchvision.models.alexnet("
    "weights='IMAGENET1K_V1') fetches into ~/.cache/torch/hub/checkpoints/)"
)

VGG16_ORIGIN = (
    "vgg16-397923af.pth: torchvision's ImageNet VGG16, downloadable from "
    "https://download.pytorch.org/models/vgg16-397923af.pth (what torchvision.models.vgg16("
    "weights='IMAGENET1K_V1') fetches into ~/.cache/torch/hub/checkpoints/)"
)
# lpips network name -> where its torchvision backbone file comes from (named in every weights error).
BACKBONE_ORIGINS = {"alex": ALEXNET_ORIGIN, "vgg": VGG16_ORIGIN}
BACKBONE_NAMES = {ALEXNET_ORIGIN: "AlexNet", VGG16_ORIGIN: "VGG16"}


class LPIPSWeightsError(PretrainedWeightsError):
    """The configured AlexNet backbone file is missing or is not torchvision's AlexNet."""


def pixel_l2_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_2 of GOAE eq. (5) as implemented by pSp: mean squared error over all elements."""
    return F.mse_loss(reconstruction, target)


def _build_lpips(net: str = "alex") -> nn.Module:
    import lpips  # imported here: it imports torchvision, which the rest of the package does not need

    if net not in BACKBONE_ORIGINS:
        raise ValueError(f"LPIPS network must be one of {sorted(BACKBONE_ORIGINS)}, got {net!r}")
    with warnings.catch_warnings():
        # torchvision's deprecation warnings about `pretrained=` inside lpips; nothing is downloaded.
        warnings.simplefilter("ignore", UserWarning)
        return lpips.LPIPS(pretrained=True, net=net, version="0.1", pnet_rand=True, verbose=False)


def load_torchvision_backbone(lpips_model: nn.Module, weights: str | Path, origin: str = ALEXNET_ORIGIN) -> None:
    """Copy torchvision ``features.*`` conv weights into an lpips AlexNet (or VGG16, with its
    ``origin``) in place.

    lpips keeps torchvision's ``features`` modules under their original indices, split into
    ``net.slice1..5`` (``net.slice2.3.weight`` is ``features.3.weight``), so the mapping is by index.
    The classifier weights in the file are ignored.

    :raises LPIPSWeightsError: missing/unreadable file, or the conv keys/shapes are not the network's.
    """
    try:
        state_dict = read_state_dict_file(weights, origin)
    except PretrainedWeightsError as error:
        raise LPIPSWeightsError(str(error)) from error
    targets: dict[str, torch.Tensor] = {}
    for slice_name, block in lpips_model.net.named_children():
        if not slice_name.startswith("slice"):
            continue
        for index, layer in block.named_children():
            if isinstance(layer, nn.Conv2d):
                targets[f"features.{index}.weight"] = layer.weight
                targets[f"features.{index}.bias"] = layer.bias
    missing = [key for key in targets if key not in state_dict]
    unexpected = [key for key in state_dict if key.startswith("features.") and key not in targets]
    if missing or unexpected:
        raise LPIPSWeightsError(
            f"{weights} is not a torchvision {BACKBONE_NAMES[origin]} state dict "
            f"({describe_key_mismatch(missing, unexpected)}). Expected {origin}"
        )
    for key, parameter in targets.items():
        if state_dict[key].shape != parameter.shape:
            raise LPIPSWeightsError(
                f"{weights}: {key} has shape {list(state_dict[key].shape)}, {BACKBONE_NAMES[origin]} has "
                f"{list(parameter.shape)}. Expected {origin}"
            )
    with torch.no_grad():
        for key, parameter in targets.items():
            parameter.copy_(state_dict[key])


class LPIPSLoss(FrozenNetworkHolder):
    """LPIPS v0.1 (AlexNet, or VGG16 with ``net="vgg"``) between images in [-1, 1], averaged over the
    batch; frozen.

    The lpips network is kept out of ``state_dict()``, ``parameters()`` and ``.train()`` (see
    :mod:`losses.frozen`), so checkpoints stay small and DDP never sees it.
    """

    def __init__(self, backbone_weights: str | Path, net: str = "alex") -> None:
        """:param backbone_weights: path to ``alexnet-owt-7be5be79.pth`` (``vgg16-397923af.pth`` for
        ``net="vgg"``), or ``"random"`` (an explicit choice; tests only)."""
        network = _build_lpips(net)
        if str(backbone_weights) != RANDOM_INIT:
            load_torchvision_backbone(network, backbone_weights, BACKBONE_ORIGINS[net])
        super().__init__(network)

    def per_sample(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """LPIPS distance of each pair, [N]."""
        return self.network(reconstruction, target).flatten()

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """L_LPIPS of GOAE eq. (5): mean over the batch of the LPIPS distance."""
        return self.per_sample(reconstruction, target).mean()
