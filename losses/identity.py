"""Identity loss L_ID of GOAE eq. (5)/(13) with an ArcFace IR-SE50 face-recognition network.

GOAE (Appendix A) uses "a pre-trained ArcFace network" with weight lambda_3 = 0.25, following pSp.
pSp/e4e use the IR-SE50 ArcFace trained by TreB1eN/InsightFace_Pytorch, released as
``model_ir_se50.pth``. :class:`IRSE50` is our own implementation of that architecture whose
state-dict keys and shapes match that file (``input_layer.*``, ``body.N.shortcut_layer.*``,
``body.N.res_layer.*``, ``output_layer.*``; the full list is ``tests/data/ir_se50_keys.json``).
The layout was read from pSp's ``models/encoders/model_irse.py`` and ``helpers.py``; no code was
taken from them.

Conventions of pSp's ``IDLoss`` kept here (inputs are RGB in [-1, 1], which is also what the
network was trained on: TreB1eN normalises with mean 0.5 / std 0.5):

* the image is 256x256 (larger square images are average-pooled to 256 first, as GOAE's
  ``face_pool`` does with the 512 renders);
* the face region ``[35:223, 32:220]`` (rows, columns; 188x188) is cropped and adaptive-average-pooled
  to 112x112, the ArcFace input size;
* embeddings are L2-normalised; the loss is ``mean_i (1 - <f(y_hat_i), f(y_i)>)``, with the target
  embedding detached.

The weights are NOT in any package (see docs/losses.md). Configure the path to ``model_ir_se50.pth``;
``weights: random`` keeps a random network (tests only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from networks.ir_se import IR50_STAGES, ir_se_body, ir_se_input_layer

from losses.frozen import (
    RANDOM_INIT,
    FrozenNetworkHolder,
    PretrainedWeightsError,
    describe_key_mismatch,
    read_state_dict_file,
)

IR_SE50_ORIGIN = (
    "model_ir_se50.pth: the IR-SE50 ArcFace of TreB1eN/InsightFace_Pytorch, as linked under "
    "'Pretrained Models' -> 'IR-SE50 Model' in the README of eladrich/pixel2style2pixel (pSp) "
    "or omertov/encoder4editing (e4e)"
)

ARCFACE_INPUT_SIZE = 112
ARCFACE_EMBEDDING_DIM = 512
# pSp's face crop (rows 35:223, columns 32:220) of a 256x256 aligned face.
PSP_REFERENCE_SIZE = 256
PSP_FACE_CROP = (35, 223, 32, 220)


class IdentityWeightsError(PretrainedWeightsError):
    """The configured ArcFace IR-SE50 file is missing or is not ``model_ir_se50.pth``."""


class IRSE50(nn.Module):
    """ArcFace IR-SE50 for 112x112 faces: images in [-1, 1] -> L2-normalised 512-d embeddings."""

    def __init__(self, dropout: float = 0.6) -> None:
        super().__init__()
        self.input_layer = ir_se_input_layer()
        self.body = ir_se_body(IR50_STAGES)
        final_size = ARCFACE_INPUT_SIZE // 16  # four stride-2 stages: 112 -> 7
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(512 * final_size * final_size, ARCFACE_EMBEDDING_DIM),
            nn.BatchNorm1d(ARCFACE_EMBEDDING_DIM),
        )

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        """:param faces: [N, 3, 112, 112] in [-1, 1]. :return: [N, 512], unit L2 norm per row."""
        embedding = self.output_layer(self.body(self.input_layer(faces)))
        return F.normalize(embedding, dim=1)


def load_ir_se50(weights: str | Path) -> IRSE50:
    """Build an eval-mode :class:`IRSE50` and load ``model_ir_se50.pth`` strictly.

    :param weights: path to ``model_ir_se50.pth``, or ``"random"`` for an explicitly random network.
    :raises IdentityWeightsError: missing file, unsafe/unreadable file, or keys/shapes that are not
        those of ``model_ir_se50.pth`` (the message names the file and where it comes from).
    """
    network = IRSE50()
    if str(weights) != RANDOM_INIT:
        try:
            state_dict = read_state_dict_file(weights, IR_SE50_ORIGIN)
        except PretrainedWeightsError as error:
            raise IdentityWeightsError(str(error)) from error
        _check_keys_and_shapes(network, state_dict, Path(weights))
        network.load_state_dict(state_dict, strict=True)
    return network.eval()


def _check_keys_and_shapes(network: nn.Module, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    expected = network.state_dict()
    # Files saved before PyTorch 0.4.1 have no BatchNorm `num_batches_tracked`; BatchNorm fills it in.
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        raise IdentityWeightsError(
            f"{path} is not an IR-SE50 ArcFace state dict ({describe_key_mismatch(missing, unexpected)}). "
            f"Expected {IR_SE50_ORIGIN}"
        )
    wrong = [
        f"{k}: {list(v.shape)} (expected {list(expected[k].shape)})"
        for k, v in state_dict.items()
        if v.shape != expected[k].shape
    ]
    if wrong:
        raise IdentityWeightsError(
            f"{path} has IR-SE50 keys with wrong shapes ({len(wrong)}, e.g. {'; '.join(wrong[:3])}). "
            f"Expected {IR_SE50_ORIGIN}"
        )


def crop_face_for_arcface(images: torch.Tensor) -> torch.Tensor:
    """pSp's face crop: [N, 3, S, S] (S >= 256) -> pooled to 256 -> [35:223, 32:220] -> pooled to 112."""
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"expected square RGB images [N, 3, S, S], got {list(images.shape)}")
    if images.shape[-1] < PSP_REFERENCE_SIZE:
        raise ValueError(
            f"the ArcFace crop is defined on {PSP_REFERENCE_SIZE}x{PSP_REFERENCE_SIZE} images, got {images.shape[-1]}"
        )
    if images.shape[-1] != PSP_REFERENCE_SIZE:
        images = F.adaptive_avg_pool2d(images, PSP_REFERENCE_SIZE)
    top, bottom, left, right = PSP_FACE_CROP
    return F.adaptive_avg_pool2d(images[:, :, top:bottom, left:right], ARCFACE_INPUT_SIZE)


