"""MTCNN face detector (Zhang et al. 2016) on the weights that ship inside the facenet-pytorch wheel.

Ported from facenet-pytorch 2.6.0 (MIT licence, (c) 2019 Timothy Esler): the P/R/O-Net layer
definitions must keep its state-dict keys so its `data/{pnet,rnet,onet}.pt` load unchanged; the
cascade is rewritten here because facenet-pytorch's own `detect()` breaks on numpy 2 and needs
torchvision's compiled NMS. Differences from facenet-pytorch, both towards the original MTCNN
(and the `mtcnn` package EG3D's preprocessing uses): candidate boxes that leave the image are
zero-padded instead of being squeezed into the visible part, and NMS is pure torch.

Coordinates: inside the cascade, boxes are 1-based inclusive pixel rectangles (MTCNN comes from
MATLAB); the returned boxes and landmarks are 0-based pixel-index coordinates (the centre of the
top-left pixel is (0, 0)), as the reference implementations report landmarks.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

# The original MTCNN settings, also the defaults of facenet-pytorch and of the `mtcnn` package.
DEFAULT_MIN_FACE_SIZE = 20
DEFAULT_STAGE_THRESHOLDS = (0.6, 0.7, 0.7)
DEFAULT_PYRAMID_FACTOR = 0.709
WEIGHT_FILE_NAMES = ("pnet.pt", "rnet.pt", "onet.pt")

# P-Net sees 12x12 windows with stride 2 on every pyramid level.
_PNET_CELL_SIZE = 12
_PNET_STRIDE = 2
_RNET_INPUT_SIZE = 24
_ONET_INPUT_SIZE = 48
_MAX_NETWORK_BATCH = 512  # bounds memory when an image yields thousands of candidates


class Overlap(Enum):
    """How NMS measures the overlap of two boxes."""

    UNION = "union"  # intersection over union
    MINIMUM = "minimum"  # intersection over the smaller box (MTCNN's last stage)


@dataclass(frozen=True)
class MtcnnFaces:
    """Faces found in one image, sorted by decreasing score."""

    boxes: np.ndarray  # [F, 4] x1, y1, x2, y2
    scores: np.ndarray  # [F] O-Net face probability
    landmarks: np.ndarray  # [F, 5, 2] left eye, right eye, nose, left mouth corner, right mouth corner (image left/right)


class PNet(nn.Module):
    """Proposal network: fully convolutional, face probability + box offsets per 12x12 window."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[N,3,H,W] -> (box offsets [N,4,h,w], face probability [N,h,w])."""
        features = self.pool1(self.prelu1(self.conv1(images)))
        features = self.prelu3(self.conv3(self.prelu2(self.conv2(features))))
        face_probability = torch.softmax(self.conv4_1(features), dim=1)[:, 1]
        return self.conv4_2(features), face_probability


class RNet(nn.Module):
    """Refinement network on 24x24 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[N,3,24,24] -> (box offsets [N,4], face probability [N])."""
        features = self.pool1(self.prelu1(self.conv1(crops)))
        features = self.pool2(self.prelu2(self.conv2(features)))
        features = self.prelu3(self.conv3(features))
        # The weights were converted from Caffe, which flattens in (W, H, C) order.
        features = features.permute(0, 3, 2, 1).reshape(features.shape[0], -1)
        features = self.prelu4(self.dense4(features))
        return self.dense5_2(features), torch.softmax(self.dense5_1(features), dim=1)[:, 1]


class ONet(nn.Module):
    """Output network on 48x48 crops: final score, box offsets and 5 landmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[N,3,48,48] -> (box offsets [N,4], landmarks [N,10] as 5 x then 5 y in [0,1], probability [N])."""
        features = self.pool1(self.prelu1(self.conv1(crops)))
        features = self.pool2(self.prelu2(self.conv2(features)))
        features = self.pool3(self.prelu3(self.conv3(features)))
        features = self.prelu4(self.conv4(features))
        features = features.permute(0, 3, 2, 1).reshape(features.shape[0], -1)
        features = self.prelu5(self.dense5(features))
        face_probability = torch.softmax(self.dense6_1(features), dim=1)[:, 1]
        return self.dense6_2(features), self.dense6_3(features), face_probability


