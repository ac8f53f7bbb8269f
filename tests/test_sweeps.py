"""Sweeps (sweeps/README.md, docs/scaling.md): the command wandb's agent builds from our sweep file composes
in Hydra for every parameter value; Hydra's Optuna sweeper runs a tiny search offline."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import CONFIG_DIR, compose_train_config
from helpers_ddp import run_multiprocess_command

REPOSITORY = Path(__file__).resolve().parents[1]
WANDB_SWEEP = REPOSITORY / "sweeps" / "wandb" / "stage1_loss_weights.yaml"


def parameter_values(spec: dict[str, Any]) -> list[Any]:
    """Every listed value, or both ends of a distribution."""
    return list(spec["values"]) if "values" in spec else [spec["min"], spec["max"]]


def agent_commands(sweep: dict[str, Any], runs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch,
                   tmp_path: Path) -> list[list[str]]:
    """The command lines wandb's own agent (wandb.wandb_agent.Agent._command_run) builds for these runs,
    captured instead of started; no server is contacted."""
    import wandb
    from wandb import wandb_agent

    started: list[list[str]] = []

    class CapturedProcess:
        def __init__(self, command: list[str] | None = None, **_: Any) -> None:
            started.append(list(command or []))

    monkeypatch.setattr(wandb_agent, "AgentProcess", CapturedProcess)
    for name in (wandb.env.RUN_ID, wandb.env.SWEEP_PARAM_PATH):  # the agent exports these; restore them
        monkeypatch.setenv(name, "")
    monkeypatch.setenv(wandb.env.DIR, str(tmp_path))
    agent = wandb_agent.Agent(api=None, queue=None, sweep_id="offline")
    agent._sweep_command = sweep["command"]
    for index, values in enumerate(runs):
        args = {key: {"value": value} for key, value in values.items()}
        agent._command_run({"run_id": f"run{index}", "program": sweep["program"], "args": args})
    return started


def test_every_command_of_the_wandb_sweep_composes_with_its_parameter_values(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sweep = yaml.safe_load(WANDB_SWEEP.read_text())
    values = {key: parameter_values(spec) for key, spec in sweep["parameters"].items()}
    # Run i takes value i of every parameter (cycled): every value of every parameter appears in some run.
    runs = [{key: options[index % len(options)] for key, options in values.items()}
            for index in range(max(map(len, values.values())))]
    commands = agent_commands(sweep, runs, monkeypatch, tmp_path)
    assert len(commands) == len(runs)
    for command, run in zip(commands, runs):
        assert command[:3] == ["/usr/bin/env", "python", "train.py"] and (REPOSITORY / command[2]).is_file()
        cfg = compose_train_config(command[3:], return_hydra_config=False)
        assert list(cfg.logger) == ["wandb"] and cfg.run_name == "goae_ffhq_stage1"
        for key, value in run.items():
            assert OmegaConf.select(cfg, key) == pytest.approx(value), (key, command)
    assert all(sweep["metric"]["name"] == "val/mse" for _ in commands)


SEARCHES = sorted(path.stem for path in (CONFIG_DIR / "hparams_search").glob("*.yaml"))


@pytest.mark.parametrize("search", SEARCHES)
def test_every_hparams_search_composes_searches_existing_keys_and_names_its_metric(search: str) -> None:
    for launcher in ("basic", "slurm"):  # on this machine (-m) and submitted to SLURM
        cfg = compose_train_config(
            [f"hparams_search={search}", "experiment=goae_ffhq_stage1", f"hydra/launcher={launcher}"]
        )
        assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
        assert cfg.optimized_metric.startswith("val/")
        for key in cfg.hydra.sweeper.params:
            assert OmegaConf.select(cfg, key) is not None, key


def final_validation_value(job_dir: Path, metric: str) -> float:
    """The metric's value at the last step it was logged, from the job's CSV log."""
    logs = sorted(job_dir.glob("csv/version_*/metrics.csv"))
    rows = [row for path in logs for row in csv.DictReader(path.open()) if row.get(metric)]
    return float(max(rows, key=lambda row: int(row["step"]))[metric])


@pytest.mark.slow
def test_three_trial_optuna_sweep_runs_offline_and_writes_the_best_trial(tmp_path: Path) -> None:
    """`python train.py -m hparams_search=stage1_loss_weights` at toy scale: LPIPS and ArcFace (no weights
    offline) fixed at 0 on the command line, which removes them from the search; 3 trials of 1 step each."""
    log_dir = tmp_path / "logs"
    run_multiprocess_command(
        [sys.executable, str(REPOSITORY / "train.py"), "-m", "hparams_search=stage1_loss_weights",
         "run_name=optuna", f"paths.log_dir={log_dir}", "hydra.sweeper.n_trials=3",
         "stage.loss_weights.lpips=0", "stage.loss_weights.id=0",
         "extras.print_config=false", "trainer.max_steps=1", "trainer.val_check_interval=1",
         "trainer.num_sanity_val_steps=0", "~callbacks.progress_bar", "+trainer.enable_progress_bar=false",
         "+trainer.enable_model_summary=false", "~callbacks.inversion_images",
         "data.splits.train.length=2", "data.loaders.train.batch_size_per_device=2",
         "data.splits.val.length=2", "stage.background_depth.estimate_num_samples=2"],
        cwd=tmp_path, timeout=600,
    )
    sweep_dir = log_dir / "train" / "multiruns" / "optuna"
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["name"] == "optuna"
    searched = {"stage.loss_weights.adv", "stage.loss_weights.bg", "stage.loss_weights.delta_w"}
    assert set(results["best_params"]) == searched

    # Each trial returned its final val/mse; the best one is the smallest, with that trial's parameters.
    trials = {}
    for job in range(3):
        job_dir = sweep_dir / str(job)
        overrides = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text())
        pairs = (item.split("=", 1) for item in overrides)
        params = {key: float(value) for key, value in pairs if key in searched}
        trials[job] = (final_validation_value(job_dir, "val/mse"), params)
    assert not (sweep_dir / "3").exists()
    best_value, best_params = min(trials.values(), key=lambda trial: trial[0])
    assert results["best_value"] == pytest.approx(best_value, rel=1e-6)
    assert results["best_params"] == pytest.approx(best_params)
    assert len({tuple(sorted(params.items())) for _, params in trials.values()}) == 3  # 3 different trials
