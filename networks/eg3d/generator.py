"""``TriPlaneGenerator``: our pure-PyTorch EG3D, state-dict compatible with NVIDIA's released models.

The forward pass (BEHAVIOUR §1): ws = mapping(z, c_cond); tri-planes = StyleGAN2 backbone(ws);
rays from the render camera c at the neural rendering resolution; two-pass volume rendering of the
tri-plane radiance field; super-resolution of the 32-channel feature image driven by the last w.

Each stage is a separate named method, which is what inversion methods need (GOAE refines the
``b32`` feature map and renders given tri-planes at novel cameras).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from networks.eg3d.backbone import StyleGAN2Backbone
from networks.eg3d.layers import at_least_float32
from networks.eg3d.outputs import BackboneFeatures, RenderOutput, RendererDraws, SynthesisOutput
from networks.eg3d.renderer import ImportanceRenderer, OSGDecoder, Rays, rays_from_cameras
from networks.eg3d.superresolution import SuperresolutionHybrid8XDC

TRIPLANE_RESOLUTION = 256
TRIPLANE_CHANNELS = 32
SUPPORTED_SUPERRESOLUTION = "SuperresolutionHybrid8XDC"
DEFAULT_POINTS_PER_CHUNK = 2**20  # radiance-field queries per renderer chunk (bounds memory, not results)


@dataclass
class VolumeRender:
    """The neural rendering before super-resolution (images at the neural rendering resolution)."""

    feature_image: torch.Tensor  # [N, 32, R, R], ≈[-1, 1]
    image_depth: torch.Tensor  # [N, 1, R, R], distance along unit rays
    weights_sum: torch.Tensor  # [N, 1, R, R], accumulated opacity
    rays: Rays


def camera_matrices(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split 25-float labels into cam2world [N, 4, 4] and normalised intrinsics [N, 3, 3]."""
    if c.ndim != 2 or c.shape[1] != 25:
        raise ValueError(f"camera labels must have shape [N, 25], got {list(c.shape)}")
    return c[:, :16].reshape(-1, 4, 4), c[:, 16:25].reshape(-1, 3, 3)


def _check_rendering_options(options: dict) -> None:
    """Reject rendering options the released models never use and we do not implement."""
    required = ("depth_resolution", "depth_resolution_importance", "ray_start", "ray_end", "box_warp")
    missing = [key for key in required if key not in options]
    if missing:
        raise ValueError(f"rendering_kwargs is missing {missing}")
    unsupported = {
        "disparity_space_sampling": lambda v: bool(v),
        "clamp_mode": lambda v: v != "softplus",
        "white_back": lambda v: bool(v),
        "density_noise": lambda v: float(v) != 0.0,
        "ray_start": lambda v: isinstance(v, str),
    }
    for key, is_unsupported in unsupported.items():
        if key in options and is_unsupported(options[key]):
            raise ValueError(f"rendering_kwargs[{key!r}] = {options[key]!r} is not supported by this implementation")


