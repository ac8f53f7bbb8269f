"""Our EG3D's building blocks against the official formulations, and its public API."""

from __future__ import annotations

import pytest
import torch

from cameras import canonical_camera_label, look_at_label, pixel_grid_rays
from networks.eg3d.configs import build_generator, generator_from_config, randomize_generator_weights_
from networks.eg3d.generator import TriPlaneGenerator, camera_matrices
from networks.eg3d.layers import (
    make_resample_filter,
    modulated_conv2d,
)
from networks.eg3d.outputs import RendererDraws
from networks.eg3d.renderer import (
    compositing_weights,
    march_merged_samples,
    march_rays,
    rays_from_cameras,
    sample_mean_plane_features,
    sample_mean_plane_features_reference,
)
from tolerances import TINY_IMAGE_ROUNDINGS, TINY_PLANES_ROUNDINGS, assert_close_roundoff


@pytest.fixture(scope="module")
def tiny() -> TriPlaneGenerator:
    return generator_from_config("tiny", random_init=True, seed=3)


@pytest.mark.numerics
@pytest.mark.parametrize("upsample", [False, True])
def test_fused_and_unfused_modulated_conv_agree(upsample: bool):
    torch.manual_seed(1)
    x, w, styles, noise = torch.randn(3, 8, 6, 6), torch.randn(5, 8, 3, 3), torch.randn(3, 8), torch.randn(1, 1, 1, 1)
    fir = make_resample_filter()
    fused = modulated_conv2d(x, w, styles, noise, upsample, 1, fir, demodulate=True, fused=True)
    unfused = modulated_conv2d(x, w, styles, noise, upsample, 1, fir, demodulate=True, fused=False)
    # grouped conv against conv on modulated weights: 8 x 9 products + the 4x4 up-sampling filter
    assert_close_roundoff(fused, unfused, roundings=8 * 9 + 16)
    # Demodulation: with unit-variance input and no noise, each output channel is independent of the
    # style scale (scaling the styles by 7 leaves the result unchanged).
    scaled = modulated_conv2d(x, w, 7 * styles, None, upsample, 1, fir, demodulate=True, fused=False)
    plain = modulated_conv2d(x, w, styles, None, upsample, 1, fir, demodulate=True, fused=False)
    assert_close_roundoff(scaled, plain, roundings=2 * (8 * 9 + 16))  # + the demodulation's own sum


@pytest.mark.numerics
def test_gather_plane_sampling_matches_grid_sample_values_and_gradients():
    torch.manual_seed(2)
    planes = torch.randn(2, 3, 5, 7, 6, requires_grad=True)
    points = (torch.rand(2, 50, 3) - 0.5) * 1.3  # some points outside the box read zeros
    ours = sample_mean_plane_features(planes, points, 1.0, "eg3d")
    reference = sample_mean_plane_features_reference(planes, points, 1.0, "eg3d")
    assert_close_roundoff(ours, reference, roundings=3 * 4 + 8)  # 3 planes x 4 texels + weights
    grad_ours = torch.autograd.grad(ours.square().sum(), planes)[0]
    grad_ref = torch.autograd.grad(reference.square().sum(), planes)[0]
    assert_close_roundoff(grad_ours, grad_ref, roundings=2 * 50 * 4)  # up to 50 points x 4 weights per texel


def test_plane_projection_option_changes_only_the_third_plane():
    points = torch.tensor([[[0.1, 0.2, 0.3]]])
    planes = torch.zeros(1, 3, 1, 8, 8)
    planes[:, 2] = torch.arange(64.0).reshape(8, 8)  # only the third plane carries signal
    eg3d = sample_mean_plane_features_reference(planes, points, 1.0, "eg3d")
    orthogonal = sample_mean_plane_features_reference(planes, points, 1.0, "orthogonal")
    assert not torch.allclose(eg3d, orthogonal)


@pytest.mark.numerics
def test_merged_marching_equals_official_sort_then_march():
    torch.manual_seed(3)
    n, m, d1, d2, c = 2, 5, 6, 4, 3
    depths = (torch.rand(n, m, d1, 1) + 2.0, torch.rand(n, m, d2, 1) + 2.0)
    densities = (torch.randn(n, m, d1, 1), torch.randn(n, m, d2, 1))
    features = (torch.rand(n, m, d1, c), torch.rand(n, m, d2, c))
    ours, merged_depths = march_merged_samples(features, densities, depths)
    all_depths = torch.cat(depths, -2)
    order = torch.sort(all_depths, dim=-2).indices
    reference = march_rays(
        torch.gather(torch.cat(features, -2), -2, order.expand(-1, -1, -1, c)),
        torch.gather(torch.cat(densities, -2), -2, order),
        torch.gather(all_depths, -2, order),
    )
    # Transmittance products and weighted sums over d1 + d2 = 10 samples: a few roundings each.
    for name in ("features", "depth", "weights_sum"):
        assert_close_roundoff(getattr(ours, name), getattr(reference, name), roundings=4 * (d1 + d2), msg=name)
    assert torch.equal(merged_depths, all_depths)


