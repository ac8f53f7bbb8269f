"""Checks and printing of the composed config, done before anything expensive is built."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, ListConfig, OmegaConf

from runtime.pylogger import RankedLogger

log = RankedLogger(__name__)

# Printed first, in this order; the remaining top-level keys follow.
PRINT_ORDER: tuple[str, ...] = ("stage", "data", "generator", "trainer", "callbacks", "logger", "paths")
LAST_CHECKPOINT = "last"
# Resume when the run directory has something to resume (a requeued cluster job), else start fresh.
AUTO_RESUME = "auto"
HYDRA_NODE = "hydra"


class ConfigError(ValueError):
    """A config value is missing or wrong; the message names the key and how to set it."""


def check_required_values(cfg: DictConfig, filled_by_code: Iterable[str] = ()) -> None:
    """Fail early, naming every `???` value left unset (except those train.py fills itself).

    Hydra would otherwise only fail deep inside instantiation, after the generator was built.
    """
    missing_everywhere = {
        path for path in _literal_missing_paths(cfg) if path.split(".")[0] != HYDRA_NODE
    }
    missing = sorted(missing_everywhere - set(filled_by_code))
    if missing:
        examples = " ".join(f"{key}=<value>" for key in missing)
        raise ConfigError(
            f"Missing required config value(s): {', '.join(missing)}. "
            f"Set them on the command line, e.g. `python train.py ... {examples}`"
        )


def _literal_missing_paths(node: DictConfig | ListConfig, prefix: str = "") -> list[str]:
    """Dotted paths of values written as `???`, found without resolving any interpolation
    (those may need a running Hydra job, e.g. ${hydra:runtime.output_dir})."""
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    found: list[str] = []
    for key in keys:
        path = f"{prefix}{key}"
        if OmegaConf.is_interpolation(node, key):
            continue
        child = node._get_node(key)
        if child is not None and child._is_missing():
            found.append(path)
        elif isinstance(child, (DictConfig, ListConfig)):
            found += _literal_missing_paths(child, prefix=f"{path}.")
    return found


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """`last` means this run directory's checkpoints/last.ckpt; `auto` the newest checkpoint of the run
    directory if there is one (None: a fresh start); any other value must exist."""
    if ckpt_path is None:
        return None
    if str(ckpt_path) == AUTO_RESUME:
        found = newest_resumable_checkpoint(Path(output_dir))
        message = f"resuming from {found}" if found else f"nothing to resume in {output_dir}, starting fresh"
        log.info(f"ckpt_path=auto: {message}")
        return str(found) if found else None
    if str(ckpt_path) == LAST_CHECKPOINT:
        candidate = Path(output_dir) / "checkpoints" / "last.ckpt"
        if not candidate.is_file():
            raise ConfigError(
                f"ckpt_path=last but {candidate} does not exist. `last` resumes the run directory named by "
                f"run_name: start the first run with `run_name=<name>` and resume with the same "
                f"`run_name=<name> ckpt_path=last`, or give ckpt_path=<path/to/file.ckpt>."
            )
        return str(candidate)
    if not Path(ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={ckpt_path} does not exist (give a .ckpt file, or `last`).")
    return str(ckpt_path)


def newest_resumable_checkpoint(output_dir: Path) -> Path | None:
    """The newest of <run dir>/checkpoints/last.ckpt (written every N steps) and Lightning's SLURM requeue
    checkpoints <run dir>/hpc_ckpt_<n>.ckpt (written when the job gets its requeue signal); None if none."""
    candidates = [output_dir / "checkpoints" / "last.ckpt", *output_dir.glob("hpc_ckpt_*.ckpt")]
    existing = [path for path in candidates if path.is_file()]
    return max(existing, key=lambda path: path.stat().st_mtime_ns, default=None)


def apply_extras(cfg: DictConfig, output_dir: Path) -> None:
    """Conveniences of the `extras` group: silence warnings, print and save the config tree."""
    extras = cfg.get("extras")
    if not extras:
        return
    if extras.get("ignore_warnings"):
        log.info("Silencing Python warnings (extras.ignore_warnings=true)")
        warnings.filterwarnings("ignore")
    if extras.get("print_config"):
        print_config_tree(cfg, output_dir=output_dir)


@rank_zero_only
def print_config_tree(cfg: DictConfig, output_dir: Path | None = None, order: Sequence[str] = PRINT_ORDER) -> None:
    """Print the config as a rich tree (unresolved `???` shown as is) and save it as config_tree.log."""
    import rich
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    fields = [name for name in order if name in cfg] + [name for name in cfg if name not in order]
    for name in fields:
        branch = tree.add(str(name), style="bold", guide_style="dim")
        value = cfg[name]
        text = _as_yaml(value) if isinstance(value, DictConfig) else str(value)
        branch.add(rich.syntax.Syntax(text, "yaml"))
    rich.print(tree)
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(output_dir) / "config_tree.log", "w") as file:
            rich.print(tree, file=file)


def _as_yaml(node: DictConfig) -> str:
    """Resolved YAML when every interpolation resolves (e.g. inside a Hydra run), else as written."""
    try:
        return OmegaConf.to_yaml(node, resolve=True)
    except Exception:  # an interpolation that only resolves later (or never): show it unresolved
        return OmegaConf.to_yaml(node, resolve=False)
