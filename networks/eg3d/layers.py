"""StyleGAN2 building blocks in plain PyTorch, numerically equivalent to the official reference ops.

Everything here follows the conventions of NVIDIA's released weights (described in
``../shared/eg3d/BEHAVIOUR.md``), so parameters and buffers load 1:1 from official checkpoints:

* equalised learning rate: stored weights are scaled at run time by ``lr_multiplier / sqrt(fan_in)``;
* modulated 3x3 convolutions with demodulation, per-sample styles from an affine layer (bias init 1);
* resampling with the normalised 4x4 FIR filter outer([1,3,3,1], [1,3,3,1]) / 64.

No custom CUDA ops: the filters are small depthwise convolutions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)
DEMODULATION_EPS = 1e-8


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or kept in float64: the official code upcasts fp16/bf16 paths to float32, and a
    float64 generator (reference computations in tests) must stay float64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def make_resample_filter(taps: tuple[float, ...] = (1.0, 3.0, 3.0, 1.0)) -> torch.Tensor:
    """The separable low-pass filter as a normalised 2-D kernel (sums to 1)."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def bias_leaky_relu(x: torch.Tensor, bias: torch.Tensor, gain: float, clamp: float | None) -> torch.Tensor:
    """x + bias, leaky ReLU(0.2), times ``gain``, then clamp to ±clamp (the reference bias_act 'lrelu')."""
    x = F.leaky_relu(x + bias.reshape(1, -1, *([1] * (x.ndim - 2))), LRELU_SLOPE) * gain
    return x if clamp is None else x.clamp(-clamp, clamp)


def bias_linear(x: torch.Tensor, bias: torch.Tensor, clamp: float | None) -> torch.Tensor:
    x = x + bias.reshape(1, -1, *([1] * (x.ndim - 2)))
    return x if clamp is None else x.clamp(-clamp, clamp)


def filter2d(x: torch.Tensor, kernel: torch.Tensor, padding: tuple[int, int, int, int], gain: float) -> torch.Tensor:
    """Depthwise FIR filtering with zero padding (left, right, top, bottom); ``kernel`` is symmetric."""
    channels = x.shape[1]
    x = F.pad(x, list(padding))
    weight = (kernel * gain).to(x.dtype)[None, None].expand(channels, 1, -1, -1)
    return F.conv2d(x, weight, groups=channels)


def upsample2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """2x upsampling: zero insertion, pad (2, 1) per axis, 4x4 FIR with gain 4 (StyleGAN2 skip path)."""
    n, c, h, w = x.shape
    up = x.new_zeros(n, c, h, 2, w, 2)
    up[:, :, :, 0, :, 0] = x
    up = up.reshape(n, c, 2 * h, 2 * w)
    return filter2d(up, kernel, (2, 1, 2, 1), gain=4.0)


