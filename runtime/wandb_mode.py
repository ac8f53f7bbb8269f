"""wandb without surprises: offline when no API key is configured, and one run id per run directory."""

from __future__ import annotations

import netrc
import secrets
from collections.abc import Mapping
from pathlib import Path

WANDB_HOST = "api.wandb.ai"
RUN_ID_FILENAME = "wandb_id.txt"


def has_wandb_api_key(environ: Mapping[str, str], netrc_path: Path | None = None) -> bool:
    """True when wandb could authenticate: WANDB_API_KEY, or a `wandb login` entry in ~/.netrc."""
    if environ.get("WANDB_API_KEY"):
        return True
    path = netrc_path or Path(environ.get("NETRC", Path.home() / ".netrc"))
    if not path.is_file():
        return False
    try:
        return netrc.netrc(str(path)).authenticators(WANDB_HOST) is not None
    except (netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_offline(requested: bool | None, environ: Mapping[str, str], netrc_path: Path | None = None) -> bool:
    """Decide whether WandbLogger runs offline.

    An explicit true/false wins. Otherwise WANDB_MODE=offline/disabled means offline and
    WANDB_MODE=online means online; with no mode set, online only when an API key is configured.
    (Online without a key fails at start-up with "No API key configured".)
    """
    if requested is not None:
        return bool(requested)
    mode = environ.get("WANDB_MODE", "").strip().lower()
    if mode in ("offline", "dryrun", "disabled"):
        return True
    if mode == "online":
        return False
    return not has_wandb_api_key(environ, netrc_path)


def stable_run_id(output_dir: Path) -> str:
    """The wandb run id of this run directory: read from wandb_id.txt, or created and stored there.

    Starting the same run_name again (e.g. to resume with ckpt_path=last) then continues the same
    wandb run instead of opening a new one.
    """
    id_file = Path(output_dir) / RUN_ID_FILENAME
    if id_file.is_file():
        stored = id_file.read_text().strip()
        if stored:
            return stored
    run_id = secrets.token_hex(4)
    id_file.parent.mkdir(parents=True, exist_ok=True)
    id_file.write_text(run_id + "\n")
    return run_id