def facenet_pytorch_weights_dir() -> Path | None:
    """Folder of the MTCNN weights inside the installed facenet-pytorch wheel, or None.

    Found without importing facenet_pytorch: its __init__ imports torchvision ops that may not
    load with our pins.
    """
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    weights_dir = Path(next(iter(spec.submodule_search_locations))) / "data"
    return weights_dir if all((weights_dir / name).is_file() for name in WEIGHT_FILE_NAMES) else None


def missing_weight_files(weights_dir: Path) -> list[Path]:
    return [weights_dir / name for name in WEIGHT_FILE_NAMES if not (weights_dir / name).is_file()]


class Mtcnn:
    """The three-stage cascade. Call `detect(rgb_uint8_image)`."""

    def __init__(
        self,
        weights_dir: Path,
        min_face_size: int = DEFAULT_MIN_FACE_SIZE,
        stage_thresholds: tuple[float, float, float] = DEFAULT_STAGE_THRESHOLDS,
        pyramid_factor: float = DEFAULT_PYRAMID_FACTOR,
    ) -> None:
        missing = missing_weight_files(weights_dir)
        if missing:
            raise FileNotFoundError(f"MTCNN weight files not found: {', '.join(str(path) for path in missing)}")
        self.pnet = _load_network(PNet(), weights_dir / "pnet.pt")
        self.rnet = _load_network(RNet(), weights_dir / "rnet.pt")
        self.onet = _load_network(ONet(), weights_dir / "onet.pt")
        self.min_face_size = min_face_size
        self.stage_thresholds = stage_thresholds
        self.pyramid_factor = pyramid_factor

    @torch.no_grad()
    def detect(self, rgb_image: np.ndarray) -> MtcnnFaces:
        """Faces in an [H,W,3] uint8 RGB image."""
        if rgb_image.ndim != 3 or rgb_image.shape[2] != 3:
            raise ValueError(f"expected an [H, W, 3] RGB image, got shape {list(rgb_image.shape)}")
        image = np.ascontiguousarray(rgb_image, dtype=np.float32)
        candidates = self._proposal_stage(image)
        candidates = self._refinement_stage(image, candidates)
        return self._output_stage(image, candidates)

    def _pyramid_scales(self, height: int, width: int) -> list[float]:
        # Scale so that the smallest wanted face becomes one 12-pixel P-Net window.
        scale = _PNET_CELL_SIZE / self.min_face_size
        shorter_side = min(height, width) * scale
        scales = []
        while shorter_side >= _PNET_CELL_SIZE:
            scales.append(scale)
            scale *= self.pyramid_factor
            shorter_side *= self.pyramid_factor
        return scales

    def _proposal_stage(self, image: np.ndarray) -> torch.Tensor:
        """[K, 5] square candidate boxes (x1, y1, x2, y2, score) from P-Net over the pyramid."""
        height, width = image.shape[:2]
        per_scale = []
        for scale in self._pyramid_scales(height, width):
            # INTER_AREA as the reference implementations (and fast in C, unlike per-crop torch calls).
            resized = cv2.resize(
                image, (int(width * scale + 1), int(height * scale + 1)), interpolation=cv2.INTER_AREA
            )
            offsets, probability = self.pnet(_to_network_input(resized[None]))
            boxes = _windows_above_threshold(offsets[0], probability[0], scale, self.stage_thresholds[0])
            per_scale.append(boxes[non_maximum_suppression(boxes[:, :4], boxes[:, 4], 0.5, Overlap.UNION)])
        boxes = torch.cat(per_scale) if per_scale else torch.zeros(0, 9)
        boxes = boxes[non_maximum_suppression(boxes[:, :4], boxes[:, 4], 0.7, Overlap.UNION)]
        refined = _apply_box_offsets(boxes[:, :5], boxes[:, 5:9], inclusive_size=False)
        return _truncate_corners(_square_boxes(refined))

    def _refinement_stage(self, image: np.ndarray, boxes: torch.Tensor) -> torch.Tensor:
        if boxes.shape[0] == 0:
            return boxes
        crops = _crop_and_resize(image, boxes, _RNET_INPUT_SIZE)
        offsets, probability = _run_in_chunks(self.rnet, crops)
        keep = probability > self.stage_thresholds[1]
        boxes = torch.cat([boxes[keep, :4], probability[keep, None]], dim=1)
        offsets = offsets[keep]
        picked = non_maximum_suppression(boxes[:, :4], boxes[:, 4], 0.7, Overlap.UNION)
        return _truncate_corners(_square_boxes(_apply_box_offsets(boxes[picked], offsets[picked], inclusive_size=True)))

    def _output_stage(self, image: np.ndarray, boxes: torch.Tensor) -> MtcnnFaces:
        if boxes.shape[0] == 0:
            return _no_faces()
        crops = _crop_and_resize(image, boxes, _ONET_INPUT_SIZE)
        offsets, landmark_fractions, probability = _run_in_chunks(self.onet, crops)
        keep = probability > self.stage_thresholds[2]
        boxes = torch.cat([boxes[keep, :4], probability[keep, None]], dim=1)
        offsets, landmark_fractions = offsets[keep], landmark_fractions[keep]
        # Landmarks are fractions of the (integer, 1-based inclusive) O-Net input box; the -1
        # converts to 0-based pixels, as in the reference code.
        box_width = boxes[:, 2] - boxes[:, 0] + 1
        box_height = boxes[:, 3] - boxes[:, 1] + 1
        landmarks_x = box_width[:, None] * landmark_fractions[:, :5] + boxes[:, 0, None] - 1
        landmarks_y = box_height[:, None] * landmark_fractions[:, 5:] + boxes[:, 1, None] - 1
        landmarks = torch.stack([landmarks_x, landmarks_y], dim=-1)
        boxes = _apply_box_offsets(boxes, offsets, inclusive_size=True)
        picked = non_maximum_suppression(boxes[:, :4], boxes[:, 4], 0.7, Overlap.MINIMUM)
        boxes, landmarks = boxes[picked], landmarks[picked]
        order = torch.argsort(boxes[:, 4], descending=True)
        return MtcnnFaces(
            boxes=boxes[order, :4].numpy().astype(np.float64) - 1.0,
            scores=boxes[order, 4].numpy().astype(np.float64),
            landmarks=landmarks[order].numpy().astype(np.float64),
        )


