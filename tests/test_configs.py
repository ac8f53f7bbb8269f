"""The config tree: every option composes, mistakes fail with errors that name the key."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pytest
from hydra.errors import ConfigCompositionException
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import OmegaConf

from conftest import CONFIG_DIR, compose_train_config
from runtime.config import ConfigError, check_required_values, resolve_ckpt_path
from runtime.instantiate import instantiate_callbacks, instantiate_loggers, without_logger_dependent_callbacks
from runtime.pylogger import RankedLogger
from runtime.resolvers import PROJECT_ROOT
from runtime.wandb_mode import resolve_wandb_offline, stable_run_id
from train import FILLED_BY_CODE

# Groups selected with `group=option`; experiment/debug are global packages tested separately.
SELECTABLE_GROUPS = ("stage", "data", "generator", "trainer", "logger", "callbacks", "paths", "extras")
RELEASED_GENERATORS = ("ffhq512-128", "afhqcats512-128")


def _options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))


def _group_options() -> list[tuple[str, str]]:
    return [(group, option) for group in SELECTABLE_GROUPS for option in _options(group)]


def _targets(node: object) -> list[str]:
    """Every `_target_` string anywhere below `node`."""
    if isinstance(node, dict):
        found = [node["_target_"]] if "_target_" in node else []
        return found + [target for value in node.values() for target in _targets(value)]
    if isinstance(node, list):
        return [target for value in node for target in _targets(value)]
    return []


def test_default_config_is_stage_one_on_synthetic_data_from_the_tiny_generator() -> None:
    cfg = compose_train_config(["run_name=abc"])
    assert cfg.stage._target_ == "lightning_modules.GOAEEncoderStage"
    assert cfg.stage.encoder.image_size == 64 and cfg.stage.encoder.backbone_weights == "random"
    assert cfg.stage.loss_weights.lpips == 0 and cfg.stage.loss_weights.id == 0  # no pretrained weights offline
    assert cfg.data.name == "synthetic_tiny" and cfg.data.splits.train.image_resolution == 64
    assert cfg.generator.name == "tiny" and cfg.generator.random_init is True
    assert cfg.generator.checkpoint is None
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.max_steps <= 100
    assert list(cfg.logger) == ["csv"]
    # The run directory convention: logs/<task_name>/runs/<run_name> under the repository.
    assert Path(cfg.hydra.run.dir) == PROJECT_ROOT / "logs" / "train" / "runs" / "abc"
    assert cfg.hydra.job.chdir is False
    assert OmegaConf.is_missing(cfg.stage, "generator")  # filled by train.py


@pytest.mark.parametrize(("group", "option"), _group_options(), ids=lambda value: str(value))
def test_every_group_option_composes_and_names_importable_targets(group: str, option: str) -> None:
    cfg = compose_train_config([f"{group}={option}"])
    assert group in cfg
    container = OmegaConf.to_container(cfg[group], resolve=False)
    for target in _targets(container):
        assert callable(hydra.utils.get_object(target)), target


def test_group_options_exist_for_what_the_readme_promises() -> None:
    assert {"tiny", "ffhq512-128", "afhqcats512-128"} <= set(_options("generator"))
    assert {"default", "cpu", "gpu", "ddp", "ddp_sim"} <= set(_options("trainer"))
    assert {"csv", "tensorboard", "wandb", "many"} <= set(_options("logger"))
    assert {"default", "fdr"} <= set(_options("debug"))


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_composes(experiment: str) -> None:
    cfg = compose_train_config([f"experiment={experiment}"])
    assert hydra.utils.get_object(cfg.stage._target_)


@pytest.mark.parametrize("debug", _options("debug"))
def test_every_debug_preset_composes_on_cpu(debug: str) -> None:
    cfg = compose_train_config([f"debug={debug}"])
    assert cfg.trainer.accelerator == "cpu"
    assert "logger" not in cfg or not cfg.logger


def test_fdr_sets_fast_dev_run() -> None:
    assert compose_train_config(["debug=fdr"]).trainer.fast_dev_run is True


@pytest.mark.parametrize("override", ["trainer.no_such_key=1", "no_such_top_level_key=1", "stage.no_such_arg=2"])
def test_unknown_override_key_fails_naming_it(override: str) -> None:
    key = override.split("=")[0]
    with pytest.raises(ConfigCompositionException, match=key.replace(".", r"\.")):
        compose_train_config([override])


def test_unknown_group_option_fails_naming_it() -> None:
    with pytest.raises(ConfigCompositionException, match="no_such_generator"):
        compose_train_config(["generator=no_such_generator"])


@pytest.mark.parametrize("generator", RELEASED_GENERATORS)
def test_released_generator_without_checkpoint_fails_naming_the_key(generator: str) -> None:
    cfg = compose_train_config([f"generator={generator}"])
    with pytest.raises(ConfigError, match=r"generator\.checkpoint"):
        check_required_values(cfg, filled_by_code=FILLED_BY_CODE)
    given = compose_train_config([f"generator={generator}", "generator.checkpoint=/weights/g.pkl"])
    check_required_values(given, filled_by_code=FILLED_BY_CODE)  # nothing else is missing


def test_generator_injection_slot_is_not_reported_as_missing() -> None:
    check_required_values(compose_train_config([]), filled_by_code=FILLED_BY_CODE)
    with pytest.raises(ConfigError, match=r"stage\.generator"):
        check_required_values(compose_train_config([]), filled_by_code=())


def test_default_callbacks_checkpoint_into_the_run_dir(tmp_path: Path) -> None:
    cfg = compose_train_config([])
    cfg.callbacks.model_checkpoint.dirpath = str(tmp_path / "checkpoints")
    callbacks = instantiate_callbacks(cfg.callbacks)
    checkpoint = next(cb for cb in callbacks if isinstance(cb, ModelCheckpoint))
    assert Path(checkpoint.dirpath) == tmp_path / "checkpoints" and checkpoint.save_last
    assert any(isinstance(cb, LearningRateMonitor) for cb in callbacks)
    # Lightning refuses LearningRateMonitor without a logger: it is dropped for logger=null runs.
    kept = without_logger_dependent_callbacks(callbacks)
    assert not any(isinstance(cb, LearningRateMonitor) for cb in kept)
    assert len(kept) == len(callbacks) - 1
    assert instantiate_callbacks(compose_train_config(["callbacks=none"]).get("callbacks")) == []


def test_logger_many_builds_csv_tensorboard_and_offline_wandb(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    cfg = compose_train_config(["logger=many", "run_name=r1"])
    for logger_cfg in cfg.logger.values():
        logger_cfg.save_dir = str(tmp_path)
    loggers = instantiate_loggers(cfg.logger, tmp_path)
    assert {type(logger) for logger in loggers} == {CSVLogger, TensorBoardLogger, WandbLogger}
    wandb_logger = next(logger for logger in loggers if isinstance(logger, WandbLogger))
    assert wandb_logger._offline is True
    # The run id is stored in the run dir, so a second start of the same run continues the curve.
    assert wandb_logger._wandb_init["id"] == (tmp_path / "wandb_id.txt").read_text().strip()


def test_wandb_offline_resolution(tmp_path: Path) -> None:
    no_netrc = tmp_path / "missing"
    assert resolve_wandb_offline(None, {}, no_netrc) is True
    assert resolve_wandb_offline(None, {"WANDB_API_KEY": "k"}, no_netrc) is False
    assert resolve_wandb_offline(None, {"WANDB_API_KEY": "k", "WANDB_MODE": "offline"}, no_netrc) is True
    assert resolve_wandb_offline(None, {"WANDB_MODE": "online"}, no_netrc) is False
    assert resolve_wandb_offline(True, {"WANDB_API_KEY": "k"}, no_netrc) is True
    assert resolve_wandb_offline(False, {}, no_netrc) is False
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    netrc_file.chmod(0o600)
    assert resolve_wandb_offline(None, {}, netrc_file) is False


def test_stable_run_id_is_created_once_per_run_dir(tmp_path: Path) -> None:
    first = stable_run_id(tmp_path / "run_a")
    assert stable_run_id(tmp_path / "run_a") == first
    assert stable_run_id(tmp_path / "run_b") != first


def test_ckpt_path_last_resolves_in_the_run_dir_or_explains(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="run_name"):
        resolve_ckpt_path("last", tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert resolve_ckpt_path("last", tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")
    assert resolve_ckpt_path(None, tmp_path) is None
    with pytest.raises(ConfigError, match="nope.ckpt"):
        resolve_ckpt_path(str(tmp_path / "nope.ckpt"), tmp_path)


def test_ranked_logger_speaks_on_rank_zero_only(caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    log = RankedLogger("goae.test")
    caplog.set_level(logging.INFO, logger="goae.test")
    monkeypatch.setattr(rank_zero_only, "rank", 1, raising=False)
    log.info("from rank one")
    log.info("addressed to rank one", rank=1)
    monkeypatch.setattr(rank_zero_only, "rank", 0, raising=False)
    log.info("from rank zero")
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["addressed to rank one", "from rank zero"]


def test_sweep_folder_documents_the_hydra_command_form() -> None:
    text = (PROJECT_ROOT / "sweeps" / "README.md").read_text()
    assert "${args_no_hyphens}" in text and "program: train.py" in text
    for sweep_file in (PROJECT_ROOT / "sweeps" / "wandb").glob("*.yaml"):
        sweep = OmegaConf.to_container(OmegaConf.load(sweep_file), resolve=False)
        assert sweep["program"] == "train.py"
        assert "${args_no_hyphens}" in sweep["command"], sweep_file


def test_generator_is_injected_only_into_a_declared_slot() -> None:
    from runtime.instantiate import instantiate_component

    shared = object()
    slot = OmegaConf.create({"_target_": "builtins.dict", "generator": "???", "size": 1})
    assert instantiate_component(slot, shared)["generator"] is shared
    # A component's own `generator` sub-config (e.g. how data workers rebuild it) is left alone.
    own = OmegaConf.create({"_target_": "builtins.dict", "generator": {"name": "tiny"}})
    assert instantiate_component(own, shared)["generator"] == {"name": "tiny"}
    assert "generator" not in instantiate_component(OmegaConf.create({"_target_": "builtins.dict"}), shared)
