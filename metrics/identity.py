"""Identity similarity (ID, higher is better): ArcFace cosine similarity between prediction and target.

Pipeline per image: align a 112x112 face (:class:`FaceAligner`), embed it (a face-recognition network),
L2-normalise, and take the cosine of the prediction's and the target's embeddings.

* Recognition networks: our IR-SE50 (``model_ir_se50.pth``, :mod:`losses.identity`; the default, as in
  pSp/e4e/GOAE's identity loss) or insightface's ONNX recognition model (e.g. ``w600k_r50.onnx`` of
  the ``buffalo_l`` pack) from a configured file or pack folder (:class:`OnnxFaceRecognizer`).
* Alignment: pSp's fixed crop of the (already FFHQ/EG3D-aligned) image, the default
  (:class:`PspCropAligner`), or a 5-landmark face detector (``data_prep.face_detection``) and a
  similarity warp onto ArcFace's 112x112 template (:class:`DetectorAligner`).

Failures are counted, never dropped silently: a pair is not evaluated when the detector finds no face
in either image, or either embedding is not finite or has (near) zero norm. ``failed_pairs``,
``failed_predictions`` and ``failed_targets`` are summed across ranks like the similarities, and
:meth:`IdentitySimilarity.report` returns them with the mean.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from losses.identity import ARCFACE_INPUT_SIZE, crop_face_for_arcface, load_ir_se50
from metrics.base import EmptyMetricError, FrozenNetworksMetric, check_image_pair, check_images, clip_signed

# insightface's arcface_dst: where the 5 landmarks (eyes, nose tip, mouth corners, image left to right)
# of a 112x112 ArcFace input lie.
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
# Recognition models of insightface packs, best first (buffalo_l, antelopev2, buffalo_m/s).
INSIGHTFACE_RECOGNITION_FILES = ("w600k_r50.onnx", "glintr100.onnx", "w600k_mbf.onnx")
MIN_EMBEDDING_NORM = 1e-6


class RecognitionModelError(RuntimeError):
    """The configured face-recognition model file or pack folder is unusable."""


@dataclass(frozen=True)
class AlignedFaces:
    faces: torch.Tensor  # [N, 3, 112, 112] in [-1, 1]
    found: torch.Tensor  # [N] bool: False where no face was detected (the face tensor is then zeros)


class FaceAligner(Protocol):
    def align(self, images: torch.Tensor) -> AlignedFaces:
        """Images ``[N, 3, H, W]`` in [-1, 1] -> 112x112 faces for ArcFace."""
        ...


class PspCropAligner:
    """pSp's crop ``[35:223, 32:220]`` of the 256x256-pooled image; images must be aligned faces, S >= 256."""

    def align(self, images: torch.Tensor) -> AlignedFaces:
        faces = crop_face_for_arcface(images)
        return AlignedFaces(faces=faces, found=torch.ones(images.shape[0], dtype=torch.bool, device=images.device))