@pytest.mark.numerics
def test_compositing_weights_closed_form():
    # One interval of constant raw density s between depths 0 and 1: alpha = 1 - exp(-softplus(s - 1)).
    density = torch.full((1, 1, 2, 1), 2.0)
    depth = torch.tensor([0.0, 1.0]).reshape(1, 1, 2, 1)
    weights = compositing_weights(density, depth)
    expected = 1 - torch.exp(-torch.nn.functional.softplus(torch.tensor(1.0)))
    assert torch.allclose(weights.flatten(), expected.reshape(1))


@pytest.mark.numerics
def test_renderer_rays_agree_with_camera_module():
    label = look_at_label(torch.tensor([0.3, -0.2]), torch.tensor([0.1, 0.0]))
    ours = rays_from_cameras(*camera_matrices(label), resolution=8)
    theirs = pixel_grid_rays(label, 8)
    assert_close_roundoff(ours.origins, theirs.origins, roundings=16)  # 4x4 matrix products + normalisation
    assert_close_roundoff(ours.directions, theirs.directions, roundings=16)


@pytest.mark.numerics
def test_tiny_generator_stages_compose(tiny: TriPlaneGenerator):
    z, c = torch.randn(2, tiny.z_dim), canonical_camera_label(2)
    with torch.no_grad():
        ws = tiny.mapping(z, c)
        assert ws.shape == (2, 14, 512)
        features = tiny.synthesize_features(ws, until_block="b32")
        assert features.features.shape == (2, 32, 32, 32) and features.skip_image.shape == (2, 96, 32, 32)
        resumed = tiny.synthesize_planes_from_features(ws, features)
        planes = tiny.synthesize_planes(ws)
        assert planes.shape == (2, 3, 32, 256, 256)
        assert_close_roundoff(resumed, planes, TINY_PLANES_ROUNDINGS)
        draws = tiny.sample_draws(2, generator=torch.Generator().manual_seed(0))
        full = tiny.synthesis(ws, c, draws=draws)
        rendered = tiny.render_planes(planes, ws, c, draws=draws)
    assert full.image.shape == (2, 3, 64, 64) and full.image_depth.shape == (2, 1, 16, 16)
    assert_close_roundoff(full.image, rendered.image, TINY_IMAGE_ROUNDINGS)
    ray_start, ray_end = tiny.rendering_kwargs["ray_start"], tiny.rendering_kwargs["ray_end"]
    assert full.image_depth.min() >= ray_start and full.image_depth.max() <= ray_end + 0.1
    assert (full.image[0] - full.image[1]).abs().mean() > 0.05  # different z -> different images


