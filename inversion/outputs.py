"""The files the invert command writes for ONE inverted image (see docs/invert.md for the list).

Every function takes one sample's ``InversionResult`` (batch size 1) and the generator that renders it,
``single.generator_for(frozen)``: the frozen generator for encoders, the image's own tuned generator for
PTI-style results (so views, video, mesh and edits all go through the tuned weights). Renders share one set of renderer random draws (``seed``), so the same planes at the same camera
give the same pixels in every file (e.g. an edit at strength 0 equals the unedited output).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from inversion.editing import LatentEdit, edited_planes
from inversion.mesh import MeshOptions, density_grid, export_mesh, generator_density
from inversion.result import InversionResult
from inversion.tuned_generator import TUNED_GENERATOR_FILE, TunedGeneratorTensors
from inversion.video import OrbitPath, WrittenVideo, write_orbit_video
from inversion.views import MultiViewSpec, image_grid, multi_view_grid, planes_view_renderer
from networks.eg3d.generator import TriPlaneGenerator
from networks.eg3d.outputs import BackboneFeatures, RenderOutput
from networks.occlusion_mix import mix_triplanes

RECONSTRUCTION_FILE = "reconstruction.png"
MULTI_VIEW_FILE = "multi_view.png"
VIDEO_FILE = "orbit.mp4"
DEPTH_IMAGE_FILE = "depth.png"
DEPTH_ARRAY_FILE = "depth.npy"
LATENTS_FILE = "latents.pt"
MESH_FILE = "mesh.ply"
EDITS_DIR = "edits"
# Resolution of the coarse grid that picks an automatic mesh level (untrained / tiny generators).
AUTO_LEVEL_GRID_RESOLUTION = 32


@dataclass(frozen=True)
class RenderSettings:
    views: MultiViewSpec
    seed: int = 0  # renderer random draws, shared by every view
    views_per_batch: int = 8


# ----------------------------------------------------------------------------- slicing
def sample_of(result: InversionResult, index: int) -> InversionResult:
    """Sample ``index`` of a batched result, as a batch of one."""
    pick = slice(index, index + 1)
    refined = result.refined_features
    return InversionResult(
        ws=result.ws[pick],
        input_view_planes=result.input_view_planes[pick],
        novel_view_planes=result.novel_view_planes[pick],
        refined_features=None if refined is None else BackboneFeatures(
            block=refined.block, features=refined.features[pick], skip_image=refined.skip_image[pick]
        ),
        visibility_masks=None if result.visibility_masks is None else result.visibility_masks[pick],
        tuned_generator=None if result.tuned_generator is None else result.tuned_generator.sample(index),
        input_camera=None if result.input_camera is None else result.input_camera[pick],
    )


def as_float32(result: InversionResult) -> InversionResult:
    """bf16 autocast may leave reduced-precision tensors; files and renders use float32."""
    refined = result.refined_features
    return InversionResult(
        ws=result.ws.float(),
        input_view_planes=result.input_view_planes.float(),
        novel_view_planes=result.novel_view_planes.float(),
        refined_features=None if refined is None else BackboneFeatures(
            block=refined.block, features=refined.features.float(), skip_image=refined.skip_image.float()
        ),
        visibility_masks=None if result.visibility_masks is None else result.visibility_masks.float(),
        tuned_generator=None if result.tuned_generator is None else result.tuned_generator.float(),
        input_camera=None if result.input_camera is None else result.input_camera.float(),
    )


# ----------------------------------------------------------------------------- rendering
@torch.no_grad()
def render_view(
    G: TriPlaneGenerator, planes: torch.Tensor, ws: torch.Tensor, camera: torch.Tensor, seed: int
) -> RenderOutput:
    """One sample's planes at one camera [1, 25], with the same draws as ``planes_view_renderer``."""
    rng = torch.Generator(device=planes.device).manual_seed(seed)
    draws = G.sample_draws(1, generator=rng, device=planes.device)
    return G.render_planes(planes, ws, camera.to(planes.device, torch.float32).reshape(1, -1), draws=draws)


def input_view_render(G: TriPlaneGenerator, single: InversionResult, camera: torch.Tensor, seed: int) -> RenderOutput:
    """The input view (at the camera the method found, if any); ``G``: ``single.generator_for(frozen)``."""
    return render_view(G, single.input_view_planes, single.ws, single.input_view_camera(camera), seed)


