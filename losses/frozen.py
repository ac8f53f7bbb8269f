"""Holding a frozen, pretrained network inside a loss module without making it part of the model.

A loss network (LPIPS' AlexNet, ArcFace IR-SE50) is loaded from a file, never trained, and identical
on every rank. It must therefore stay out of

* ``state_dict()`` / Lightning checkpoints (it is reloaded from its file; 170 MB of IR-SE50 per
  checkpoint would be waste),
* ``parameters()`` (optimisers, DDP's gradient buckets and unused-parameter checks),
* ``.train()`` (the network must stay in eval mode: LPIPS' heads have dropout, IR-SE50 has BatchNorm),

while still following ``.to(device)`` / ``.double()`` of the module that owns it.

:class:`FrozenNetworkHolder` does exactly that: it keeps the network in a tuple (so ``nn.Module``
does not register it as a child) and forwards ``_apply`` (what ``.to``/``.cuda``/``.half`` use) to it.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn


class FrozenNetworkHolder(nn.Module):
    """Base class for loss modules that own one frozen network kept outside the module tree."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        network.requires_grad_(False)
        network.eval()
        # A tuple is not an nn.Module, so the network is not registered as a child.
        self._frozen_network: tuple[nn.Module] = (network,)

    @property
    def network(self) -> nn.Module:
        """The frozen network (eval mode, no parameter requires grad)."""
        return self._frozen_network[0]

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> FrozenNetworkHolder:
        super()._apply(fn, recurse)
        self.network._apply(fn, recurse)
        return self

    def train(self, mode: bool = True) -> FrozenNetworkHolder:
        # The frozen network is not a child, so it stays in eval mode whatever the owner does.
        super().train(mode)
        self.network.eval()
        return self


RANDOM_INIT = "random"
"""The explicit choice, in place of a weights file, to keep a loss network randomly initialised
(tests and smoke runs only: the loss values then mean nothing)."""


class PretrainedWeightsError(RuntimeError):
    """A configured weights file for a loss network is missing, unreadable, or not the expected network."""


def read_state_dict_file(path: str | Path, expected: str) -> dict[str, torch.Tensor]:
    """Load a flat ``{name: tensor}`` state dict with ``torch.load(weights_only=True)``.

    :param path: the configured file.
    :param expected: one sentence naming the expected file and where it comes from; it is part of
        every error message, so the user knows what to download.
    :return: the state dict (on CPU).
    :raises PretrainedWeightsError: the file is missing, cannot be read safely, or holds no flat
        state dict of tensors.
    """
    weights_path = Path(path).expanduser()
    if not weights_path.is_file():
        raise PretrainedWeightsError(f"weights file not found: {weights_path}. Expected {expected}")
    try:
        loaded = torch.load(weights_path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PretrainedWeightsError(
            f"cannot read {weights_path} as a tensors-only checkpoint ({first_line}); it is never loaded "
            f"with weights_only=False. Expected {expected}"
        ) from error
    if not isinstance(loaded, dict) or not loaded or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in loaded.items()
    ):
        raise PretrainedWeightsError(
            f"{weights_path} does not hold a flat state dict of tensors. Expected {expected}"
        )
    return loaded


def describe_key_mismatch(missing: list[str], unexpected: list[str], shown: int = 4) -> str:
    """A short human-readable summary of missing/unexpected state-dict keys."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:shown])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:shown])})")
    return "; ".join(parts)
