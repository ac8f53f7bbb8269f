"""PTI's pivot-search schedules (danielroich/PTI ``w_projector.py``, the StyleGAN2-ADA projector's).

With t = step / steps in [0, 1):
* learning rate: ``base * cosine_rampdown(t) * min(1, t / rampup)``, where the cosine ramp-down is
  ``0.5 - 0.5 cos(pi * min(1, (1 - t) / rampdown))``: 0 at the first step, ``base`` from 5 % of the
  run, easing back to 0 over the last quarter. (PTI's config value ``first_inv_lr = 5e-3`` is
  overwritten by this schedule every step; ``base`` is 0.01.)
* w noise: ``w_std * initial_factor * max(0, 1 - t / ramp)^2``, added to the latent at each step
  (not to the pivot that is returned), fading out at 75 % of the run.
"""

from __future__ import annotations

import math


def pti_learning_rate(step: int, num_steps: int, base: float = 0.01, rampdown: float = 0.25,
                      rampup: float = 0.05) -> float:
    """The learning rate of pivot-search step ``step`` of ``num_steps``."""
    t = step / num_steps
    ramp = min(1.0, (1.0 - t) / rampdown)
    ramp = 0.5 - 0.5 * math.cos(math.pi * ramp)
    return base * ramp * min(1.0, t / rampup)


def w_noise_scale(step: int, num_steps: int, w_std: float, initial_factor: float = 0.05,
                  ramp_length: float = 0.75) -> float:
    """Standard deviation of the noise added to the latent at step ``step`` of ``num_steps``."""
    t = step / num_steps
    return w_std * initial_factor * max(0.0, 1.0 - t / ramp_length) ** 2


def cosine_rampdown(step: int, num_steps: int) -> float:
    """1 at the first step, easing to 0 at the last (the camera's learning-rate factor in pose optimisation)."""
    return 0.5 + 0.5 * math.cos(math.pi * step / num_steps)


__all__ = ["cosine_rampdown", "pti_learning_rate", "w_noise_scale"]
