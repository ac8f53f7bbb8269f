"""Tolerances derived from the arithmetic, not from one machine's output (rules: tests/README.md).

Float32 results depend on which kernels run: the CPU (AMD EPYC or Intel Xeon with AMX), PyTorch's
dispatch capability (``ATEN_CPU_CAPABILITY``), oneDNN's and MKL's instruction sets and the thread
count all change the order in which sums are accumulated. Each rounding of a value of size ``m``
errs by at most ``eps * m / 2``; independent roundings add like a random walk. So two float32
evaluations of the same formula whose longest dependency path holds ``n`` roundings (a length-K
reduction counts K; ``layers x K`` for a network) typically differ by about ``sqrt(n) * eps * m``,
where ``m`` is the largest magnitude on the path (approximated by the largest value of the
reference). :func:`roundoff_bound` allows ``SIGMAS`` times that.

A real bug (a wrong key mapping, a transposed axis, a missing term) changes values by O(m), i.e.
by ~1e5 roundings' worth; the bounds here stay far below that.
"""

from __future__ import annotations

import math

import numpy as np
import torch

FLOAT32_EPS = float(torch.finfo(torch.float32).eps)  # 2**-23: one float32 ulp at 1.0
FLOAT64_EPS = float(torch.finfo(torch.float64).eps)  # 2**-52
SIGMAS = 8.0  # margin over the random-walk estimate (covers both sides' errors and unlucky paths)

# Roundings on the tiny generator's longest paths (configs: networks/eg3d/configs.py "tiny"): mapping
# (8 layers x 512), 7 synthesis blocks x 2 modulated 3x3 convs (up to 64 x 9) and to-RGB, plane gather
# + decoder (32, 64), compositing; the super-resolution convs add about as many again.
TINY_PLANES_ROUNDINGS = 10_000
TINY_IMAGE_ROUNDINGS = 20_000


def largest_magnitude(values: torch.Tensor | np.ndarray | float) -> float:
    if isinstance(values, torch.Tensor):
        return values.detach().abs().max().item() if values.numel() else 0.0
    return float(np.max(np.abs(values))) if np.size(values) else 0.0


def roundoff_bound(
    reference: torch.Tensor | np.ndarray | float,
    roundings: float,
    eps: float = FLOAT32_EPS,
    path_magnitude: float | None = None,
) -> float:
    """Absolute float round-off allowance: ``SIGMAS * sqrt(roundings) * eps * m``.

    :param reference: the expected values; ``m`` is their largest magnitude unless ``path_magnitude``
        gives a larger one (a difference of large values, ``(ws + d) - ws``, errs like ``ws``, not ``d``).
    :param roundings: how many roundings the longest dependency path holds (see the module docstring);
        each test states how it counted.
    :param eps: machine epsilon of the compared computation (float32 unless both sides are float64).
    """
    scale = max(largest_magnitude(reference), path_magnitude or 0.0)
    return SIGMAS * math.sqrt(max(roundings, 1.0)) * eps * max(scale, eps)


def assert_close_roundoff(
    actual: torch.Tensor,
    expected: torch.Tensor,
    roundings: float,
    eps: float = FLOAT32_EPS,
    msg: str | None = None,
    path_magnitude: float | None = None,
) -> None:
    """``|actual - expected| <= roundoff_bound(expected, roundings, eps, path_magnitude)`` element-wise."""
    atol = roundoff_bound(expected, roundings, eps, path_magnitude)
    torch.testing.assert_close(
        actual.to(expected.dtype), expected, rtol=0.0, atol=atol,
        msg=None if msg is None else (lambda default: f"{msg} (round-off bound {atol:.3g}): {default}"),
    )


def np_assert_close_roundoff(
    actual: np.ndarray, expected: np.ndarray, roundings: float, eps: float = FLOAT32_EPS
) -> None:
    """NumPy form of :func:`assert_close_roundoff`."""
    np.testing.assert_allclose(actual, expected, rtol=0.0, atol=roundoff_bound(expected, roundings, eps))
