"""OmegaConf resolvers used by the configs."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

# runtime/ sits directly in the repository root (the package is installed editable).
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def project_root() -> str:
    """Absolute path of the repository, for ``paths.root_dir: ${project_root:}``."""
    return str(PROJECT_ROOT)


def register_resolvers() -> None:
    """Register our resolvers once (safe to call again, e.g. from DDP child processes)."""
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", project_root)