def non_maximum_suppression(
    boxes: torch.Tensor, scores: torch.Tensor, threshold: float, overlap: Overlap
) -> torch.Tensor:
    """Indices of the boxes kept by greedy NMS, highest score first.

    Boxes are inclusive pixel rectangles (area (x2 - x1 + 1) * (y2 - y1 + 1)), as in MTCNN.
    A box is dropped when its overlap with an already kept box exceeds `threshold`.
    """
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long)
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    remaining = torch.argsort(scores, descending=True)
    kept = []
    while remaining.numel() > 0:
        best, others = remaining[0], remaining[1:]
        kept.append(best)
        width = (torch.minimum(x2[best], x2[others]) - torch.maximum(x1[best], x1[others]) + 1).clamp(min=0)
        height = (torch.minimum(y2[best], y2[others]) - torch.maximum(y1[best], y1[others]) + 1).clamp(min=0)
        intersection = width * height
        if overlap is Overlap.MINIMUM:
            ratio = intersection / torch.minimum(areas[best], areas[others])
        else:
            ratio = intersection / (areas[best] + areas[others] - intersection)
        remaining = others[ratio <= threshold]
    return torch.stack(kept)


def _load_network(network: nn.Module, weights_path: Path) -> nn.Module:
    try:
        state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
        network.load_state_dict(state_dict)
    except Exception as error:  # noqa: BLE001 - re-raised with the culprit file named
        raise RuntimeError(f"cannot load MTCNN weights from {weights_path}: {error}") from error
    return network.eval()