@dataclass
class IdentityComparison:
    """Result of comparing reconstructions with their targets.

    loss: mean over the batch of 1 - cosine similarity (differentiable w.r.t. the reconstruction);
    similarity: per-sample cosine similarity [N], detached (for logging and metrics).
    """

    loss: torch.Tensor
    similarity: torch.Tensor


def identity_loss(reconstruction_embedding: torch.Tensor, target_embedding: torch.Tensor) -> torch.Tensor:
    """L_ID (GOAE eq. 5, pSp): mean_i (1 - cos(f(y_hat_i), f(y_i))) for unit-norm embeddings [N, D]."""
    return (1.0 - (reconstruction_embedding * target_embedding).sum(dim=1)).mean()


class IdentityLoss(FrozenNetworkHolder):
    """L_ID with a frozen ArcFace IR-SE50 (kept out of state_dict, parameters() and .train())."""

    def __init__(self, network: nn.Module) -> None:
        """:param network: a face-recognition network, [N, 3, 112, 112] in [-1, 1] -> unit-norm [N, D]
        embeddings; frozen here. Use :meth:`from_weights` for ArcFace IR-SE50."""
        super().__init__(network)

    @classmethod
    def from_weights(cls, weights: str | Path) -> IdentityLoss:
        """pSp's identity loss: IR-SE50 from ``model_ir_se50.pth`` (or ``"random"``; explicit, tests only)."""
        return cls(load_ir_se50(weights))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm ArcFace embeddings [N, 512] of RGB images [N, 3, S, S] in [-1, 1] (S >= 256)."""
        return self.network(crop_face_for_arcface(images))

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> IdentityComparison:
        """Compare reconstructions with targets; the target embedding is detached (pSp)."""
        reconstruction_embedding = self.embed(reconstruction)
        target_embedding = self.embed(target).detach()
        similarity = (reconstruction_embedding * target_embedding).sum(dim=1)
        return IdentityComparison(
            loss=identity_loss(reconstruction_embedding, target_embedding), similarity=similarity.detach()
        )
