"""Rays, tri-plane lookup, the OSG decoder and EG3D's two-pass volume renderer (BEHAVIOUR §5-§8).

Rendering is chunked over rays so memory stays bounded for large batches or resolutions; the only
cross-ray quantity of the official renderer (the depth clamp to the global sample-depth range of
the call) is applied after all chunks, so chunking never changes the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from networks.eg3d.layers import FullyConnectedLayer, at_least_float32
from networks.eg3d.outputs import RendererDraws

# Which world axes feed the (width, height) coordinates of each of the three planes.
# NVIDIA's code projects onto XY, XZ and ZX (the third plane was meant to be YZ); the released
# FFHQ/AFHQ weights were trained that way, so it is the default and must be kept to load them.
PLANE_PROJECTIONS: dict[str, tuple[tuple[int, int], ...]] = {
    "eg3d": ((0, 1), (0, 2), (2, 0)),
    "orthogonal": ((0, 1), (0, 2), (2, 1)),
}


@dataclass
class Rays:
    origins: torch.Tensor  # [N, M, 3]
    directions: torch.Tensor  # [N, M, 3], unit length


def rays_from_cameras(cam2world: torch.Tensor, intrinsics: torch.Tensor, resolution: int) -> Rays:
    """One ray per pixel centre of an R x R image, row-major (row i outer, column j inner).

    Pixel (i, j) has normalised coordinates u = (j + 0.5)/R, v = (i + 0.5)/R; OpenCV camera
    (x right, y down, z forward); directions are normalised in world space (BEHAVIOUR §7).
    """
    n = cam2world.shape[0]
    device = cam2world.device
    steps = torch.arange(resolution, dtype=cam2world.dtype, device=device) * (1.0 / resolution) + (0.5 / resolution)
    v, u = torch.meshgrid(steps, steps, indexing="ij")
    u = u.reshape(1, -1).expand(n, -1)
    v = v.reshape(1, -1).expand(n, -1)
    fx, fy = intrinsics[:, 0, 0:1], intrinsics[:, 1, 1:2]
    cx, cy, skew = intrinsics[:, 0, 2:3], intrinsics[:, 1, 2:3], intrinsics[:, 0, 1:2]
    x_cam = (u - cx + cy * skew / fy - skew * v / fy) / fx
    y_cam = (v - cy) / fy
    ones = torch.ones_like(x_cam)
    points_cam = torch.stack([x_cam, y_cam, ones, ones], dim=-1)  # [N, M, 4] at depth 1
    points_world = torch.bmm(cam2world, points_cam.permute(0, 2, 1)).permute(0, 2, 1)[:, :, :3]
    origins = cam2world[:, :3, 3]
    directions = F.normalize(points_world - origins[:, None, :], dim=2)
    return Rays(origins=origins.unsqueeze(1).expand(-1, directions.shape[1], -1), directions=directions)


def project_onto_planes(points: torch.Tensor, projection: str) -> torch.Tensor:
    """[N, M, 3] points -> [N, 3, M, 2] plane coordinates (first = width axis, second = height axis)."""
    axes = PLANE_PROJECTIONS[projection]
    return torch.stack([points[..., list(pair)] for pair in axes], dim=1)


def sample_from_planes(planes: torch.Tensor, points: torch.Tensor, box_warp: float, projection: str) -> torch.Tensor:
    """Bilinear tri-plane lookup (zero padding, align_corners=False): [N,3,C,H,W], [N,M,3] -> [N,3,M,C]."""
    n, n_planes, channels, h, w = planes.shape
    coords = project_onto_planes((2.0 / box_warp) * points, projection)  # [N, 3, M, 2]
    grid = coords.reshape(n * n_planes, 1, -1, 2)
    sampled = F.grid_sample(
        planes.reshape(n * n_planes, channels, h, w), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )  # [N*3, C, 1, M]
    return sampled.permute(0, 3, 2, 1).reshape(n, n_planes, -1, channels)


def _bilinear_taps(u: torch.Tensor, v: torch.Tensor, width: int, height: int):
    """Corner indices and weights of grid_sample's bilinear lookup (align_corners=False, zero padding).

    u, v in [-1, 1] index width and height. Out-of-range corners get weight 0 (and a clamped index).
    """
    x = ((u + 1) * width - 1) / 2
    y = ((v + 1) * height - 1) / 2
    x0, y0 = torch.floor(x), torch.floor(y)
    tx, ty = x - x0, y - y0
    x0, y0 = x0.long(), y0.long()
    indices, weights = [], []
    for dy, wy in ((0, 1 - ty), (1, ty)):
        for dx, wx in ((0, 1 - tx), (1, tx)):
            xx, yy = x0 + dx, y0 + dy
            inside = (xx >= 0) & (xx < width) & (yy >= 0) & (yy < height)
            indices.append(yy.clamp(0, height - 1) * width + xx.clamp(0, width - 1))
            weights.append(torch.where(inside, wx * wy, torch.zeros_like(wx)))
    return indices, weights


def sample_mean_plane_features(planes: torch.Tensor, points: torch.Tensor, box_warp: float, projection: str) -> torch.Tensor:
    """The mean over the three planes of their bilinear features at ``points``: [N,3,C,H,W], [N,M,3] -> [N,M,C].

    Same value as ``sample_from_planes(...).mean(1)``, computed as ONE weighted gather of 12 texels
    per point (``embedding_bag`` over channels-last planes): on CPU this avoids grid_sample's
    channel-strided reads and the [N,3,M,C] intermediate. Differentiable w.r.t. the planes.
    """
    n, n_planes, channels, h, w = planes.shape
    m = points.shape[1]
    table = planes.permute(0, 1, 3, 4, 2).reshape(n * n_planes * h * w, channels)
    coords = project_onto_planes((2.0 / box_warp) * points, projection)  # [N, 3, M, 2]
    indices, weights = _bilinear_taps(coords[..., 0], coords[..., 1], w, h)
    plane_offset = (torch.arange(n * n_planes, device=points.device) * (h * w)).reshape(n, n_planes, 1)
    index = torch.stack([i + plane_offset for i in indices], dim=-1)  # [N, 3, M, 4]
    weight = torch.stack(weights, dim=-1) * (1.0 / n_planes)
    index = index.permute(0, 2, 1, 3).reshape(n * m, n_planes * 4)
    weight = weight.permute(0, 2, 1, 3).reshape(n * m, n_planes * 4).to(table.dtype)
    return F.embedding_bag(index, table, per_sample_weights=weight, mode="sum").reshape(n, m, channels)


def sample_mean_plane_features_reference(
    planes: torch.Tensor, points: torch.Tensor, box_warp: float, projection: str
) -> torch.Tensor:
    """The official formulation (grid_sample per plane, then the mean); faster on GPU."""
    return sample_from_planes(planes, points, box_warp, projection).mean(1)


PLANE_SAMPLERS = {"gather": sample_mean_plane_features, "grid_sample": sample_mean_plane_features_reference}


class OSGDecoder(nn.Module):
    """Mean of the three plane features -> FC 32-64, softplus, FC 64-(1+32): raw density + features."""

    def __init__(self, n_features: int = 32, hidden_dim: int = 64, output_dim: int = 32, lr_multiplier: float = 1.0):
        super().__init__()
        self.net = nn.Sequential(
            FullyConnectedLayer(n_features, hidden_dim, lr_multiplier=lr_multiplier),
            nn.Softplus(),
            FullyConnectedLayer(hidden_dim, 1 + output_dim, lr_multiplier=lr_multiplier),
        )

    def forward(self, mean_plane_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, M, C] (mean of the three planes' features) -> (features [N, M, 32] in (-0.001, 1.001),
        raw density [N, M, 1])."""
        x = mean_plane_features
        n, m, c = x.shape
        x = self.net(x.reshape(n * m, c)).reshape(n, m, -1)
        features = torch.sigmoid(x[..., 1:]) * (1 + 2 * 0.001) - 0.001  # MipNeRF's widened sigmoid
        return features, x[..., 0:1]


