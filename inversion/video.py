"""Orbit videos: the authors' camera path, rendering in batches, mp4 through imageio-ffmpeg.

Camera path (GOAE's video output, EG3D's raw angles h, v): for frame f of F, t = f / F in [0, 1),
h = pi/2 + 0.35 sin(2 pi t), v = pi/2 - 0.05 + 0.25 cos(2 pi t), radius 2.7, looking at (0, 0, 0)
(NOT the FFHQ pivot (0, 0, 0.2) used elsewhere). t never reaches 1, so the loop closes seamlessly.
In our yaw/pitch (= h - pi/2, v - pi/2): yaw = 0.35 sin(2 pi t), pitch = -0.05 + 0.25 cos(2 pi t).

mp4 is written with libx264 through imageio-ffmpeg's bundled binary (works offline). If no ffmpeg
binary is available the frames are written as an animated GIF with Pillow instead, next to the
requested path with a .gif suffix; the returned ``WrittenVideo`` says which.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cameras import CAMERA_RADIUS, FOCAL_LENGTH, look_at_label
from inversion.views import ViewRenderer, to_uint8_images

AUTHORS_NUM_FRAMES = 240
AUTHORS_FPS = 60
# Browsers play GIF frames shorter than 20 ms at 100 ms, and GIF stores 10 ms units.
MIN_GIF_FRAME_MS = 20


@dataclass(frozen=True)
class OrbitPath:
    num_frames: int = AUTHORS_NUM_FRAMES
    yaw_amplitude: float = 0.35  # radians
    pitch_offset: float = -0.05  # radians; pitch > 0 = camera below the face (docs/cameras.md)
    pitch_amplitude: float = 0.25  # radians
    radius: float = CAMERA_RADIUS
    pivot: tuple[float, float, float] = (0.0, 0.0, 0.0)
    focal: float = FOCAL_LENGTH

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be positive, got {self.num_frames}")


@dataclass(frozen=True)
class WrittenVideo:
    path: Path
    container: str  # 'mp4' or 'gif'
    num_frames: int  # frames written (a GIF merges identical consecutive ones, see _write_gif)


def orbit_camera_labels(path: OrbitPath = OrbitPath()) -> torch.Tensor:
    """[num_frames, 25] look-at labels along the orbit."""
    t = torch.arange(path.num_frames, dtype=torch.float64) / path.num_frames
    yaw = path.yaw_amplitude * torch.sin(2 * math.pi * t)
    pitch = path.pitch_offset + path.pitch_amplitude * torch.cos(2 * math.pi * t)
    return look_at_label(yaw.float(), pitch.float(), path.radius, path.pivot, path.focal)


def render_frames(
    render_view: ViewRenderer, labels: torch.Tensor, frames_per_batch: int = 8
) -> Iterator[np.ndarray]:
    """Frames [H, W, 3] uint8, one per label, rendered ``frames_per_batch`` at a time (bounded memory)."""
    for first in range(0, labels.shape[0], frames_per_batch):
        yield from to_uint8_images(render_view(labels[first : first + frames_per_batch]))


def ffmpeg_available() -> bool:
    """Whether imageio-ffmpeg can find an ffmpeg binary (its bundled one, or IMAGEIO_FFMPEG_EXE)."""
    try:
        import imageio_ffmpeg

        return Path(imageio_ffmpeg.get_ffmpeg_exe()).is_file()
    except (ImportError, RuntimeError, OSError):
        return False


def write_video(frames: Iterable[np.ndarray], path: str | Path, fps: int = AUTHORS_FPS) -> WrittenVideo:
    """Write [H, W, 3] uint8 frames as mp4 (H.264), or as a GIF next to ``path`` without ffmpeg."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if ffmpeg_available():
        return _write_mp4(frames, path, fps)
    return _write_gif(frames, path.with_suffix(".gif"), fps)


def write_orbit_video(
    render_view: ViewRenderer, path: str | Path, orbit: OrbitPath = OrbitPath(), fps: int = AUTHORS_FPS,
    frames_per_batch: int = 8,
) -> WrittenVideo:
    """Render the orbit with ``render_view`` and write it (mp4, or GIF fallback)."""
    return write_video(render_frames(render_view, orbit_camera_labels(orbit), frames_per_batch), path, fps)


def _write_mp4(frames: Iterable[np.ndarray], path: Path, fps: int) -> WrittenVideo:
    import imageio.v2 as imageio

    count = 0
    # macro_block_size=2: yuv420p needs even sizes; odd ones are padded rather than rescaled to 16s.
    options = {"fps": fps, "codec": "libx264", "quality": 8, "macro_block_size": 2}
    with imageio.get_writer(path, format="FFMPEG", **options) as writer:
        for frame in frames:
            writer.append_data(_checked_frame(frame))
            count += 1
    return WrittenVideo(path=path, container="mp4", num_frames=count)


def _write_gif(frames: Iterable[np.ndarray], path: Path, fps: int) -> WrittenVideo:
    images = [Image.fromarray(_checked_frame(frame)) for frame in frames]
    if not images:
        raise ValueError("no frames to write")
    duration_ms = max(MIN_GIF_FRAME_MS, round(1000 / fps))
    # Pillow stores identical consecutive frames as one longer frame (same playback time), so a GIF
    # may hold fewer frames than written; orbit frames always differ.
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return WrittenVideo(path=path, container="gif", num_frames=len(images))


def _checked_frame(frame: np.ndarray) -> np.ndarray:
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frames must be [H, W, 3] uint8, got {frame.shape} {frame.dtype}")
    return frame