class TriPlaneGenerator(nn.Module):
    """EG3D generator. Constructor arguments are the official ones, so a checkpoint's init kwargs apply.

    Our own options (not in the official class): ``plane_projection`` 'eg3d' (XY, XZ, ZX: what the
    released weights need) or 'orthogonal' (XY, XZ, ZY) for generators trained with the corrected
    planes; ``plane_sampler`` 'auto' | 'gather' | 'grid_sample' (same values, different speed);
    ``points_per_chunk`` bounds renderer memory without changing results.
    """

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        sr_num_fp16_res: int = 0,
        mapping_kwargs: dict | None = None,
        rendering_kwargs: dict | None = None,
        sr_kwargs: dict | None = None,
        plane_projection: str = "eg3d",
        plane_sampler: str = "auto",
        points_per_chunk: int = DEFAULT_POINTS_PER_CHUNK,
        **synthesis_kwargs: Any,
    ) -> None:
        super().__init__()
        rendering_kwargs = dict(rendering_kwargs or {})
        sr_module = str(rendering_kwargs.get("superresolution_module", SUPPORTED_SUPERRESOLUTION))
        if not sr_module.endswith(SUPPORTED_SUPERRESOLUTION):
            raise ValueError(
                f"superresolution_module {sr_module!r} is not supported; only {SUPPORTED_SUPERRESOLUTION} "
                "(used by the released 512 models) is implemented"
            )
        _check_rendering_options(rendering_kwargs)
        if img_channels != 3:
            raise ValueError(f"img_channels must be 3, got {img_channels}")
        self.init_kwargs = {
            "z_dim": z_dim, "c_dim": c_dim, "w_dim": w_dim, "img_resolution": img_resolution,
            "img_channels": img_channels, "sr_num_fp16_res": sr_num_fp16_res,
            "mapping_kwargs": dict(mapping_kwargs or {}), "rendering_kwargs": rendering_kwargs,
            "sr_kwargs": dict(sr_kwargs or {}), "plane_projection": plane_projection, **synthesis_kwargs,
        }
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution = img_resolution
        self.rendering_kwargs = rendering_kwargs
        self.points_per_chunk = points_per_chunk
        # Registered first so it leads the state dict, as in NVIDIA's checkpoints (unused by the forward pass).
        self.register_buffer("dataset_label_std", torch.ones([c_dim]))
        self.renderer = ImportanceRenderer(plane_projection, plane_sampler)
        self.backbone = StyleGAN2Backbone(
            z_dim, c_dim, w_dim, img_resolution=TRIPLANE_RESOLUTION, img_channels=TRIPLANE_CHANNELS * 3,
            mapping_kwargs=mapping_kwargs, **synthesis_kwargs,
        )
        self.superresolution = SuperresolutionHybrid8XDC(
            channels=TRIPLANE_CHANNELS, img_resolution=img_resolution, sr_num_fp16_res=sr_num_fp16_res,
            sr_antialias=bool(rendering_kwargs.get("sr_antialias", True)), w_dim=w_dim, **dict(sr_kwargs or {}),
        )
        self.decoder = OSGDecoder(TRIPLANE_CHANNELS, output_dim=TRIPLANE_CHANNELS,
                                  lr_multiplier=float(rendering_kwargs.get("decoder_lr_mul", 1.0)))
        self.neural_rendering_resolution = 64  # official constructor default; loaders set the checkpoint's value

    def use_channels_last(self, enabled: bool = True) -> "TriPlaneGenerator":
        """Run the backbone and super-resolution convolutions on NHWC activations (faster on GPUs)."""
        memory_format = torch.channels_last if enabled else torch.contiguous_format
        for module in self.modules():
            if hasattr(module, "memory_format"):
                module.memory_format = memory_format
        return self

    @property
    def num_ws(self) -> int:
        return self.backbone.num_ws

    @property
    def w_avg(self) -> torch.Tensor:
        return self.backbone.mapping.w_avg

    # ------------------------------------------------------------------ mapping
    def mapping(
        self, z: torch.Tensor, c: torch.Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None
    ) -> torch.Tensor:
        """z [N, z_dim] and conditioning camera c [N, 25] -> ws [N, num_ws, w_dim]."""
        if self.rendering_kwargs.get("c_gen_conditioning_zero", False):
            c = torch.zeros_like(c)
        c = c * float(self.rendering_kwargs.get("c_scale", 1.0))
        return self.backbone.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)

    # ------------------------------------------------------------------ tri-planes
    def synthesize_features(self, ws: torch.Tensor, until_block: str = "b32", noise_mode: str = "const") -> BackboneFeatures:
        """Run the backbone up to ``until_block`` (e.g. 'b32' for GOAE's F) and stop."""
        return self.backbone.synthesis.features_until(ws, until_block, noise_mode)

    def synthesize_planes_from_features(
        self, ws: torch.Tensor, features: BackboneFeatures, noise_mode: str = "const"
    ) -> torch.Tensor:
        """Resume the backbone after ``features.block`` (with a possibly refined feature map)."""
        return self._as_planes(self.backbone.synthesis.resume_from(ws, features, noise_mode))

    def synthesize_planes(self, ws: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        """ws -> tri-planes [N, 3, 32, 256, 256] (planes 0, 1, 2 = channels 0-31, 32-63, 64-95)."""
        return self._as_planes(self.backbone.synthesis(ws, noise_mode))

    @staticmethod
    def _as_planes(img: torch.Tensor) -> torch.Tensor:
        return img.reshape(img.shape[0], 3, TRIPLANE_CHANNELS, img.shape[-2], img.shape[-1])

    # ------------------------------------------------------------------ rendering
    def sample_draws(
        self, batch_size: int, neural_rendering_resolution: int | None = None, generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> RendererDraws:
        """Fresh uniform draws for the renderer (stratified first, then importance, like the official code)."""
        resolution = neural_rendering_resolution or self.neural_rendering_resolution
        device = device if device is not None else self.w_avg.device
        return RendererDraws.uniform(
            batch_size, resolution * resolution, int(self.rendering_kwargs["depth_resolution"]),
            int(self.rendering_kwargs["depth_resolution_importance"]), generator=generator, device=device,
        )

    def sample_radiance(self, planes: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Radiance-field query at world points [N, M, 3] -> (features [N, M, 32] in (-0.001, 1.001),
        raw density [N, M, 1]; the renderer applies softplus(density - 1)). For meshes and shape export."""
        return self.renderer.radiance(planes, self.decoder, points, float(self.rendering_kwargs["box_warp"]))

    def volume_render(
        self,
        planes: torch.Tensor,
        c: torch.Tensor,
        draws: RendererDraws | None = None,
        neural_rendering_resolution: int | None = None,
    ) -> VolumeRender:
        """Neural rendering only (no super-resolution): feature image, depth, opacity and rays."""
        resolution = int(neural_rendering_resolution or self.neural_rendering_resolution)
        # Volume rendering stays in fp32 even under bf16/fp16 autocast (as in the official code, which
        # only runs the super-resolution in reduced precision): depth sorting and transmittance need it.
        with torch.autocast(device_type=planes.device.type, enabled=False):
            return self._volume_render_fp32(at_least_float32(planes), at_least_float32(c), draws, resolution)

    def _volume_render_fp32(
        self, planes: torch.Tensor, c: torch.Tensor, draws: RendererDraws | None, resolution: int
    ) -> VolumeRender:
        cam2world, intrinsics = camera_matrices(c)
        rays = rays_from_cameras(cam2world, intrinsics, resolution)
        n = planes.shape[0]
        depth_resolution = int(self.rendering_kwargs["depth_resolution"])
        importance_resolution = int(self.rendering_kwargs["depth_resolution_importance"])
        if draws is None:
            draws = self.sample_draws(n, resolution, device=planes.device)
        draws.check_shape(n, resolution * resolution, depth_resolution, importance_resolution)
        rays_per_chunk = max(1, self.points_per_chunk // (n * (depth_resolution + importance_resolution)))
        marched = self.renderer(planes, self.decoder, rays, draws, self.rendering_kwargs, rays_per_chunk)

        def as_image(x: torch.Tensor) -> torch.Tensor:
            return x.permute(0, 2, 1).reshape(n, -1, resolution, resolution).contiguous()

        return VolumeRender(
            feature_image=as_image(marched.features), image_depth=as_image(marched.depth),
            weights_sum=as_image(marched.weights_sum), rays=rays,
        )

    def superresolve(self, feature_image: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
        """Final image from the neural feature image, driven by the last row of ``ws``."""
        return self.superresolution(feature_image[:, :3], feature_image, ws)

    def render_planes(
        self,
        planes: torch.Tensor,
        ws: torch.Tensor,
        c: torch.Tensor,
        draws: RendererDraws | None = None,
        neural_rendering_resolution: int | None = None,
    ) -> RenderOutput:
        """Volume-render ``planes`` at cameras ``c`` and super-resolve with the last row of ``ws``."""
        volume = self.volume_render(planes, c, draws, neural_rendering_resolution)
        return RenderOutput(
            image=self.superresolve(volume.feature_image, ws), image_raw=volume.feature_image[:, :3],
            image_depth=volume.image_depth, feature_image=volume.feature_image,
            ray_origins=volume.rays.origins, ray_directions=volume.rays.directions, weights_sum=volume.weights_sum,
        )

    def synthesis(
        self,
        ws: torch.Tensor,
        c: torch.Tensor,
        noise_mode: str = "const",
        draws: RendererDraws | None = None,
        neural_rendering_resolution: int | None = None,
    ) -> SynthesisOutput:
        """ws + render camera -> tri-planes and their rendering."""
        planes = self.synthesize_planes(ws, noise_mode)
        out = self.render_planes(planes, ws, c, draws, neural_rendering_resolution)
        return SynthesisOutput(**vars(out), planes=planes)

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor,
        c_cond: torch.Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: str = "const",
        draws: RendererDraws | None = None,
    ) -> SynthesisOutput:
        """Mapping (conditioned on ``c_cond``, default ``c``) followed by synthesis at camera ``c``."""
        ws = self.mapping(z, c if c_cond is None else c_cond, truncation_psi, truncation_cutoff)
        return self.synthesis(ws, c, noise_mode=noise_mode, draws=draws)

    def extra_repr(self) -> str:
        return f"neural_rendering_resolution={self.neural_rendering_resolution}, plane_projection={self.renderer.plane_projection}"


__all__ = ["TriPlaneGenerator", "VolumeRender", "camera_matrices", "Rays"]