@dataclass
class MarchResult:
    features: torch.Tensor  # [N, m, C], mapped to 2f - 1
    depth: torch.Tensor  # [N, m, 1], NOT yet clamped to the call's depth range
    weights_sum: torch.Tensor  # [N, m, 1]


def compositing_weights(densities: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
    """Alpha-compositing weights of the midpoint intervals (softplus(sigma - 1) clamp mode).

    densities, depths: [N, m, S, 1] -> weights [N, m, S-1, 1].
    """
    deltas = depths[:, :, 1:] - depths[:, :, :-1]
    densities_mid = F.softplus((densities[:, :, :-1] + densities[:, :, 1:]) / 2 - 1)
    alpha = 1 - torch.exp(-densities_mid * deltas)
    alpha_shifted = torch.cat([torch.ones_like(alpha[:, :, :1]), 1 - alpha + 1e-10], dim=-2)
    return alpha * torch.cumprod(alpha_shifted, dim=-2)[:, :, :-1]


def march_rays(features: torch.Tensor, densities: torch.Tensor, depths: torch.Tensor) -> MarchResult:
    """EG3D's MipRayMarcher2 (midpoint rule), without the global depth clamp."""
    weights = compositing_weights(densities, depths)
    features_mid = (features[:, :, :-1] + features[:, :, 1:]) / 2
    depths_mid = (depths[:, :, :-1] + depths[:, :, 1:]) / 2
    composite = torch.sum(weights * features_mid, dim=-2)
    weights_sum = weights.sum(2)
    depth = torch.nan_to_num(torch.sum(weights * depths_mid, dim=-2) / weights_sum, float("inf"))
    return MarchResult(features=composite * 2 - 1, depth=depth, weights_sum=weights_sum)


def march_merged_samples(
    features: tuple[torch.Tensor, ...], densities: tuple[torch.Tensor, ...], depths: tuple[torch.Tensor, ...]
) -> tuple[MarchResult, torch.Tensor]:
    """``march_rays`` over the depth-sorted union of several sample sets, without sorting the features.

    The midpoint rule gives sample k the weight (w[k-1] + w[k]) / 2 (w of the sorted intervals), so
    the composite is a per-ray weighted sum of the UNSORTED features: weights are computed in sorted
    order (small tensors), scattered back, and applied with batched matrix products. This avoids
    gathering/averaging the [N, m, S, 32] feature tensors (the official formulation, same value).
    Returns the result and the merged sample depths (for the call's global depth clamp).
    """
    all_depths = torch.cat(depths, dim=-2)
    order = torch.sort(all_depths, dim=-2).indices
    sorted_depths = torch.gather(all_depths, -2, order)
    sorted_densities = torch.gather(torch.cat(densities, dim=-2), -2, order)
    weights = compositing_weights(sorted_densities, sorted_depths)  # [N, m, S-1, 1]
    depths_mid = (sorted_depths[:, :, :-1] + sorted_depths[:, :, 1:]) / 2
    weights_sum = weights.sum(2)
    depth = torch.nan_to_num(torch.sum(weights * depths_mid, dim=-2) / weights_sum, float("inf"))
    per_sample = 0.5 * (F.pad(weights, (0, 0, 1, 0)) + F.pad(weights, (0, 0, 0, 1)))  # [N, m, S, 1]
    per_sample = torch.zeros_like(per_sample).scatter(-2, order, per_sample)
    n, m = all_depths.shape[:2]
    composite = None
    start = 0
    for part in features:
        count = part.shape[2]
        w = per_sample[:, :, start : start + count, 0].reshape(n * m, 1, count)
        term = torch.bmm(w, part.reshape(n * m, count, -1)).reshape(n, m, -1)
        composite = term if composite is None else composite + term
        start += count
    return MarchResult(features=composite * 2 - 1, depth=depth, weights_sum=weights_sum), all_depths


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, uniforms: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Inverse-CDF sampling of ``uniforms`` [R, K] from the piecewise-constant pdf ``weights`` [R, B].

    Only the first B + 1 entries of ``bins`` are used as edges (EG3D passes more; kept for parity).
    """
    num_bins = weights.shape[1]
    weights = weights + eps
    pdf = weights / weights.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], dim=-1)
    uniforms = uniforms.contiguous()
    index = torch.searchsorted(cdf, uniforms, right=True)
    below = (index - 1).clamp_min(0)
    above = index.clamp_max(num_bins)
    pairs = torch.stack([below, above], -1).reshape(index.shape[0], -1)
    cdf_pairs = torch.gather(cdf, 1, pairs).reshape(*index.shape, 2)
    bin_pairs = torch.gather(bins, 1, pairs).reshape(*index.shape, 2)
    denom = cdf_pairs[..., 1] - cdf_pairs[..., 0]
    denom = torch.where(denom < eps, torch.ones_like(denom), denom)
    return bin_pairs[..., 0] + (uniforms - cdf_pairs[..., 0]) / denom * (bin_pairs[..., 1] - bin_pairs[..., 0])


def importance_depths(coarse_depths: torch.Tensor, coarse_weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """EG3D's importance sampling: smooth the coarse weights (max-pool 2, avg-pool 2, +0.01), drop the
    first and last, sample the midpoint bins. [N,m,D,1], [N,m,D-1,1], [N*m, K] -> [N,m,K,1] (no grad)."""
    with torch.no_grad():
        n, m, d, _ = coarse_depths.shape
        depths = coarse_depths.reshape(n * m, d)
        weights = at_least_float32(coarse_weights.reshape(n * m, 1, -1))
        weights = F.avg_pool1d(F.max_pool1d(weights, 2, 1, padding=1), 2, 1).squeeze(1) + 0.01
        mids = 0.5 * (depths[:, :-1] + depths[:, 1:])
        samples = sample_pdf(mids, weights[:, 1:-1], uniforms)
        return samples.reshape(n, m, -1, 1)


class ImportanceRenderer(nn.Module):
    """Stratified + importance sampling of the tri-plane radiance field along rays (no parameters)."""

    def __init__(self, plane_projection: str = "eg3d", plane_sampler: str = "auto") -> None:
        super().__init__()
        if plane_projection not in PLANE_PROJECTIONS:
            raise ValueError(f"plane_projection must be one of {sorted(PLANE_PROJECTIONS)}, got {plane_projection!r}")
        if plane_sampler not in ("auto", *PLANE_SAMPLERS):
            raise ValueError(f"plane_sampler must be 'auto' or one of {sorted(PLANE_SAMPLERS)}, got {plane_sampler!r}")
        self.plane_projection = plane_projection
        self.plane_sampler = plane_sampler

    def mean_plane_features(self, planes: torch.Tensor, points: torch.Tensor, box_warp: float) -> torch.Tensor:
        # 'auto': the fused gather on CPU, cuDNN-free grid_sample (the official op) on accelerators.
        name = self.plane_sampler
        if name == "auto":
            name = "gather" if planes.device.type == "cpu" else "grid_sample"
        return PLANE_SAMPLERS[name](planes, points, box_warp, self.plane_projection)

    def radiance(
        self, planes: torch.Tensor, decoder: "OSGDecoder", points: torch.Tensor, box_warp: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features [N, M, 32] and raw density [N, M, 1] of the radiance field at world ``points`` [N, M, 3]."""
        return decoder(self.mean_plane_features(planes, points, box_warp))

    def _query(
        self, planes: torch.Tensor, decoder: OSGDecoder, rays: Rays, depths: torch.Tensor, box_warp: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n, m, s, _ = depths.shape
        points = (rays.origins.unsqueeze(-2) + depths * rays.directions.unsqueeze(-2)).reshape(n, m * s, 3)
        features, densities = self.radiance(planes, decoder, points, box_warp)
        return features.reshape(n, m, s, -1), densities.reshape(n, m, s, 1)

    def render_chunk(
        self,
        planes: torch.Tensor,
        decoder: OSGDecoder,
        rays: Rays,
        draws: RendererDraws,
        options: dict,
    ) -> tuple[MarchResult, torch.Tensor, torch.Tensor]:
        """Render the rays of one chunk; returns the march result and the min/max sample depth."""
        start, end = float(options["ray_start"]), float(options["ray_end"])
        num_coarse = int(options["depth_resolution"])
        n, m, _ = rays.origins.shape
        base = torch.linspace(start, end, num_coarse, device=planes.device).reshape(1, 1, num_coarse, 1)
        depths_coarse = base.expand(n, m, -1, -1) + draws.stratified * ((end - start) / (num_coarse - 1))
        features_coarse, densities_coarse = self._query(planes, decoder, rays, depths_coarse, options["box_warp"])
        if int(options["depth_resolution_importance"]) == 0:
            result = march_rays(features_coarse, densities_coarse, depths_coarse)
            return result, depths_coarse.min(), depths_coarse.max()
        weights = compositing_weights(densities_coarse, depths_coarse)
        depths_fine = importance_depths(depths_coarse, weights, draws.importance)
        features_fine, densities_fine = self._query(planes, decoder, rays, depths_fine, options["box_warp"])
        result, depths = march_merged_samples(
            (features_coarse, features_fine), (densities_coarse, densities_fine), (depths_coarse, depths_fine)
        )
        return result, depths.min(), depths.max()

    def forward(
        self,
        planes: torch.Tensor,
        decoder: OSGDecoder,
        rays: Rays,
        draws: RendererDraws,
        options: dict,
        rays_per_chunk: int,
    ) -> MarchResult:
        n, num_rays, _ = rays.origins.shape
        importance = draws.importance.reshape(n, num_rays, -1)
        chunks: list[MarchResult] = []
        lo = hi = None
        for first in range(0, num_rays, rays_per_chunk):
            last = min(first + rays_per_chunk, num_rays)
            chunk_rays = Rays(rays.origins[:, first:last], rays.directions[:, first:last])
            chunk_draws = RendererDraws(
                stratified=draws.stratified[:, first:last], importance=importance[:, first:last].reshape(-1, importance.shape[-1])
            )
            result, chunk_lo, chunk_hi = self.render_chunk(planes, decoder, chunk_rays, chunk_draws, options)
            chunks.append(result)
            lo = chunk_lo if lo is None else torch.minimum(lo, chunk_lo)
            hi = chunk_hi if hi is None else torch.maximum(hi, chunk_hi)
        depth = torch.cat([c.depth for c in chunks], dim=1)
        return MarchResult(
            features=torch.cat([c.features for c in chunks], dim=1),
            depth=torch.clamp(depth, lo, hi),  # official: clamp to the range of ALL sample depths of the call
            weights_sum=torch.cat([c.weights_sum for c in chunks], dim=1),
        )