def _to_network_input(images: np.ndarray) -> torch.Tensor:
    """[N,H,W,3] float RGB in [0, 255] -> [N,3,H,W] in about [-1, 1]."""
    return (torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2) - 127.5) * 0.0078125


def _windows_above_threshold(
    offsets: torch.Tensor, probability: torch.Tensor, scale: float, threshold: float
) -> torch.Tensor:
    """[K, 9] boxes (x1, y1, x2, y2, score, 4 offsets) of P-Net windows scoring >= threshold."""
    rows, columns = torch.nonzero(probability >= threshold, as_tuple=True)
    top_left = torch.stack([columns, rows], dim=1).float()
    corner_1 = ((_PNET_STRIDE * top_left + 1) / scale).floor()
    corner_2 = ((_PNET_STRIDE * top_left + _PNET_CELL_SIZE) / scale).floor()
    window_offsets = offsets[:, rows, columns].T
    return torch.cat([corner_1, corner_2, probability[rows, columns, None], window_offsets], dim=1)


def _apply_box_offsets(boxes: torch.Tensor, offsets: torch.Tensor, inclusive_size: bool) -> torch.Tensor:
    """Shift box corners by offsets given in units of the box size.

    P-Net's offsets are relative to x2 - x1, R-Net's and O-Net's to x2 - x1 + 1 (as in the
    reference implementations, whose numbers the weights were trained with).
    """
    extra = 1.0 if inclusive_size else 0.0
    width = boxes[:, 2] - boxes[:, 0] + extra
    height = boxes[:, 3] - boxes[:, 1] + extra
    size = torch.stack([width, height, width, height], dim=1)
    return torch.cat([boxes[:, :4] + offsets * size, boxes[:, 4:]], dim=1)


def _square_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """Grow each box to a square around its centre (the next network expects square crops)."""
    width = boxes[:, 2] - boxes[:, 0]
    height = boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(width, height)
    x1 = boxes[:, 0] + width * 0.5 - side * 0.5
    y1 = boxes[:, 1] + height * 0.5 - side * 0.5
    return torch.cat([torch.stack([x1, y1, x1 + side, y1 + side], dim=1), boxes[:, 4:]], dim=1)


def _truncate_corners(boxes: torch.Tensor) -> torch.Tensor:
    """Integer corners (MATLAB's fix, towards zero) as the original cascade uses between stages."""
    return torch.cat([boxes[:, :4].trunc(), boxes[:, 4:]], dim=1)


def _crop_and_resize(image: np.ndarray, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """[K,3,size,size] network inputs cut from 1-based inclusive integer boxes; outside the image is zero."""
    height, width = image.shape[:2]
    crops = []
    # Shift to 0-based inclusive corners.
    for x1, y1, x2, y2 in (boxes[:, :4].long() - 1).tolist():
        crop_width, crop_height = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        canvas = np.zeros((crop_height, crop_width, 3), dtype=np.float32)
        visible_x1, visible_y1 = max(x1, 0), max(y1, 0)
        visible_x2, visible_y2 = min(x2, width - 1), min(y2, height - 1)
        if visible_x2 >= visible_x1 and visible_y2 >= visible_y1:
            canvas[visible_y1 - y1 : visible_y2 - y1 + 1, visible_x1 - x1 : visible_x2 - x1 + 1] = image[
                visible_y1 : visible_y2 + 1, visible_x1 : visible_x2 + 1
            ]
        crops.append(cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA))
    return _to_network_input(np.stack(crops))


def _run_in_chunks(network: nn.Module, crops: torch.Tensor) -> tuple[torch.Tensor, ...]:
    outputs = [network(crops[start : start + _MAX_NETWORK_BATCH]) for start in range(0, crops.shape[0], _MAX_NETWORK_BATCH)]
    return tuple(torch.cat(parts) for parts in zip(*outputs))


def _no_faces() -> MtcnnFaces:
    return MtcnnFaces(boxes=np.zeros((0, 4)), scores=np.zeros(0), landmarks=np.zeros((0, 5, 2)))
