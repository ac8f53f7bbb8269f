"""Evaluate checkpoints with one of the paper's protocols and write Markdown, CSV and JSON tables.
Configs: configs/evaluate.yaml (the same config tree as train.py). See docs/evaluation.md.

Built-in smoke run (stage-1 tiny stage, random weights, synthetic data, CPU):
$ python evaluate.py

Input view on CelebA-HQ (Table 1 left / Table 3), several checkpoints = several rows:
$ python evaluate.py protocol=input_view data=celebahq generator=ffhq512-128 generator.checkpoint=... \
    stage=encoder metrics=[psnr,ssim,mse,lpips,fid,id] \
    'checkpoints=[{name: Ours-w+, path: logs/train/runs/s1/checkpoints/last.ckpt}]'

Novel views on MEAD (Table 1 right / Table 2):
$ python evaluate.py protocol=mead_novel_view data=mead ... ckpt_path=logs/train/runs/s1/checkpoints/last.ckpt

Optimisation methods (docs/pti.md): method=pti adds a PTI row; rows with `method:` are PTI variants, e.g.
GOAE, PTI and GOAE + PTI in one table:
$ python evaluate.py method=pti stage=encoder ... 'checkpoints=[{name: GOAE, path: s1.ckpt}, {name: PTI, method: {}},
    {name: GOAE + PTI, method: {init_checkpoint: s1.ckpt, pivot: {space: w+}}}]'
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

import runtime  # noqa: F401  (registers the config resolvers before Hydra composes)
from evaluation.protocols import (
    MEAD_INPUT_VIEW_GROUPS,
    ComparisonOptions,
    Protocol,
    ProtocolResult,
    ReferenceDepthProvider,
    build_reference_depth,
    datamodule_for_input_view,
    run_input_view,
    run_mead_novel_view,
)
from evaluation.tables import ResultTable, TableFiles, row_from_result, table_for, write_tables
from inversion.loading import CheckpointError, inverter_from_checkpoint, inverter_from_method, require_inverter
from inversion.result import Inverter
from metrics import InferenceTimer, MetricsConfig, MetricSuite, build_metric_suite
from runtime.config import check_required_values
from runtime.instantiate import GENERATOR_ARGUMENT, instantiate_component
from runtime.pylogger import RankedLogger

log = RankedLogger(__name__)

# `???` values that evaluate() fills in code (the ONE generator instance), as train.py does.
FILLED_BY_CODE = (f"stage.{GENERATOR_ARGUMENT}", f"data.{GENERATOR_ARGUMENT}", f"reference_depth.{GENERATOR_ARGUMENT}",
                  f"method.{GENERATOR_ARGUMENT}")
FID_IMPLEMENTATION = ("metrics.fid: pytorch-fid's TF-Inception port (float resize, no uint8 quantisation); "
                      "not NVIDIA's EG3D FID")


@dataclass(frozen=True)
class CheckpointEntry:
    """One table row: a name, an optional Lightning checkpoint, optional stage-config overrides (an
    ablation's settings, or the stage's own loader of released weights, e.g. encoder.goae_checkpoint).
    ``method``: overrides merged onto the selected ``method`` config (PTI, Pose Opt.): the row is that
    method (its hybrid start: ``method: {init_checkpoint: <stage checkpoint>}``), not a stage checkpoint."""

    name: str
    path: str | None = None
    stage: dict[str, Any] = field(default_factory=dict)
    method: dict[str, Any] | None = None


@dataclass
class EvaluationSummary:
    table: ResultTable
    files: TableFiles


# ------------------------------------------------------------------------------------------ checkpoints
def checkpoint_entries(cfg: DictConfig) -> list[CheckpointEntry]:
    """``checkpoints`` (a list of {name, path, stage, method}), then ``ckpt_path``, then the selected
    ``method`` when no listed row is one of its variants; with none of them, the stage as configured."""
    node = cfg.get("checkpoints")
    listed = OmegaConf.to_container(node, resolve=True) if node else []
    entries = [CheckpointEntry(name=str(item["name"]), path=item.get("path"), stage=dict(item.get("stage") or {}),
                               method=None if item.get("method") is None else dict(item["method"]))
               for item in listed]  # type: ignore[union-attr]
    for entry in entries:
        if entry.method is not None and cfg.get("method") is None:
            raise ValueError(f"row {entry.name!r} has `method:` overrides but no method is selected (method=pti)")
        if entry.method is not None and entry.path:
            raise ValueError(f"row {entry.name!r}: a method row has no checkpoint of its own; its hybrid start is "
                             "method: {init_checkpoint: <stage checkpoint>}")
    if cfg.get("ckpt_path"):
        entries.append(CheckpointEntry(name=Path(str(cfg.ckpt_path)).stem, path=str(cfg.ckpt_path)))
    if cfg.get("method") is not None and not any(entry.method is not None for entry in entries):
        entries.append(CheckpointEntry(name=str(cfg.method.get("name", "method")), method={}))
    if not entries:
        entries.append(CheckpointEntry(name="as_configured"))
    names = [entry.name for entry in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"checkpoint names must be unique (they name the table rows): {names}")
    return entries


def build_stage(cfg: DictConfig, entry: CheckpointEntry, generator: torch.nn.Module) -> Inverter:
    stage_cfg = OmegaConf.merge(cfg.stage, entry.stage) if entry.stage else cfg.stage
    if entry.method is not None:
        method_cfg = OmegaConf.merge(cfg.method, entry.method) if entry.method else cfg.method
        inverter = inverter_from_method(method_cfg, stage_cfg, generator)  # type: ignore[arg-type]
        log.info(f"Built method <{method_cfg._target_}> for row {entry.name!r}")
        return inverter
    if entry.path:
        # Shared with the invert CLI: read without running code from the file, stage checked, and a
        # stage class's own loader (stage 2 rebuilds itself from its checkpoint) takes over.
        inverter = inverter_from_checkpoint(stage_cfg, generator, entry.path)
        log.info(f"Loaded {entry.path} into <{stage_cfg._target_}>")
        return inverter
    return require_inverter(instantiate_component(stage_cfg, generator), str(stage_cfg._target_))


# ------------------------------------------------------------------------------------------ running
def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def metrics_config(cfg: DictConfig) -> MetricsConfig:
    return MetricsConfig(**OmegaConf.to_container(cfg.get("metrics_config") or {}, resolve=True))  # type: ignore[arg-type]


def reference_depth_provider(cfg: DictConfig, generator: torch.nn.Module) -> ReferenceDepthProvider | None:
    """``none``/``dataset``/``generator``, or a ``_target_`` node (e.g. a face-reconstruction provider)."""
    node = cfg.get("reference_depth")
    if isinstance(node, DictConfig):
        return instantiate_component(node, generator)
    return build_reference_depth(node if node is not None else "none", generator)


@dataclass
class ProtocolRunner:
    """Everything a protocol needs besides the inverter; built once, reused for every checkpoint (the
    metric networks are loaded once and reset between checkpoints)."""

    protocol: Protocol
    datamodule: Any
    split: str
    suites: dict[str, MetricSuite]
    reference_depth: ReferenceDepthProvider | None
    options: ComparisonOptions
    device: torch.device
    warmup_batches: int

    def run(self, inverter: Inverter) -> ProtocolResult:
        if self.protocol is Protocol.INPUT_VIEW:
            timer = InferenceTimer(device=self.device, warmup_batches=self.warmup_batches)
            return run_input_view(inverter, self._batches(self.datamodule), self.suites["input_view"],
                                  self.reference_depth, self.options, timer, self.device)
        return run_mead_novel_view(inverter, self._batches_for_input_view, self.suites, self.reference_depth,
                                   self.options, self.device)

    def _batches(self, datamodule: Any) -> Iterable[Any]:
        datamodule.setup("test" if self.split == "test" else None)
        return datamodule.dataloader(self.split)

    def _batches_for_input_view(self, input_view: str) -> Iterable[Any]:
        return self._batches(datamodule_for_input_view(self.datamodule, self.split, input_view))


def build_runner(cfg: DictConfig, generator: torch.nn.Module, device: torch.device) -> ProtocolRunner:
    protocol = Protocol(cfg.protocol)
    datamodule = instantiate_component(cfg.data, generator)
    group_keys = ["input_view"] if protocol is Protocol.INPUT_VIEW else [group.key for group in MEAD_INPUT_VIEW_GROUPS]
    config = metrics_config(cfg)
    suites = {key: build_metric_suite(list(cfg.metrics), config).to(device) for key in group_keys}
    return ProtocolRunner(
        protocol=protocol, datamodule=datamodule, split=str(cfg.split), suites=suites,
        reference_depth=reference_depth_provider(cfg, generator),
        options=ComparisonOptions(resolution=cfg.get("comparison_resolution")), device=device,
        warmup_batches=int(cfg.get("timing", {}).get("warmup_batches", 1)),
    )


def table_metadata(cfg: DictConfig, device: torch.device) -> dict[str, object]:
    metadata: dict[str, object] = {
        "data": f"{cfg.data.get('name', '')} ({cfg.split} split)",
        "generator": f"{cfg.generator.get('name')} ({cfg.generator.get('checkpoint') or 'no checkpoint'})",
        "metrics": ", ".join(cfg.metrics),
        "MSE scale": "[-1, 1]" if cfg.get("metrics_config", {}).get("mse_scale") == "signed" else "[0, 1]",
        "device": str(device),
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    if "fid" in cfg.metrics:
        metadata["FID"] = FID_IMPLEMENTATION
    if Protocol(cfg.protocol) is Protocol.INPUT_VIEW:
        metadata["Time"] = "seconds per image: inversion + input-view render, warm-up batches excluded"
    return metadata


def evaluate(cfg: DictConfig) -> EvaluationSummary:
    """Every checkpoint entry through the configured protocol; writes <output_dir>/<table_name>.{md,csv,json}."""
    check_required_values(cfg, filled_by_code=FILLED_BY_CODE)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    device = pick_device(str(cfg.get("device", "auto")))
    generator = hydra.utils.instantiate(cfg.generator)
    runner = build_runner(cfg, generator, device)
    rows = []
    for entry in checkpoint_entries(cfg):
        log.info(f"Evaluating {entry.name!r} ({entry.path or 'stage as configured'}) with protocol {cfg.protocol}")
        stage = build_stage(cfg, entry, generator)
        stage.eval().requires_grad_(False).to(device)  # type: ignore[attr-defined]
        rows.append(row_from_result(entry.name, entry.path, runner.run(stage)))
    table = table_for(str(cfg.protocol), rows, table_metadata(cfg, device))
    files = write_tables(table, Path(cfg.output_dir), str(cfg.table_name))
    return EvaluationSummary(table=table, files=files)


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    summary = evaluate(cfg)
    log.info("Tables written: " + ", ".join(str(path) for path in vars(summary.files).values()))
    print(summary.files.markdown.read_text())

__all__ = ["CheckpointEntry", "CheckpointError", "EvaluationSummary", "checkpoint_entries", "evaluate"]


if __name__ == "__main__":
    main()
