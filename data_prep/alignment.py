"""EG3D's in-the-wild face crop, reproduced from the 5 detected landmarks.

The procedure (EG3D dataset_preprocessing/ffhq, which calls Deep3DFaceRecon_pytorch's
util/preprocess.py `align_img`; Deep3DFaceRecon_pytorch is MIT-licensed, re-implemented here):
1. Flip the landmarks' y axis (y_up = H - 1 - y) and fit, by least squares, an affine camera
   [2x3 | t] taking the 5 standard 3-D landmarks to them ("POS"); the scale s is the mean norm of
   the two rows of the 2x3 part, t the 2-D translation. Rotation is NOT used: the crop keeps roll.
2. Resize the image by 300 / s (bicubic), so the standard face has 300 px per template unit.
3. Cut a 1024 x 1024 window centred on t (zero outside the image), as Deep3DFaceRecon's
   resize_n_crop_img does, integer truncations included.
4. Cut the central 700 x 700 of that window and resize it to 512 x 512 with LANCZOS.
Steps 2-4 are done here on just the needed part of the image (PIL's resize with a source box
gives the same pixels as resizing everything and cropping), so a small face in a huge photo
does not allocate a huge resized image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

# The 5-point standard face of Deep3DFaceRecon (its BFM/similarity_Lm3D_all.mat reduced to
# 5 points by util/load_mats.py `load_lm3d`): left eye centre, right eye centre, nose tip, left
# and right mouth corners, as seen in the image. BFM units (decimetres), x right, y up, z towards
# the viewer. Values as printed in microsoft/Deep3DFaceReconstruction's preprocess_img.py
# docstring and repeated verbatim in several public ports.
STANDARD_LANDMARKS_3D = np.array(
    [
        [-0.31148657, 0.29036078, 0.13377953],
        [0.30979887, 0.28972036, 0.13179526],
        [0.0032535, -0.04617932, 0.55244243],
        [-0.25216928, -0.38133916, 0.22405732],
        [0.2484662, -0.38128236, 0.22235769],
    ]
)

# EG3D's crop_images_in_the_wild settings.
EG3D_WINDOW_SIZE = 1024
EG3D_RESCALE_FACTOR = 300.0
EG3D_CENTRE_CROP_SIZE = 700
EG3D_OUTPUT_SIZE = 512


@dataclass(frozen=True)
class ScaleTranslation:
    """Deep3DFaceRecon's POS result: image ~ scale * (projected template) + translation (y up)."""

    scale: float
    translation: np.ndarray  # [2]


@dataclass(frozen=True)
class CropWindow:
    """Where the centre crop lies in the (virtually) resized source image, in its pixels."""

    resize_factor: float  # rescale_factor / POS scale, EG3D's `s` in trans_params
    resized_width: int
    resized_height: int
    left: int  # of the 700 x 700 centre crop
    top: int
    size: int = EG3D_CENTRE_CROP_SIZE


@dataclass(frozen=True)
class AlignmentResult:
    image: Image.Image  # RGB, output_size x output_size
    landmarks: np.ndarray  # [5,2] the input landmarks in the crop, continuous pixel coordinates
    source_to_crop: np.ndarray  # [3,3] continuous source pixel coords -> continuous crop pixel coords
    window: CropWindow
    pos_fit: ScaleTranslation


def fit_scale_translation(landmarks_y_up: np.ndarray, template_3d: np.ndarray) -> ScaleTranslation:
    """Least-squares affine camera from `template_3d` [P,3] to 2-D points [P,2] (y up).

    Solves x_i = a . X_i + t_x and y_i = b . X_i + t_y; scale = (|a| + |b|) / 2.
    """
    if landmarks_y_up.shape != (template_3d.shape[0], 2):
        raise ValueError(f"expected landmarks of shape [{template_3d.shape[0]}, 2], got {list(landmarks_y_up.shape)}")
    homogeneous = np.concatenate([template_3d, np.ones((template_3d.shape[0], 1))], axis=1)
    # x and y rows are independent least-squares problems with the same design matrix.
    solution, *_ = np.linalg.lstsq(homogeneous, landmarks_y_up, rcond=None)
    row_x, row_y = solution[:3, 0], solution[:3, 1]
    scale = (np.linalg.norm(row_x) + np.linalg.norm(row_y)) / 2.0
    return ScaleTranslation(scale=float(scale), translation=solution[3].copy())