@pytest.mark.numerics
def test_chunking_does_not_change_the_rendering(tiny: TriPlaneGenerator):
    ws = tiny.mapping(torch.randn(2, tiny.z_dim), canonical_camera_label(2))
    c = look_at_label(torch.tensor([0.2, -0.3]), torch.tensor([0.0, 0.1]))
    draws = tiny.sample_draws(2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        planes = tiny.synthesize_planes(ws)
        whole = tiny.render_planes(planes, ws, c, draws=draws)
        budget = tiny.points_per_chunk
        tiny.points_per_chunk = 2 * 24 * 7  # 7 rays per chunk, not a divisor of 256
        try:
            chunked = tiny.render_planes(planes, ws, c, draws=draws)
        finally:
            tiny.points_per_chunk = budget
    # Other chunk sizes run the decoder's GEMMs on other shapes (other kernels and blocking).
    for name in ("image", "image_depth", "feature_image", "weights_sum"):
        assert_close_roundoff(getattr(chunked, name), getattr(whole, name), TINY_IMAGE_ROUNDINGS, msg=name)


@pytest.mark.numerics
def test_truncation_moves_ws_towards_w_avg(tiny: TriPlaneGenerator):
    z, c = torch.randn(3, tiny.z_dim), canonical_camera_label(3)
    full = tiny.mapping(z, c)
    truncated = tiny.mapping(z, c, truncation_psi=0.5, truncation_cutoff=8)
    expected = tiny.w_avg + 0.5 * (full[:, :8] - tiny.w_avg)
    assert_close_roundoff(truncated[:, :8], expected, roundings=3)  # lerp against sub, mul, add
    assert torch.equal(truncated[:, 8:], full[:, 8:])


def test_gradients_reach_ws_through_rendering(tiny: TriPlaneGenerator):
    ws = tiny.mapping(torch.randn(1, tiny.z_dim), canonical_camera_label(1)).requires_grad_(True)
    out = tiny.synthesis(ws, canonical_camera_label(1))
    (out.image.mean() + out.image_depth.mean()).backward()
    assert ws.grad is not None and ws.grad.abs().sum() > 0


def test_random_init_gives_distinct_latents():
    generator = randomize_generator_weights_(build_generator("tiny"), seed=0)
    ws = generator.mapping(torch.randn(8, generator.z_dim), canonical_camera_label(8))
    assert ws[:, 0].std(0).mean() > 0.05  # mapping weights keep the 1/lr_multiplier scale


def test_random_weights_are_calibrated_to_informative_output_ranges(tiny: TriPlaneGenerator):
    """Held-out z (not the calibration draws) and a non-canonical camera: the image is centred with
    std near IMAGE_STD per channel, and the decoder's colours are not stuck at a sigmoid end, as they
    were before calibration (one channel at -1.000 +- 6e-4, red/green images near -1.8)."""
    from networks.eg3d.configs import IMAGE_STD

    z = torch.randn(16, tiny.z_dim, generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        ws = tiny.mapping(z, canonical_camera_label(16))
        output = tiny.synthesis(ws, look_at_label(yaw=0.3, pitch=-0.1).expand(16, -1))
    mean, std = output.image.mean(dim=(0, 2, 3)), output.image.std(dim=(0, 2, 3))
    assert mean.abs().max() < 0.25, mean
    assert ((std > 0.6 * IMAGE_STD) & (std < 1.5 * IMAGE_STD)).all(), std
    assert (output.image_raw.std(dim=(0, 2, 3)) > 0.1).all()  # every low-resolution colour varies
    assert output.image.std(dim=0).mean() > 0.2  # images differ between z, not only within one image
    # Deterministic: the same seed gives the same calibrated weights (cached or not).
    again = randomize_generator_weights_(build_generator("tiny"), seed=3)
    for name, value in again.state_dict().items():
        torch.testing.assert_close(value, tiny.state_dict()[name], rtol=0, atol=0, msg=name)


def test_clear_errors_for_bad_inputs(tiny: TriPlaneGenerator):
    with pytest.raises(ValueError, match=r"\[N, 14, 512\]"):
        tiny.synthesize_planes(torch.zeros(1, 13, 512))
    with pytest.raises(ValueError, match=r"\[N, 25\]"):
        tiny.synthesis(torch.zeros(1, 14, 512), torch.zeros(1, 16))
    with pytest.raises(ValueError, match="unknown backbone block"):
        tiny.synthesize_features(torch.zeros(1, 14, 512), until_block="b33")
    with pytest.raises(ValueError, match="no checkpoint"):
        generator_from_config("ffhq512-128")
    bad = dict(build_generator("tiny").init_kwargs)
    bad["rendering_kwargs"] = {**bad["rendering_kwargs"], "clamp_mode": "relu"}
    with pytest.raises(ValueError, match="clamp_mode"):
        TriPlaneGenerator(**bad)
    with pytest.raises(ValueError, match="draws"):
        tiny.synthesis(torch.zeros(1, 14, 512), canonical_camera_label(1), draws=RendererDraws(torch.zeros(1, 2, 3, 1), torch.zeros(2, 3)))


@pytest.mark.numerics
def test_channels_last_and_bf16_autocast_paths(tiny: TriPlaneGenerator):
    ws = tiny.mapping(torch.randn(2, tiny.z_dim), canonical_camera_label(2))
    c = canonical_camera_label(2)
    draws = tiny.sample_draws(2, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        reference = tiny.synthesis(ws, c, draws=draws)
        tiny.use_channels_last()
        try:
            channels_last = tiny.synthesis(ws, c, draws=draws)
        finally:
            tiny.use_channels_last(False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low_precision = tiny.synthesis(ws, c, draws=draws)
    assert_close_roundoff(channels_last.image, reference.image, TINY_IMAGE_ROUNDINGS)  # NHWC conv kernels
    # bf16 backbone/SR: close but not equal; the volume renderer itself always runs in fp32.
    assert low_precision.image_depth.dtype == torch.float32
    assert (low_precision.image.float() - reference.image).abs().mean() < 0.05
    assert not torch.equal(low_precision.image.float(), reference.image)
