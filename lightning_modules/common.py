"""What every training stage shares: frozen networks kept out of checkpoints and DDP, config helpers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

# Module prefixes whose parameters and buffers are never in a checkpoint (rebuilt from their configs).
FROZEN_PREFIXES: tuple[str, ...] = ("generator.", "loss.")


class FrozenNetworksOutOfCheckpoints:
    """Mixin for a LightningModule: drops the frozen generator and loss networks from ``state_dict`` and
    tolerates exactly their absence when loading (anything else missing or unexpected is an error)."""

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        full = super().state_dict(*args, **kwargs)  # type: ignore[misc]
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        dropped = tuple(prefix + name for name in FROZEN_PREFIXES)
        for key in [key for key in full if key.startswith(dropped)]:
            del full[key]
        return full

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        result = super().load_state_dict(state_dict, strict=False, assign=assign)  # type: ignore[misc]
        missing = [key for key in result.missing_keys if not key.startswith(FROZEN_PREFIXES)]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(
                f"checkpoint does not fit {type(self).__name__}: missing {missing[:6]}, "
                f"unexpected {result.unexpected_keys[:6]}"
            )
        return result


def state_keys_outside(module: nn.Module, prefixes: Sequence[str]) -> list[str]:
    """Names of the parameters and buffers NOT under ``prefixes`` (for DDP's ignore list)."""
    names = [name for name, _ in module.named_parameters()] + [name for name, _ in module.named_buffers()]
    return [name for name in names if not name.startswith(tuple(prefixes))]


def as_dataclass(kind: type, value: Any) -> Any:
    """A dataclass from None (defaults), an instance, or a mapping (Hydra config)."""
    if value is None:
        return kind()
    if isinstance(value, kind):
        return value
    return kind(**dict(value))