def eg3d_crop_window(image_width: int, image_height: int, landmarks5: np.ndarray) -> tuple[CropWindow, ScaleTranslation]:
    """The crop EG3D would take for these landmarks (pixel-index coordinates, y down)."""
    landmarks_y_up = np.stack([landmarks5[:, 0], image_height - 1 - landmarks5[:, 1]], axis=1)
    fit = fit_scale_translation(landmarks_y_up, STANDARD_LANDMARKS_3D)
    if not np.isfinite(fit.scale) or fit.scale <= 0:
        raise ValueError(f"degenerate landmarks (POS scale {fit.scale}): {landmarks5.tolist()}")
    resize_factor = EG3D_RESCALE_FACTOR / fit.scale
    translation_x, translation_y = fit.translation
    resized_width = int(image_width * resize_factor)
    resized_height = int(image_height * resize_factor)
    # Deep3DFaceRecon's resize_n_crop_img: window corner, truncated towards zero like astype(int32).
    window_left = int(resized_width / 2 - EG3D_WINDOW_SIZE / 2 + (translation_x - image_width / 2) * resize_factor)
    window_top = int(resized_height / 2 - EG3D_WINDOW_SIZE / 2 + (image_height / 2 - translation_y) * resize_factor)
    centre_offset = int(EG3D_WINDOW_SIZE / 2 - EG3D_CENTRE_CROP_SIZE / 2)
    window = CropWindow(
        resize_factor=resize_factor,
        resized_width=resized_width,
        resized_height=resized_height,
        left=window_left + centre_offset,
        top=window_top + centre_offset,
    )
    return window, fit


def align_face(image: Image.Image, landmarks5: np.ndarray, output_size: int = EG3D_OUTPUT_SIZE) -> AlignmentResult:
    """Crop `image` like EG3D's in-the-wild preprocessing, from 5 landmarks [5,2] (pixel-index, y down)."""
    landmarks5 = np.asarray(landmarks5, dtype=np.float64)
    if landmarks5.shape != (5, 2) or not np.isfinite(landmarks5).all():
        raise ValueError(f"expected 5 finite (x, y) landmarks, got {landmarks5.tolist()}")
    image = image.convert("RGB")
    width, height = image.size
    window, fit = eg3d_crop_window(width, height, landmarks5)
    centre_crop = _resized_window(image, window)
    aligned = centre_crop.resize((output_size, output_size), resample=Image.Resampling.LANCZOS)

    to_output = output_size / window.size
    scale_x = window.resized_width / width * to_output
    scale_y = window.resized_height / height * to_output
    source_to_crop = np.array(
        [[scale_x, 0.0, -window.left * to_output], [0.0, scale_y, -window.top * to_output], [0.0, 0.0, 1.0]]
    )
    continuous = landmarks5 + 0.5  # pixel-index -> continuous coordinates
    crop_landmarks = continuous @ source_to_crop[:2, :2].T + source_to_crop[:2, 2]
    return AlignmentResult(
        image=aligned, landmarks=crop_landmarks, source_to_crop=source_to_crop, window=window, pos_fit=fit
    )


def standard_crop_landmarks(output_size: int = EG3D_OUTPUT_SIZE) -> np.ndarray:
    """[5,2] where the crop puts a face whose landmarks are exactly the orthographic projection of
    the standard landmarks (continuous pixel coordinates of the output). Real faces land near here."""
    pixels_per_unit = EG3D_RESCALE_FACTOR / EG3D_CENTRE_CROP_SIZE * output_size
    centre = output_size / 2.0
    return np.stack(
        [centre + pixels_per_unit * STANDARD_LANDMARKS_3D[:, 0], centre - pixels_per_unit * STANDARD_LANDMARKS_3D[:, 1]],
        axis=1,
    )


def _resized_window(image: Image.Image, window: CropWindow) -> Image.Image:
    """Pixels [left, left+size) x [top, top+size) of `image` bicubic-resized to the window's
    resized size, black outside the image, without resizing the rest of the image."""
    width, height = image.size
    canvas = Image.new("RGB", (window.size, window.size))
    visible_left, visible_top = max(window.left, 0), max(window.top, 0)
    visible_right = min(window.left + window.size, window.resized_width)
    visible_bottom = min(window.top + window.size, window.resized_height)
    if visible_right <= visible_left or visible_bottom <= visible_top:
        return canvas
    source_per_resized_x = width / window.resized_width
    source_per_resized_y = height / window.resized_height
    source_box = (
        visible_left * source_per_resized_x,
        visible_top * source_per_resized_y,
        visible_right * source_per_resized_x,
        visible_bottom * source_per_resized_y,
    )
    visible = image.resize(
        (visible_right - visible_left, visible_bottom - visible_top), resample=Image.Resampling.BICUBIC, box=source_box
    )
    canvas.paste(visible, (visible_left - window.left, visible_top - window.top))
    return canvas
