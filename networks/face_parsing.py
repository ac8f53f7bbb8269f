"""BiSeNet face parser with the layout of zllrunning/face-parsing.PyTorch (weights ``79999_iter.pth``).

Written from the published architecture (module names, state-dict keys and shapes, class indices and
input normalisation were read from that repository; no code was taken from it). The network is only
used frozen, in eval mode, to find the background of rendered faces (class 0) for GOAE's L_BG.

Architecture (input H x W, any size divisible by 32 is exact; other sizes work with rounding):
* context path ``cp``: a ResNet-18 trunk (``cp.resnet``, no fc) giving features at 1/8, 1/16, 1/32;
  attention-refinement modules on the 1/16 and 1/32 features, a global-average "context" branch, and
  nearest-neighbour upsampling 1/32 -> 1/16 -> 1/8;
* no separate spatial path: the 1/8 ResNet features stand in for it (the released model deleted it);
* feature fusion ``ffm`` of [1/8 ResNet features, 1/8 context features] (128 + 128 -> 256 channels);
* three heads: ``conv_out`` (main, on the fused features) and the auxiliary ``conv_out16`` (on the 1/8
  context features) and ``conv_out32`` (on the 1/16 context features), each upsampled bilinearly with
  ``align_corners=True`` to the input size. Only the main head is needed at inference; the auxiliary
  heads exist so the checkpoint loads strictly and are available through :meth:`BiSeNet.all_heads`.

The released weights contain every parameter, the ResNet-18 trunk included, so the trunk is never
initialised from ImageNet (which would need a download).
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

NUM_FACE_CLASSES = 19
BACKGROUND_CLASS = 0
# Class order of the CelebAMask-HQ labels the released model was trained on (index = class id).
FACE_CLASS_NAMES: tuple[str, ...] = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
    "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)  # fmt: skip
# The parser was trained on 512x512 CelebAMask-HQ crops normalised with the ImageNet statistics.
FACE_PARSER_INPUT_SIZE = 512
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_ORIGIN = (
    "79999_iter.pth from zllrunning/face-parsing.PyTorch (the 'pre-trained model' link in its README)"
)


class FaceParsingWeightsError(RuntimeError):
    """The configured face-parsing weights file is missing or is not the expected BiSeNet checkpoint."""


class ConvBatchNormReLU(nn.Module):
    """Bias-free conv -> BatchNorm -> ReLU (state-dict names ``conv``, ``bn``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class ResidualBlock(nn.Module):
    """ResNet basic block; a 1x1 conv + BN projection shortcut when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Sequential | None = None
        if in_channels != out_channels or stride != 1:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


def _residual_stage(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        ResidualBlock(in_channels, out_channels, stride), ResidualBlock(out_channels, out_channels, 1)
    )


@dataclass
class TrunkFeatures:
    """ResNet-18 features at 1/8 (128 ch), 1/16 (256 ch) and 1/32 (512 ch) of the input size."""

    stride8: torch.Tensor
    stride16: torch.Tensor
    stride32: torch.Tensor


class ResNet18Trunk(nn.Module):
    """ResNet-18 without pooling head or fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _residual_stage(64, 64, 1)
        self.layer2 = _residual_stage(64, 128, 2)
        self.layer3 = _residual_stage(128, 256, 2)
        self.layer4 = _residual_stage(256, 512, 2)

    def forward(self, x: torch.Tensor) -> TrunkFeatures:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        stride8 = self.layer2(self.layer1(x))
        stride16 = self.layer3(stride8)
        return TrunkFeatures(stride8, stride16, self.layer4(stride16))


class AttentionRefinement(nn.Module):
    """Conv block re-weighted per channel by a sigmoid gate computed from its global average."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = ConvBatchNormReLU(in_channels, out_channels)
        self.conv_atten = nn.Conv2d(out_channels, out_channels, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv(x)
        gate = torch.sigmoid(self.bn_atten(self.conv_atten(F.adaptive_avg_pool2d(features, 1))))
        return features * gate


@dataclass
class ContextFeatures:
    """Outputs of the context path: ResNet 1/8 features and the refined context at 1/8 and 1/16."""

    trunk_stride8: torch.Tensor
    context_stride8: torch.Tensor
    context_stride16: torch.Tensor


class ContextPath(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.resnet = ResNet18Trunk()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBatchNormReLU(128, 128)
        self.conv_head16 = ConvBatchNormReLU(128, 128)
        self.conv_avg = ConvBatchNormReLU(512, 128, kernel_size=1)

    def forward(self, x: torch.Tensor) -> ContextFeatures:
        trunk = self.resnet(x)
        global_context = self.conv_avg(F.adaptive_avg_pool2d(trunk.stride32, 1))
        stride32 = self.arm32(trunk.stride32) + global_context  # broadcast == nearest upsampling of a 1x1 map
        context16 = self.conv_head32(F.interpolate(stride32, trunk.stride16.shape[2:], mode="nearest"))
        stride16 = self.arm16(trunk.stride16) + context16
        context8 = self.conv_head16(F.interpolate(stride16, trunk.stride8.shape[2:], mode="nearest"))
        return ContextFeatures(
            trunk_stride8=trunk.stride8, context_stride8=context8, context_stride16=context16
        )


class FeatureFusion(nn.Module):
    """Concatenate two feature maps, mix them, and add a channel-attention re-weighted copy."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.convblk = ConvBatchNormReLU(in_channels, out_channels, kernel_size=1)
        self.conv1 = nn.Conv2d(out_channels, out_channels // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(out_channels // 4, out_channels, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        features = self.convblk(torch.cat([spatial, context], dim=1))
        gate = torch.sigmoid(self.conv2(F.relu(self.conv1(F.adaptive_avg_pool2d(features, 1)))))
        return features + features * gate


class SegmentationHead(nn.Module):
    def __init__(self, in_channels: int, mid_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = ConvBatchNormReLU(in_channels, mid_channels)
        self.conv_out = nn.Conv2d(mid_channels, num_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


@dataclass
class BiSeNetLogits:
    """Logits of all three heads at the input resolution, each [N, classes, H, W]."""

    main: torch.Tensor
    auxiliary_context8: torch.Tensor  # the checkpoint's conv_out16 head
    auxiliary_context16: torch.Tensor  # the checkpoint's conv_out32 head


class BiSeNet(nn.Module):
    """Face-parsing BiSeNet; ``forward`` gives the main head's logits [N, classes, H, W]."""

    def __init__(self, num_classes: int = NUM_FACE_CLASSES) -> None:
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = SegmentationHead(256, 256, num_classes)
        self.conv_out16 = SegmentationHead(128, 64, num_classes)
        self.conv_out32 = SegmentationHead(128, 64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = self.cp(x)
        return _upsample_logits(self.conv_out(self.ffm(context.trunk_stride8, context.context_stride8)), x)

    def all_heads(self, x: torch.Tensor) -> BiSeNetLogits:
        """All three heads (training-time deep supervision); inference needs only ``forward``."""
        context = self.cp(x)
        main = self.conv_out(self.ffm(context.trunk_stride8, context.context_stride8))
        return BiSeNetLogits(
            main=_upsample_logits(main, x),
            auxiliary_context8=_upsample_logits(self.conv_out16(context.context_stride8), x),
            auxiliary_context16=_upsample_logits(self.conv_out32(context.context_stride16), x),
        )


def _upsample_logits(logits: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # align_corners=True is what the released model was trained with.
    return F.interpolate(logits, like.shape[2:], mode="bilinear", align_corners=True)


def normalise_for_face_parser(images: torch.Tensor) -> torch.Tensor:
    """Generator images in [-1, 1] -> the parser's input: 512x512, ImageNet mean/std normalised.

    Resizing is bilinear, antialiased when shrinking (the original pipeline used PIL's BILINEAR
    resize, which also filters when shrinking). Images already 512x512 are not resampled.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"face parser expects RGB images [N, 3, H, W], got {list(images.shape)}")
    size = FACE_PARSER_INPUT_SIZE
    if tuple(images.shape[2:]) != (size, size):
        shrinking = images.shape[2] > size or images.shape[3] > size
        images = F.interpolate(
            images, (size, size), mode="bilinear", align_corners=False, antialias=shrinking
        )
    unit_range = (images + 1.0) / 2.0
    mean = unit_range.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = unit_range.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (unit_range - mean) / std


def load_face_parser(path: str | Path, device: torch.device | str = "cpu") -> BiSeNet:
    """Build a frozen eval-mode BiSeNet and load ``79999_iter.pth`` strictly (weights_only).

    Raises FaceParsingWeightsError naming the file and where it comes from when the file is
    missing, unreadable or not this network's checkpoint (missing/unexpected keys, wrong shapes).
    """
    weights_path = Path(path).expanduser()
    state_dict = _read_state_dict(weights_path)
    parser = BiSeNet()
    _check_keys_and_shapes(state_dict, parser.state_dict(), weights_path)
    parser.load_state_dict(state_dict, strict=True)
    parser.requires_grad_(False)
    return parser.eval().to(device)


def _read_state_dict(weights_path: Path) -> dict[str, torch.Tensor]:
    if not weights_path.is_file():
        raise FaceParsingWeightsError(
            f"face-parsing weights not found at '{weights_path}'. Expected {WEIGHTS_ORIGIN}; "
            "download it yourself and point the configuration at it (nothing is downloaded automatically)."
        )
    try:
        loaded = torch.load(weights_path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as error:
        raise FaceParsingWeightsError(
            f"'{weights_path}' could not be read as a tensor-only state dict ({type(error).__name__}: "
            f"{_first_line(error)}); it is never loaded with weights_only=False. Expected {WEIGHTS_ORIGIN}."
        ) from error
    if not isinstance(loaded, dict) or not all(isinstance(value, torch.Tensor) for value in loaded.values()):
        raise FaceParsingWeightsError(
            f"'{weights_path}' does not hold a plain state dict of tensors (got {type(loaded).__name__}). "
            f"Expected {WEIGHTS_ORIGIN}."
        )
    return _fill_missing_batch_counters(loaded)


def _first_line(error: BaseException) -> str:
    # torch's weights_only message is long and suggests unsafe loading; keep only what is a fact.
    if isinstance(error, pickle.UnpicklingError):
        return "not a PyTorch file, or it holds objects other than tensors"
    text = str(error).strip()
    return text.splitlines()[0] if text else "no details"


def _fill_missing_batch_counters(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # BatchNorm's num_batches_tracked is bookkeeping, not a weight; checkpoints saved by old PyTorch
    # versions lack it, and it does not affect eval-mode outputs.
    reference = BiSeNet().state_dict()
    filled = dict(state_dict)
    for key, value in reference.items():
        if key.endswith("num_batches_tracked") and key not in filled:
            filled[key] = torch.zeros_like(value)
    return filled


def _check_keys_and_shapes(
    loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], weights_path: Path
) -> None:
    missing = [key for key in expected if key not in loaded]
    unexpected = [key for key in loaded if key not in expected]
    wrong_shape = [
        f"{key}: file {list(loaded[key].shape)} vs model {list(value.shape)}"
        for key, value in expected.items()
        if key in loaded and loaded[key].shape != value.shape
    ]
    if not (missing or unexpected or wrong_shape):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (first: {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (first: {unexpected[:3]})")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} shape mismatches (first: {wrong_shape[:3]})")
    raise FaceParsingWeightsError(
        f"'{weights_path}' is not the 19-class BiSeNet face-parsing checkpoint: {'; '.join(problems)}. "
        f"Expected {WEIGHTS_ORIGIN}."
    )