class DetectorAligner:
    """Detect 5 landmarks (the most confident face) and warp the face onto ArcFace's template.

    :param detector: anything with ``detect(rgb_uint8_hwc) -> list[FaceDetection]`` (``data_prep``'s
        MTCNN or insightface detectors).
    """

    def __init__(self, detector: object) -> None:
        self.detector = detector

    def align(self, images: torch.Tensor) -> AlignedFaces:
        import cv2
        from skimage.transform import SimilarityTransform

        check_images(images)
        pixels = ((clip_signed(images) + 1.0) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        faces = np.zeros((images.shape[0], ARCFACE_INPUT_SIZE, ARCFACE_INPUT_SIZE, 3), dtype=np.float32)
        found = torch.zeros(images.shape[0], dtype=torch.bool)
        for index, rgb in enumerate(pixels):
            detections = self.detector.detect(np.ascontiguousarray(rgb))  # type: ignore[attr-defined]
            if not detections:
                continue
            transform = SimilarityTransform.from_estimate(detections[0].landmarks5, ARCFACE_TEMPLATE_112)
            if not transform:
                continue
            faces[index] = cv2.warpAffine(rgb.astype(np.float32), transform.params[:2],
                                          (ARCFACE_INPUT_SIZE, ARCFACE_INPUT_SIZE), borderValue=0.0)
            found[index] = True
        tensor = torch.from_numpy(faces).permute(0, 3, 1, 2).to(images.device, images.dtype) / 127.5 - 1.0
        tensor[~found.to(images.device)] = 0.0
        return AlignedFaces(faces=tensor, found=found.to(images.device))


class OnnxFaceRecognizer:
    """insightface's ONNX ArcFace (e.g. ``w600k_r50.onnx``): 112x112 RGB faces -> raw embeddings.

    Input scaling follows insightface: a graph that starts with its own Sub and Mul nodes takes raw
    0-255 pixels, any other takes ``(pixel - 127.5) / 127.5`` (our [-1, 1]).
    """

    def __init__(self, model: str | Path) -> None:
        import onnx
        import onnxruntime

        path = self.find_model(Path(model).expanduser())
        graph = onnx.load(str(path)).graph
        leading = [node.name for node in graph.node[:8]]
        has_sub = any(name.startswith(("Sub", "_minus")) for name in leading)
        has_mul = any(name.startswith(("Mul", "_mul")) for name in leading)
        self.takes_raw_pixels = has_sub and has_mul
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                     if p in onnxruntime.get_available_providers()]
        self.session = onnxruntime.InferenceSession(str(path), providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.model_path = path

    @staticmethod
    def find_model(model: Path) -> Path:
        if model.is_file():
            return model
        if model.is_dir():
            for name in INSIGHTFACE_RECOGNITION_FILES:
                if (model / name).is_file():
                    return model / name
        raise RecognitionModelError(
            f"no insightface recognition model at {model}: expected an .onnx file or a pack folder holding one of "
            f"{', '.join(INSIGHTFACE_RECOGNITION_FILES)} (insightface's buffalo_l pack from "
            "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip, unzipped)"
        )

    def __call__(self, faces: torch.Tensor) -> torch.Tensor:
        blob = (faces + 1.0) * 127.5 if self.takes_raw_pixels else faces
        output = self.session.run(None, {self.input_name: blob.detach().float().cpu().numpy()})[0]
        return torch.from_numpy(np.asarray(output)).to(faces.device)


def normalise_embeddings(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm rows and their validity (finite and not (near) zero)."""
    raw = raw.float()
    norms = raw.norm(dim=1)
    valid = torch.isfinite(raw).all(dim=1) & (norms > MIN_EMBEDDING_NORM)
    return F.normalize(torch.nan_to_num(raw), dim=1), valid


@dataclass(frozen=True)
class IdentityPerImage:
    similarity: torch.Tensor  # [N] cosine; NaN where the pair failed
    prediction_valid: torch.Tensor  # [N] bool
    target_valid: torch.Tensor  # [N] bool


@dataclass(frozen=True)
class IdentityReport:
    mean_similarity: float  # NaN when no pair was evaluated
    evaluated: int
    failed_pairs: int
    failed_predictions: int
    failed_targets: int

    def scalars(self, prefix: str = "id") -> dict[str, float]:
        return {prefix: self.mean_similarity, f"{prefix}/evaluated": float(self.evaluated),
                f"{prefix}/failed_pairs": float(self.failed_pairs),
                f"{prefix}/failed_predictions": float(self.failed_predictions),
                f"{prefix}/failed_targets": float(self.failed_targets)}


Recognizer = Callable[[torch.Tensor], torch.Tensor]


class IdentitySimilarity(FrozenNetworksMetric):
    """Mean ArcFace cosine similarity over the pairs where both faces were embedded; failures counted."""

    higher_is_better = True
    is_differentiable = False
    full_state_update = False

    def __init__(self, recognizer: Recognizer, aligner: FaceAligner | None = None, **kwargs: object) -> None:
        """:param recognizer: 112x112 faces in [-1, 1] -> raw embeddings ``[N, D]`` (an ``nn.Module`` is frozen
        and kept out of ``state_dict``). :param aligner: default :class:`PspCropAligner`."""
        super().__init__(**kwargs)
        self._freeze(*([recognizer] if isinstance(recognizer, nn.Module) else []))
        self._recognizer = (recognizer,)  # a tuple: never a registered child
        self.aligner: FaceAligner = aligner if aligner is not None else PspCropAligner()
        self.add_state("similarity_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("evaluated", "failed_pairs", "failed_predictions", "failed_targets"):
            self.add_state(name, torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-norm embeddings ``[N, D]`` and validity ``[N]`` of images in [-1, 1]."""
        aligned = self.aligner.align(clip_signed(images))
        embeddings, valid = normalise_embeddings(self._recognizer[0](aligned.faces))
        return embeddings, valid & aligned.found.to(valid.device)

    def per_image(self, prediction: torch.Tensor, target: torch.Tensor) -> IdentityPerImage:
        check_image_pair(prediction, target)
        prediction_embedding, prediction_valid = self.embed(prediction)
        target_embedding, target_valid = self.embed(target)
        similarity = (prediction_embedding * target_embedding).sum(dim=1)
        similarity = torch.where(prediction_valid & target_valid, similarity, torch.full_like(similarity, float("nan")))
        return IdentityPerImage(similarity=similarity, prediction_valid=prediction_valid, target_valid=target_valid)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        scores = self.per_image(prediction, target)
        both = scores.prediction_valid & scores.target_valid
        self.similarity_sum += scores.similarity[both].double().sum()
        self.evaluated += int(both.sum())
        self.failed_pairs += int((~both).sum())
        self.failed_predictions += int((~scores.prediction_valid).sum())
        self.failed_targets += int((~scores.target_valid).sum())

    def compute(self) -> torch.Tensor:
        if int(self.evaluated) == 0:
            raise EmptyMetricError(f"IdentitySimilarity: no pair evaluated ({int(self.failed_pairs)} failed)")
        return (self.similarity_sum / self.evaluated).float()

    def report(self) -> IdentityReport:
        """Mean and failure counts over all ranks (collective: call on every rank)."""
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync):
            evaluated = int(self.evaluated)
            return IdentityReport(
                mean_similarity=float(self.similarity_sum / evaluated) if evaluated else float("nan"),
                evaluated=evaluated, failed_pairs=int(self.failed_pairs),
                failed_predictions=int(self.failed_predictions), failed_targets=int(self.failed_targets),
            )


def identity_similarity_ir_se50(weights: str | Path, aligner: FaceAligner | None = None) -> IdentitySimilarity:
    """The default ID metric: IR-SE50 from ``model_ir_se50.pth`` (``"random"``: tests only)."""
    return IdentitySimilarity(load_ir_se50(weights), aligner)


def identity_similarity_onnx(model: str | Path, aligner: FaceAligner | None = None) -> IdentitySimilarity:
    """insightface's ONNX recognition model from a file or a pack folder."""
    return IdentitySimilarity(OnnxFaceRecognizer(model), aligner)


__all__: Sequence[str] = (
    "AlignedFaces", "DetectorAligner", "FaceAligner", "IdentityPerImage", "IdentityReport", "IdentitySimilarity",
    "OnnxFaceRecognizer", "PspCropAligner", "RecognitionModelError", "identity_similarity_ir_se50",
    "identity_similarity_onnx", "normalise_embeddings",
)