class FullyConnectedLayer(nn.Module):
    """Linear layer with equalised learning rate (stored weight = effective weight * sqrt(fan_in) / lr_mul)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        if activation not in ("linear", "lrelu"):
            raise ValueError(f"unsupported activation {activation!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear":
            return torch.addmm(b.unsqueeze(0), x, w.t()) if b is not None else x.matmul(w.t())
        x = x.matmul(w.t())
        return bias_leaky_relu(x, b, LRELU_GAIN, None) if b is not None else F.leaky_relu(x, LRELU_SLOPE) * LRELU_GAIN

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    noise: torch.Tensor | None,
    upsample: bool,
    padding: int,
    resample_filter: torch.Tensor | None,
    demodulate: bool,
    fused: bool,
) -> torch.Tensor:
    """StyleGAN2 modulated convolution.

    ``fused`` runs one grouped convolution with per-sample weights (what the official code does in
    eval mode); otherwise the input is scaled by the styles, one convolution with the shared weight
    runs over the whole batch, and the output is scaled by the demodulation coefficients. Both are
    the same function up to float rounding (~1e-6); the unfused form is much faster for batches > 1.
    """
    batch = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    styles = styles.to(x.dtype)
    dcoefs = None
    if demodulate or fused:
        w = weight.unsqueeze(0) * styles.reshape(batch, 1, -1, 1, 1)
        if demodulate:
            dcoefs = (w.square().sum(dim=[2, 3, 4]) + DEMODULATION_EPS).rsqrt()
            if fused:
                w = w * dcoefs.reshape(batch, -1, 1, 1, 1)
    if fused:
        y = _conv_or_upconv(
            x.reshape(1, batch * in_channels, *x.shape[2:]),
            w.reshape(batch * out_channels, in_channels, kh, kw),
            upsample,
            padding,
            resample_filter,
            groups=batch,
        )
        y = y.reshape(batch, out_channels, *y.shape[2:])
    else:
        y = _conv_or_upconv(x * styles.reshape(batch, -1, 1, 1), weight.to(x.dtype), upsample, padding, resample_filter, 1)
        if dcoefs is not None:
            y = y * dcoefs.reshape(batch, -1, 1, 1)
    if noise is not None:
        y = y + noise
    return y


def _conv_or_upconv(
    x: torch.Tensor,
    weight: torch.Tensor,
    upsample: bool,
    padding: int,
    resample_filter: torch.Tensor | None,
    groups: int,
) -> torch.Tensor:
    """Plain convolution, or the 2x up-convolution followed by the FIR low-pass filter."""
    if not upsample:
        return F.conv2d(x, weight, padding=padding, groups=groups)
    if weight.shape[-2:] != (3, 3) or padding != 1:
        raise ValueError("the up-convolution is implemented for 3x3 kernels with padding 1 (all EG3D layers)")
    return upconv3x3_then_filter(x, weight, resample_filter, groups)


def upconv3x3_then_filter(
    x: torch.Tensor, weight: torch.Tensor, resample_filter: torch.Tensor, groups: int
) -> torch.Tensor:
    """The reference ``conv2d_resample`` for up=2: stride-2 transposed 3x3 conv without weight flip
    (H -> 2H+1), zero padding 1, 4x4 FIR with gain 4 = up**2 (-> 2H).

    (A four-phase formulation with ordinary 2x2 convolutions was tried: it is only faster for few
    input channels on CPU and slower for the large layers, so the transposed conv stays.)"""
    if groups == 1:
        w = weight.transpose(0, 1)
    else:
        out_total, in_per_group, kh, kw = weight.shape
        w = weight.reshape(groups, out_total // groups, in_per_group, kh, kw).transpose(1, 2)
        w = w.reshape(groups * in_per_group, out_total // groups, kh, kw)
    return filter2d(F.conv_transpose2d(x, w, stride=2, groups=groups), resample_filter, (1, 1, 1, 1), gain=4.0)


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally 2x up) + noise + bias + leaky ReLU (+ clamp)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        kernel_size: int = 3,
        up: int = 1,
        use_noise: bool = True,
        conv_clamp: float | None = None,
        **_unused,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.resolution = resolution
        self.upsample = up == 2
        self.use_noise = use_noise
        self.conv_clamp = conv_clamp
        self.padding = kernel_size // 2
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        # Registration order fixes the state-dict order, which matches the official manifest:
        # weight, noise_strength, bias, resample_filter, noise_const, affine.*
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.register_buffer("resample_filter", make_resample_filter())
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str, fused: bool) -> torch.Tensor:
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device, dtype=x.dtype)
            noise = noise * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const.to(x.dtype) * self.noise_strength
        elif noise_mode not in ("random", "const", "none"):
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        x = modulated_conv2d(
            x, self.weight, styles, noise, self.upsample, self.padding, self.resample_filter, demodulate=True, fused=fused
        )
        return bias_leaky_relu(x, self.bias.to(x.dtype), LRELU_GAIN, self.conv_clamp)


class ToRGBLayer(nn.Module):
    """1x1 modulated conv without demodulation (style scaled by 1/sqrt(C_in)), + bias, clamp."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, 1, 1]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1.0 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused: bool) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, None, False, 0, None, demodulate=False, fused=fused)
        return bias_linear(x, self.bias.to(x.dtype), self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the StyleGAN2 'skip' generator: [const | conv0↑], conv1, torgb; img accumulates."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        is_last: bool,
        conv_clamp: float | None = None,
        fused_modconv_default: bool | str = True,
        **_unused,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.fused_modconv_default = fused_modconv_default
        self.memory_format = torch.contiguous_format  # TriPlaneGenerator.use_channels_last() switches it
        self.register_buffer("resample_filter", make_resample_filter())
        self.num_conv = 0
        self.num_torgb = 0
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2, conv_clamp=conv_clamp)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.num_conv += 1
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_torgb += 1

    def use_fused_modconv(self) -> bool:
        """The official policy: 'inference_only' fuses (grouped conv with per-sample weights) in eval mode
        and modulates activations around a shared-weight conv in training mode. Both compute the same
        function up to float rounding (~1e-6); on CPU neither is faster for batches (measured)."""
        if self.fused_modconv_default == "inference_only":
            return not self.training
        return bool(self.fused_modconv_default)

    def forward(
        self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor, noise_mode: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        w_iter = iter(ws.unbind(1))
        batch = ws.shape[0]
        fused = self.use_fused_modconv()
        if self.in_channels == 0:
            x = self.const.to(ws.dtype).unsqueeze(0).expand(batch, -1, -1, -1).contiguous(memory_format=self.memory_format)
            x = self.conv1(x, next(w_iter), noise_mode, fused)
        else:
            x = self.conv0(x.contiguous(memory_format=self.memory_format), next(w_iter), noise_mode, fused)
            x = self.conv1(x, next(w_iter), noise_mode, fused)
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        y = at_least_float32(self.torgb(x, next(w_iter), fused))
        img = img + y if img is not None else y
        return x, img