def save_image(images: torch.Tensor, path: Path, columns: int | None = None) -> Path:
    """[N, 3, H, W] in [-1, 1] tiled in one row (or ``columns``) as a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images.float().cpu(), columns or images.shape[0]).save(path)
    return path


def write_reconstruction(input_image: torch.Tensor, render: RenderOutput, out_dir: Path) -> Path:
    """The input [3, H, W] next to the reconstruction at the input view."""
    reconstruction = render.image.float().cpu()
    shown_input = input_image[None].float().cpu()
    if shown_input.shape[-2:] != reconstruction.shape[-2:]:
        shown_input = torch.nn.functional.interpolate(
            shown_input, size=reconstruction.shape[-2:], mode="bilinear", antialias=True, align_corners=False
        )
    return save_image(torch.cat([shown_input, reconstruction]), out_dir / RECONSTRUCTION_FILE)


def write_depth(render: RenderOutput, out_dir: Path) -> tuple[Path, Path]:
    """depth.npy: the renderer's depth [R, R] (float32, world units along each ray, at the neural
    rendering resolution); depth.png: the same, min-max normalised with near = white."""
    depth = render.image_depth[0, 0].float().cpu().numpy().astype(np.float32)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / DEPTH_ARRAY_FILE, depth)
    near, far = float(depth.min()), float(depth.max())
    scaled = (far - depth) / max(far - near, 1e-8)
    Image.fromarray(np.round(scaled * 255.0).clip(0, 255).astype(np.uint8)).save(out_dir / DEPTH_IMAGE_FILE)
    return out_dir / DEPTH_IMAGE_FILE, out_dir / DEPTH_ARRAY_FILE


def write_multi_view(
    G: TriPlaneGenerator, planes: torch.Tensor, ws: torch.Tensor, path: Path, settings: RenderSettings
) -> Path:
    render = planes_view_renderer(G, planes, ws, settings.views_per_batch, settings.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    multi_view_grid(render, settings.views).save(path)
    return path


def write_video(
    G: TriPlaneGenerator, single: InversionResult, out_dir: Path, orbit: OrbitPath, fps: int, settings: RenderSettings
) -> WrittenVideo:
    """The orbit of the novel-view (mixed) planes: orbit.mp4, or orbit.gif without ffmpeg."""
    render = planes_view_renderer(G, single.novel_view_planes, single.ws, settings.views_per_batch, settings.seed)
    return write_orbit_video(render, out_dir / VIDEO_FILE, orbit, fps, settings.views_per_batch)


# ----------------------------------------------------------------------------- latents
def latents_record(single: InversionResult, camera: torch.Tensor) -> dict[str, torch.Tensor | str]:
    """Plain tensors (and the refined block's name): reloadable with torch.load(weights_only=True)."""
    record: dict[str, torch.Tensor | str] = {
        "ws": single.ws.detach().float().cpu().contiguous(),
        "camera": camera.detach().float().cpu().reshape(1, -1).contiguous(),
    }
    if single.refined_features is not None:
        record["refined_features"] = single.refined_features.features.detach().float().cpu().contiguous()
        record["refined_skip_image"] = single.refined_features.skip_image.detach().float().cpu().contiguous()
        record["refined_block"] = single.refined_features.block
    if single.visibility_masks is not None:
        record["visibility_masks"] = single.visibility_masks.detach().float().cpu().contiguous()
    if single.input_camera is not None:
        record["input_camera"] = single.input_camera.detach().float().cpu().reshape(1, -1).contiguous()
    return record


def write_latents(single: InversionResult, camera: torch.Tensor, out_dir: Path) -> list[Path]:
    """latents.pt, and generator.safetensors (the tuned tensors) when the result has its own generator."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(latents_record(single, camera), out_dir / LATENTS_FILE)
    if single.tuned_generator is None:
        return [out_dir / LATENTS_FILE]
    return [out_dir / LATENTS_FILE, single.tuned_generator.save(out_dir / TUNED_GENERATOR_FILE)]


def read_saved_result(out_dir: Path, frozen: TriPlaneGenerator) -> InversionResult:
    """An image's result from its latents.pt (and generator.safetensors), to render it again without
    inverting: w+ results (encoders) and tuned-generator results (PTI, Pose Opt.)."""
    latents_path = out_dir / LATENTS_FILE
    if not latents_path.is_file():
        raise FileNotFoundError(f"no saved result for this image: {latents_path} does not exist")
    record = torch.load(latents_path, map_location="cpu", weights_only=True)
    if "refined_features" in record:
        raise ValueError(f"{latents_path}: results with refined features (F*) cannot be re-rendered from files yet")
    device = frozen.w_avg.device
    ws = record["ws"].to(device)
    tuned = None
    if (out_dir / TUNED_GENERATOR_FILE).is_file():
        tuned = TunedGeneratorTensors.load(out_dir / TUNED_GENERATOR_FILE)
        tuned.check_fits(frozen, source=str(out_dir / TUNED_GENERATOR_FILE))
        tuned = TunedGeneratorTensors({name: t.to(device) for name, t in tuned.tensors.items()},
                                      tuned.rendering_overrides)
    camera = record.get("input_camera")
    generator = frozen if tuned is None else tuned.generator_from(frozen)
    with torch.no_grad():
        planes = generator.synthesize_planes(ws)
    return InversionResult(ws=ws, input_view_planes=planes, novel_view_planes=planes, tuned_generator=tuned,
                           input_camera=None if camera is None else camera.to(device))


# ----------------------------------------------------------------------------- mesh
def automatic_density_level(G: TriPlaneGenerator, planes: torch.Tensor, border_fraction: float) -> float:
    """Midpoint of the density range inside the cleared border, on a coarse grid.

    For untrained or tiny generators, whose density scale is arbitrary (trained EG3D models: 10).
    """
    box_side = float(G.rendering_kwargs["box_warp"])
    grid = density_grid(generator_density(G, planes), box_side, AUTO_LEVEL_GRID_RESOLUTION).values
    border = int(round(border_fraction * AUTO_LEVEL_GRID_RESOLUTION))
    inner = grid[border : grid.shape[0] - border, border : grid.shape[1] - border, border : grid.shape[2] - border]
    return float((inner.min() + inner.max()) / 2)


def write_mesh(
    G: TriPlaneGenerator, single: InversionResult, out_dir: Path, resolution: int, level: float | None,
    border_fraction: float,
) -> Path:
    """mesh.ply: marching cubes on the density of the NOVEL-VIEW (mixed) tri-plane, with vertex colours.
    ``level`` None: ``automatic_density_level``."""
    planes = single.novel_view_planes
    if level is None:
        level = automatic_density_level(G, planes, border_fraction)
    export_mesh(G, planes, out_dir / MESH_FILE, MeshOptions(resolution, level, border_fraction))
    return out_dir / MESH_FILE


# ----------------------------------------------------------------------------- edits
@torch.no_grad()
def wplus_edit(G: TriPlaneGenerator, ws_edit: torch.Tensor) -> InversionResult:
    """The plain w+ edit: tri-planes of the edited latent."""
    planes = G.synthesize_planes(ws_edit)
    return InversionResult(ws=ws_edit, input_view_planes=planes, novel_view_planes=planes)


@torch.no_grad()
def feature_space_edit(
    G: TriPlaneGenerator, single: InversionResult, ws_edit: torch.Tensor, wplus_planes: torch.Tensor | None = None
) -> InversionResult:
    """GOAE Eq. 10: F* + F(w_edit) - F(w), then the inversion's mix with the w-only edited planes.

    The visibility masks of the inversion are reused; the input view uses the refined planes when the
    inversion did (input planes differ from the mixed ones), else the mixed ones; rendering uses w_edit.
    ``wplus_planes``: ``G.synthesize_planes(ws_edit)`` when the caller already has them.
    """
    if single.refined_features is None:
        raise ValueError("the F-space edit needs refined features F* (a feature-space stage)")
    refined = edited_planes(G, single.ws, ws_edit, single.refined_features)
    mixed = refined
    if single.visibility_masks is not None:
        wonly = G.synthesize_planes(ws_edit) if wplus_planes is None else wplus_planes
        mixed = mix_triplanes(refined, wonly, single.visibility_masks)
    input_uses_refined = not torch.equal(single.input_view_planes, single.novel_view_planes)
    return InversionResult(
        ws=ws_edit, input_view_planes=refined if input_uses_refined else mixed, novel_view_planes=mixed,
        refined_features=None, visibility_masks=single.visibility_masks,
    )


def strength_label(strength: float) -> str:
    return f"{strength:g}"


@dataclass(frozen=True)
class EditFiles:
    direction: str
    strengths: list[float]
    images: list[Path]


def write_edits(
    G: TriPlaneGenerator,
    single: InversionResult,
    camera: torch.Tensor,
    edit: LatentEdit,
    strengths: Sequence[float],
    out_dir: Path,
    settings: RenderSettings,
) -> EditFiles:
    """For each strength: the edit at the input view and its multi-view grid (F-space edit when F*
    exists, else w+), plus the w+ grid for comparison when F* exists; and <direction>.pt with the
    edited latents of every strength."""
    edits_dir = out_dir / EDITS_DIR
    name = edit.direction.name
    edited_ws = edit.apply_strengths(single.ws, strengths)
    written: list[Path] = []
    for strength, ws_edit in zip(strengths, edited_ws):
        stem = f"{name}_{strength_label(strength)}"
        wplus = wplus_edit(G, ws_edit)
        has_features = single.refined_features is not None
        main = feature_space_edit(G, single, ws_edit, wplus.novel_view_planes) if has_features else wplus
        input_camera = single.input_view_camera(camera)
        written.append(save_image(render_view(G, main.input_view_planes, ws_edit, input_camera, settings.seed).image,
                                  edits_dir / f"{stem}.png"))
        written.append(write_multi_view(G, main.novel_view_planes, ws_edit, edits_dir / f"{stem}_multi_view.png",
                                        settings))
        if has_features:
            written.append(write_multi_view(G, wplus.novel_view_planes, ws_edit,
                                            edits_dir / f"{stem}_wplus_multi_view.png", settings))
    torch.save(
        {
            "strengths": torch.tensor([float(s) for s in strengths], dtype=torch.float32),
            "ws": torch.cat(edited_ws).detach().float().cpu(),
            "direction": edit.direction.delta.detach().float().cpu(),
            "offset": edit.offset.detach().float().cpu(),
        },
        edits_dir / f"{name}.pt",
    )
    return EditFiles(direction=name, strengths=[float(s) for s in strengths], images=written)
