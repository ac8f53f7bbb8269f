"""Named generator configurations and the factory the Hydra configs call.

* ``ffhq512-128`` / ``afhqcats512-128``: NVIDIA's released models (BEHAVIOUR §2, §13); they need a
  checkpoint (``ffhqrebalanced512-128.pkl`` / ``afhqcats512-128.pkl`` from NVIDIA's EG3D release, or
  their conversion by ``python -m networks.eg3d.convert``).
* ``tiny``: the same architecture and code paths with small widths and few samples, for tests and
  the CPU default run (64x64 images, neural rendering at 16x16, 12 + 12 samples per ray, z_dim 8).
  Its 8-d z keeps the latents on a low-dimensional manifold, like the few dominant directions of a
  trained generator's W: measured with calibrated random weights, ridge regression from 400 images
  reads w to 10% of its prior error with z_dim 8, but only to 79% with z_dim 64.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import torch

from networks.eg3d.generator import TriPlaneGenerator
from networks.eg3d.layers import FullyConnectedLayer
from networks.eg3d.outputs import RendererDraws

_RELEASED_RENDERING = {
    "image_resolution": 512,
    "disparity_space_sampling": False,
    "clamp_mode": "softplus",
    "superresolution_module": "training.superresolution.SuperresolutionHybrid8XDC",
    "c_gen_conditioning_zero": False,
    "c_scale": 1.0,
    "superresolution_noise_mode": "none",
    "density_reg": 0.25,
    "density_reg_p_dist": 0.004,
    "reg_type": "l1",
    "decoder_lr_mul": 1.0,
    "sr_antialias": True,
    "depth_resolution": 48,
    "depth_resolution_importance": 48,
    "ray_start": 2.25,
    "ray_end": 3.3,
    "box_warp": 1,
    "avg_camera_radius": 2.7,
    "avg_camera_pivot": [0, 0, 0.2],
}

_RELEASED_KWARGS: dict[str, Any] = {
    "z_dim": 512,
    "c_dim": 25,
    "w_dim": 512,
    "img_resolution": 512,
    "img_channels": 3,
    "sr_num_fp16_res": 4,
    "mapping_kwargs": {"num_layers": 2},
    "channel_base": 32768,
    "channel_max": 512,
    "fused_modconv_default": "inference_only",
    "num_fp16_res": 0,
    "conv_clamp": None,
    "sr_kwargs": {"channel_base": 32768, "channel_max": 512, "fused_modconv_default": "inference_only"},
    "rendering_kwargs": _RELEASED_RENDERING,
}


def _released(pivot: list[float]) -> dict[str, Any]:
    kwargs = copy.deepcopy(_RELEASED_KWARGS)
    kwargs["rendering_kwargs"]["avg_camera_pivot"] = pivot
    return {"generator_kwargs": kwargs, "neural_rendering_resolution": 128}


def _tiny() -> dict[str, Any]:
    kwargs = copy.deepcopy(_RELEASED_KWARGS)
    kwargs.update(z_dim=8, img_resolution=64, channel_base=1024, channel_max=32)
    kwargs["sr_kwargs"] = {"fused_modconv_default": "inference_only", "block_channels": [16, 8]}
    kwargs["rendering_kwargs"].update(image_resolution=64, depth_resolution=12, depth_resolution_importance=12)
    return {"generator_kwargs": kwargs, "neural_rendering_resolution": 16}


GENERATOR_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": _tiny(),
    "ffhq512-128": _released([0, 0, 0.2]),
    "afhqcats512-128": _released([0, 0, -0.06]),
}


def generator_config(name: str) -> dict[str, Any]:
    if name not in GENERATOR_CONFIGS:
        raise ValueError(f"unknown generator config {name!r}; known: {sorted(GENERATOR_CONFIGS)}")
    return copy.deepcopy(GENERATOR_CONFIGS[name])


def build_generator(name_or_kwargs: str | dict[str, Any], neural_rendering_resolution: int | None = None) -> TriPlaneGenerator:
    """A generator with constructor-initialised weights from a named config or explicit kwargs."""
    if isinstance(name_or_kwargs, str):
        config = generator_config(name_or_kwargs)
        kwargs, resolution = config["generator_kwargs"], config["neural_rendering_resolution"]
    else:
        kwargs, resolution = copy.deepcopy(dict(name_or_kwargs)), None
    generator = TriPlaneGenerator(**kwargs)
    if neural_rendering_resolution is not None:
        resolution = neural_rendering_resolution
    if resolution is not None:
        generator.neural_rendering_resolution = int(resolution)
    return generator


# Renders used to calibrate the output ranges of random weights (calibrate_output_ranges_).
CALIBRATION_SAMPLES = 8


@torch.no_grad()
def randomize_generator_weights_(
    generator: TriPlaneGenerator, seed: int, calibration_samples: int = CALIBRATION_SAMPLES
) -> TriPlaneGenerator:
    """Non-trivial random weights (as in the golden fixture) so biases, noise and truncation all matter.

    Weights, constants and noise buffers are redrawn from the constructor's own distribution (N(0, 1),
    divided by the layer's learning-rate multiplier for equalised FC layers: without that the mapping
    network, lr_mul 0.01, would squash every z to almost the same w); biases ~ N(0, 0.1); affine biases
    ~ 1 + N(0, 0.1); noise strengths ~ N(0, 0.1). The decoder's output layer is sharpened (see
    ``_increase_decoder_contrast_``) and ``w_avg`` is set to what training would have
    tracked (the mean mapping output, over z ~ N(0, I) at the canonical camera), so that encoders which
    start from w_avg (GOAE, e4e) start at the centre of the latents this generator actually produces.
    Finally the output ranges are calibrated on ``calibration_samples`` renders (see
    ``calibrate_output_ranges_``; 0 skips it, e.g. for timing-only benchmarks of the 512 px configs).
    Deterministic for a given seed.
    """
    rng = torch.Generator().manual_seed(int(seed))
    weight_scale = {
        f"{name}.weight": 1.0 / module.bias_gain
        for name, module in generator.named_modules()
        if isinstance(module, FullyConnectedLayer)
    }
    for name, tensor in generator.state_dict(keep_vars=True).items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("resample_filter", "dataset_label_std"):
            continue
        noise = torch.randn(tensor.shape, generator=rng)
        if name.endswith("affine.bias"):
            tensor.copy_(1 + 0.1 * noise)
        elif leaf in ("bias", "noise_strength"):
            tensor.copy_(0.1 * noise)
        elif leaf == "w_avg":
            tensor.copy_(0.5 * noise)
        else:
            tensor.copy_(noise * weight_scale.get(name, 1.0))
    _increase_decoder_contrast_(generator)
    set_w_avg_to_mapping_mean_(generator, rng)
    if calibration_samples > 0:
        calibrate_output_ranges_(generator, rng, calibration_samples)
    return generator


# An unscaled random OSG decoder renders an almost transparent (opacity ~0.3), uniformly grey radiance
# field: its renderings hardly depend on the tri-planes, so nothing could be learned about w from them.
# Sharper densities and features make random tri-planes render opaque, structured images and depths.
DECODER_DENSITY_GAIN, DECODER_FEATURE_GAIN, DECODER_DENSITY_BIAS = 8.0, 4.0, 2.0


@torch.no_grad()
def _increase_decoder_contrast_(generator: TriPlaneGenerator) -> None:
    last = generator.decoder.net[2]
    last.weight[0] *= DECODER_DENSITY_GAIN
    last.weight[1:] *= DECODER_FEATURE_GAIN
    last.bias[0] += DECODER_DENSITY_BIAS


# Targets of the output calibration: the decoder's colour/feature pre-activations (before its widened
# sigmoid) and the final image, per channel over canonical renders of random z.
DECODER_FEATURE_PREACTIVATION_STD = 1.0
IMAGE_STD = 0.5
IMAGE_CALIBRATION_ROUNDS = 3


@torch.no_grad()
def calibrate_output_ranges_(generator: TriPlaneGenerator, rng: torch.Generator, num_samples: int) -> None:
    """Data-dependent initialisation (as in LSUV) of the two output layers of a random generator.

    Uncalibrated, the random decoder's colour channels sit deep in its sigmoid (one of them at -1.000
    with std 6e-4) and the super-resolution's to-RGB layers push red and green to about -1.8, so after
    clamping most of each image is one flat colour that carries nothing about w. Measured on the tiny
    config: linear (ridge) regression from 400 images to w then stays at the prior; calibrated, the
    images are colourful and w is readable from them.

    1. The decoder's feature outputs (channels 1..) are shifted and scaled so that, at the points the
       renderer samples, each has mean 0 and std ``DECODER_FEATURE_PREACTIVATION_STD`` before the
       sigmoid. The density channel keeps ``_increase_decoder_contrast_``'s sharpening.
    2. The super-resolution's to-RGB layers (which add to the upsampled low-resolution image; no
       demodulation, so their output is linear in their weight) are scaled per colour channel, and the
       last one's bias shifted, until the final image has per-channel mean 0 and std ``IMAGE_STD``.
    """
    from cameras import canonical_camera_label  # local: cameras is a sibling package, not a dependency of eg3d

    device = generator.w_avg.device
    z = torch.randn([num_samples, generator.z_dim], generator=rng).to(device)
    c = canonical_camera_label(num_samples, device=device)
    ws = generator.mapping(z, c)
    cpu_draws = generator.sample_draws(num_samples, generator=rng, device="cpu")  # rng is a CPU generator
    draws = RendererDraws(stratified=cpu_draws.stratified.to(device), importance=cpu_draws.importance.to(device))

    planes = generator.synthesize_planes(ws, "const")  # the calibrated layers come after the tri-planes
    output_layer = generator.decoder.net[-1]
    preactivations: list[torch.Tensor] = []
    hook = output_layer.register_forward_hook(
        lambda _module, _inputs, output: preactivations.append(output.reshape(-1, output.shape[-1]))
    )
    try:
        generator.render_planes(planes, ws, c, draws=draws)
    finally:
        hook.remove()
    features = torch.cat(preactivations)[:, 1:].double()
    scale = (DECODER_FEATURE_PREACTIVATION_STD / features.std(dim=0).clamp_min(1e-8)).to(output_layer.weight.dtype)
    shift = features.mean(dim=0).to(output_layer.bias.dtype)
    output_layer.weight[1:] *= scale[:, None]
    output_layer.bias[1:] = (output_layer.bias[1:] * output_layer.bias_gain - shift) * scale / output_layer.bias_gain

    to_rgb_layers = [module.torgb for module in generator.superresolution.children() if hasattr(module, "torgb")]
    for _ in range(IMAGE_CALIBRATION_ROUNDS):  # the upsampled skip is not scaled: a few rounds converge
        image = generator.render_planes(planes, ws, c, draws=draws).image.double()
        mean, std = image.mean(dim=(0, 2, 3)), image.std(dim=(0, 2, 3)).clamp_min(1e-8)
        gain = (IMAGE_STD / std).float()
        for to_rgb in to_rgb_layers:
            to_rgb.weight *= gain[:, None, None, None]
        to_rgb_layers[-1].bias -= (mean * gain.double()).float()


@torch.no_grad()
def set_w_avg_to_mapping_mean_(generator: TriPlaneGenerator, rng: torch.Generator, num_samples: int = 4096) -> None:
    from cameras import canonical_camera_label  # local: cameras is a sibling package, not a dependency of eg3d

    z = torch.randn([num_samples, generator.z_dim], generator=rng).to(generator.w_avg.device)
    c = canonical_camera_label(num_samples, device=generator.w_avg.device)
    generator.w_avg.copy_(generator.mapping(z, c)[:, 0].mean(dim=0))


def freeze(generator: TriPlaneGenerator) -> TriPlaneGenerator:
    generator.eval()
    generator.requires_grad_(False)
    return generator


def generator_from_config(
    name: str, checkpoint: str | None = None, random_init: bool = False, seed: int = 0
) -> TriPlaneGenerator:
    """The frozen generator a run uses: loaded from ``checkpoint``, or random weights by explicit choice."""
    if checkpoint:
        from networks.eg3d.checkpoint import load_generator  # local import: keeps the loader optional here

        return freeze(load_generator(checkpoint))
    if not random_init:
        raise ValueError(
            f"generator {name!r} has no checkpoint: set generator.checkpoint=PATH (NVIDIA's .pkl or a converted "
            "state dict) or generator.random_init=true to use random weights on purpose"
        )
    generator = build_generator(name)
    generator.load_state_dict(_random_state_dict(name, seed))
    return freeze(generator)


@functools.lru_cache(maxsize=8)
def _random_state_dict(name: str, seed: int) -> dict[str, torch.Tensor]:
    """Random weights of a named config, drawn (and calibrated) once per process: tests and loader
    processes build the same generator many times. Callers get copies via load_state_dict."""
    return randomize_generator_weights_(build_generator(name), seed).state_dict()
