"""Beyond one process and one run (docs/scaling.md): stage 1 on 2 "nodes" under torchrun, Lightning's SLURM
environment and its auto-requeue, Hydra's submitit launcher (SLURM script; local executor with a preempted
and requeued job), `ckpt_path=auto`, and the launch checks. Everything runs on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from conftest import compose_train_config, shrink_into
from helpers_ddp import LOOPBACK, free_loopback_port, run_concurrent_commands, run_multiprocess_command
from networks.eg3d.configs import _random_state_dict
from runtime.config import AUTO_RESUME, ConfigError, resolve_ckpt_path
from runtime.instantiate import instantiate_loggers
from runtime.scaling import check_objective_is_validated, objective_value, refuse_script_relaunch_in_multirun
from runtime.wandb_mode import RUN_ID_FILENAME
from train import train

REPOSITORY = Path(__file__).resolve().parents[1]

# Stage 1 of the default, as small as it gets: 2 samples a batch, 2 steps an epoch, no validation, a
# checkpoint every 2 steps (so step 2 is an epoch boundary: exact resume before mid-epoch resume exists).
TINY_RUN = (
    "extras.print_config=false", "trainer.max_steps=4", "trainer.num_sanity_val_steps=0",
    "+trainer.limit_val_batches=0",
    "~callbacks.progress_bar", "+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
    "~callbacks.inversion_images", "callbacks.model_checkpoint.every_n_train_steps=2",
    "data.loaders.train.batch_size_per_device=2", "stage.background_depth.estimate_num_samples=2",
    "stage.discriminator_settings.d_reg_every=2",
)
ONE_PROCESS_RUN = (*TINY_RUN, "data.splits.train.length=4")
TWO_NODE_RUN = (
    *TINY_RUN, "data.splits.train.length=8", "trainer=ddp_sim", "trainer.devices=1", "trainer.num_nodes=2",
)
# A one-task SLURM job as srun describes it to every task.
SLURM_JOB = {
    "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "goae_stage1", "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost",
}


def record_overrides(directory: Path) -> tuple[str, ...]:
    return ("+callbacks.record._target_=ddp_scripts.launch_probes.RankRecord",
            f"+callbacks.record.directory={directory}")


def preempt_overrides(step: int, signal_name: str) -> tuple[str, ...]:
    return ("+callbacks.preempt._target_=ddp_scripts.launch_probes.PreemptAt",
            f"+callbacks.preempt.step={step}", f"+callbacks.preempt.signal_name={signal_name}")


def load_record(directory: Path, rank: int = 0) -> dict[str, Any]:
    return torch.load(directory / f"rank{rank}.pt", weights_only=True)


def assert_same_losses(got: dict[int, float], expected: dict[int, float], steps: list[int]) -> None:
    assert sorted(got) == steps, got
    for step in steps:  # the same computation in another process: equal up to float32 rounding
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-6), step


def assert_same_weights(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        scale = max(1.0, float(value.abs().max()))
        assert float((got[key] - value).abs().max()) <= 1e-6 * scale, key


# ------------------------------------------------------------------------------------- 2 nodes, torchrun
def launch_two_nodes(tmp_path: Path, name: str, *overrides: str) -> list[dict[str, Any]]:
    """One torchrun per "node" (--nnodes=2, one process each), static rendezvous on 127.0.0.1 at a port
    picked now; each node writes to its own log directory, as if the nodes had separate disks."""
    port = free_loopback_port()
    record = tmp_path / f"{name}_record"
    commands = [
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
         f"--node-rank={node}", f"--master-addr={LOOPBACK}", f"--master-port={port}",
         str(REPOSITORY / "train.py"), *TWO_NODE_RUN, f"run_name={name}",
         f"paths.log_dir={tmp_path / f'{name}_node{node}'}", *record_overrides(record), *overrides]
        for node in (0, 1)
    ]
    run_concurrent_commands(commands, cwd=tmp_path, timeout=600)
    return [load_record(record, rank) for rank in (0, 1)]


@pytest.mark.ddp
@pytest.mark.slow
def test_stage_one_on_two_torchrun_nodes_shards_data_syncs_weights_writes_once_and_resumes_exactly(
    tmp_path: Path,
) -> None:
    straight = launch_two_nodes(tmp_path, "straight")
    # Lightning took both ranks from torchrun's variables (TorchElasticEnvironment), one per node.
    assert [(record["cluster_environment"], record["global_rank"], record["node_rank"], record["local_rank"],
             record["world_size"]) for record in straight] == [
        ("TorchElasticEnvironment", 0, 0, 0, 2), ("TorchElasticEnvironment", 1, 1, 0, 2)]
    # Disjoint shards that together cover the 8 samples once per epoch (steps 0-1, 2-3), reshuffled.
    epochs = [[{sample for step in steps for sample in record["identifiers"][step]} for record in straight]
              for steps in ((0, 1), (2, 3))]
    for shard_0, shard_1 in epochs:
        assert not shard_0 & shard_1 and len(shard_0 | shard_1) == 8
    assert straight[0]["identifiers"][0] != straight[0]["identifiers"][2]
    # Different data on each rank, one model: every rank applies the same all-reduced mean gradient, so the
    # replicas stay equal bit for bit (a rank that skipped a reduction, e.g. of D's gradients, would not).
    assert straight[0]["losses"] != straight[1]["losses"]
    assert straight[0]["weights"].keys() == straight[1]["weights"].keys()
    for key, value in straight[0]["weights"].items():
        assert torch.equal(value, straight[1]["weights"][key]), key

    # Written once, by global rank 0: node 1 (local rank 0 there) has Hydra's own files only.
    node_0, node_1 = (tmp_path / f"straight_node{node}" / "train" / "runs" / "straight" for node in (0, 1))
    checkpoints = sorted(path.name for path in (node_0 / "checkpoints").iterdir())
    assert checkpoints == ["last.ckpt", "step_0000002.ckpt", "step_0000004.ckpt"], checkpoints
    assert {path.name for path in node_1.iterdir()} == {".hydra", "train.log"}
    step_2 = node_0 / "checkpoints" / "step_0000002.ckpt"
    at_step_2 = torch.load(step_2, weights_only=True)["state_dict"]
    final = straight[0]["weights"]
    assert any(not torch.equal(at_step_2[key], value) for key, value in final.items())  # steps 3-4 trained

    # Resume the 2-node run from its step-2 checkpoint (an epoch boundary): the same losses and weights.
    resumed = launch_two_nodes(tmp_path, "resumed", f"ckpt_path={step_2}")
    for before, after in zip(straight, resumed):
        assert after["resumed_from"].endswith("step_0000002.ckpt")
        for step in (2, 3):
            assert after["identifiers"][step] == before["identifiers"][step]
        assert_same_losses(after["losses"], before["losses"], [2, 3])
        assert_same_weights(after["weights"], before["weights"])


# ------------------------------------------------------------------------------------- SLURM environment
@pytest.fixture
def restore_rank_and_main_address(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Building a Trainer sets the process-wide rank_zero_only.rank; SLURMEnvironment exports MASTER_ADDR."""
    monkeypatch.setattr(rank_zero_only, "rank", rank_zero_only.rank)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(name, "unset")
        monkeypatch.delenv(name)
    return monkeypatch


def test_slurm_environment_gives_the_ranks_of_a_two_node_job_to_our_trainer_config(
    restore_rank_and_main_address: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """Task 3 of `srun` with --nodes=2 --ntasks-per-node=2 (no sbatch here): Lightning's SLURMEnvironment."""
    monkeypatch = restore_rank_and_main_address
    job = {**SLURM_JOB, "SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "2",
           "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
           "SLURM_NODELIST": "gpu-node[07-08]"}
    for name, value in job.items():
        monkeypatch.setenv(name, value)
    overrides = ["trainer=ddp_sim", "trainer.num_nodes=2", f"trainer.default_root_dir={tmp_path}"]
    cfg = compose_train_config(overrides, return_hydra_config=False)
    trainer = hydra.utils.instantiate(cfg.trainer)
    environment = trainer.strategy.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and environment.auto_requeue
    assert (trainer.global_rank, trainer.local_rank, trainer.node_rank, trainer.world_size) == (3, 1, 1, 4)
    assert environment.creates_processes_externally  # srun started every rank: Lightning starts none ...
    assert environment.main_address == "gpu-node07"
    multirun = compose_train_config(["hydra.mode=MULTIRUN"])
    HydraConfig.instance().set_config(multirun)
    refuse_script_relaunch_in_multirun(trainer)  # ... so a sweep job on hydra/launcher=slurm may use it

    # An allocation that does not match the trainer is refused when fit starts, naming both numbers.
    environment.validate_settings(num_devices=trainer.num_devices, num_nodes=trainer.num_nodes)
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    with pytest.raises(ValueError, match=r"devices=2.*--ntasks-per-node=4"):
        environment.validate_settings(num_devices=trainer.num_devices, num_nodes=trainer.num_nodes)


def test_sbatch_script_starts_one_task_per_device_with_a_run_directory_that_survives_requeue(
    tmp_path: Path,
) -> None:
    """scripts/slurm/stage1_2x8.sbatch run by bash with `srun` recording its command (no SLURM here): the
    command composes, the trainer asks for what the allocation gives, and requeueing keeps the run dir."""
    script = REPOSITORY / "scripts" / "slurm" / "stage1_2x8.sbatch"
    options = dict(line.removeprefix("#SBATCH --").split("=", 1) for line in script.read_text().splitlines()
                   if line.startswith("#SBATCH --") and "=" in line)
    fake_srun = 'srun() { printf "%s\\n" "$@" > "$SRUN_RECORD"; }; export -f srun; bash "$0" "$@"'
    environment = {**os.environ, "SLURM_SUBMIT_DIR": str(REPOSITORY), "SLURM_JOB_ID": "4242",
                   "SRUN_RECORD": str(tmp_path / "srun.txt")}
    extra_override = "stage.loss_weights.bg=2.5"  # sbatch passes its arguments on to train.py
    subprocess.run(["bash", "-c", fake_srun, str(script), extra_override], env=environment, check=True)
    command = (tmp_path / "srun.txt").read_text().splitlines()
    assert command[:2] == [".venv/bin/python", "train.py"]
    cfg = compose_train_config(command[2:], return_hydra_config=False)
    assert cfg.trainer.devices == int(options["ntasks-per-node"]) == int(options["gpus-per-node"])
    assert cfg.trainer.num_nodes == int(options["nodes"])
    assert cfg.run_name == "stage1_4242" and cfg.stage.loss_weights.bg == 2.5  # job id: same after requeue
    assert options["signal"].startswith(f"{SLURMEnvironment().requeue_signal.name}@")  # Lightning's signal
    assert cfg.ckpt_path is None  # a requeued job resumes from Lightning's hpc checkpoint by itself


def one_process_config(run_dir: Path, *overrides: str) -> DictConfig:
    return shrink_into(compose_train_config([*ONE_PROCESS_RUN, *overrides]), run_dir)


@pytest.fixture(scope="module")
def slurm_job_signalled_at_step_2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A one-task SLURM job (its variables set, `scontrol` a recorder) that gets Lightning's requeue
    signal SIGUSR1 after step 2. Lightning's handler saves <run dir>/hpc_ckpt_1.ckpt and runs
    `scontrol requeue <job id>`; a cluster would then stop the job, here the run goes on to step 4, which
    makes it the uninterrupted reference as well. In this process: a signal sent to itself is handled
    synchronously, at a known step."""
    root = tmp_path_factory.mktemp("slurm_job")
    scontrol = root / "bin" / "scontrol"
    scontrol.parent.mkdir()
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {root / "scontrol.log"}\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IXUSR)
    # As in a fresh process (the reference of the submitit job): the tiny generator's cached random weights
    # skip one generator build and its draws from the global RNG, which changes the encoder's initial weights.
    _random_state_dict.cache_clear()
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name, value in SLURM_JOB.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("PATH", f"{scontrol.parent}{os.pathsep}{os.environ['PATH']}")
        overrides = (*record_overrides(root / "first"), *preempt_overrides(2, "SIGUSR1"))
        train(one_process_config(root / "run", *overrides))
    GlobalHydra.instance().clear()
    assert signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None)  # Lightning restored the handler
    yield root


def test_slurm_requeue_signal_saves_an_hpc_checkpoint_and_the_requeued_job_resumes_from_it(
    slurm_job_signalled_at_step_2: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = slurm_job_signalled_at_step_2
    assert (root / "scontrol.log").read_text().split() == ["requeue", SLURM_JOB["SLURM_JOB_ID"]]
    hpc_checkpoint = root / "run" / "hpc_ckpt_1.ckpt"
    assert torch.load(hpc_checkpoint, weights_only=True)["global_step"] == 2

    # The requeued job: same job id, same run directory, ckpt_path unset; Lightning finds the hpc checkpoint.
    for name, value in {**SLURM_JOB, "SLURM_RESTART_COUNT": "1"}.items():
        monkeypatch.setenv(name, value)
    train(one_process_config(root / "run", *record_overrides(root / "requeued")))
    first, requeued = load_record(root / "first"), load_record(root / "requeued")
    assert requeued["cluster_environment"] == "SLURMEnvironment"
    assert requeued["resumed_from"] == str(hpc_checkpoint)
    assert_same_losses(requeued["losses"], first["losses"], [2, 3])
    assert_same_weights(requeued["weights"], first["weights"])


# ------------------------------------------------------------------------------------- submitit launcher
class SbatchWritten(Exception):
    """Raised instead of calling sbatch, carrying the script submitit would have submitted."""


def test_slurm_launcher_config_asks_for_the_trainer_devices_and_nodes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """hydra/launcher=slurm for 8 GPUs x 2 nodes: the sbatch script submitit writes (sbatch is not run)."""
    from submitit.slurm.slurm import SlurmExecutor

    def write_instead_of_submitting(executor: SlurmExecutor, command: str) -> None:
        raise SbatchWritten(executor._make_submission_file_text(command, "uid"))

    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # "srun is here"
    monkeypatch.setattr(SlurmExecutor, "_submit_command", write_instead_of_submitting)
    cfg = compose_train_config([
        "hydra/launcher=slurm", "experiment=goae_ffhq_stage1", "trainer=ddp", "trainer.devices=8",
        "trainer.num_nodes=2", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=2880",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ])
    HydraConfig.instance().set_config(cfg)
    launcher = hydra.utils.instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=train, config=cfg)
    with pytest.raises(SbatchWritten) as written:
        launcher.launch([["stage.loss_weights.bg=2.5"]], initial_job_idx=0)
    script = str(written.value)
    for line in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--cpus-per-task=8",
                 "--partition=gpu", "--time=2880", "--signal=USR2@120", "--open-mode=append"):
        assert f"#SBATCH {line}" in script, line
    assert "srun " in script  # one task per GPU, started by srun: Lightning's SLURMEnvironment
    # trainer=ddp on the command line wins over the experiment's `override /trainer: default`
    assert (cfg.trainer.strategy, cfg.trainer.accelerator) == ("ddp", "gpu")


@pytest.mark.ddp
@pytest.mark.slow
def test_submitit_local_job_preempted_at_step_2_is_requeued_and_resumes_from_its_last_checkpoint(
    slurm_job_signalled_at_step_2: Path, tmp_path: Path,
) -> None:
    """`python train.py -m hydra/launcher=local ckpt_path=auto`: submitit's local executor runs the job;
    the job gets submitit's preemption signal (USR2) after step 2, submitit calls the launcher's checkpoint()
    and requeues it, the restarted job finds <job dir>/checkpoints/last.ckpt (ckpt_path=auto) and finishes."""
    log_dir, record = tmp_path / "logs", tmp_path / "record"
    output = run_multiprocess_command(
        [sys.executable, str(REPOSITORY / "train.py"), "-m", "hydra/launcher=local", "run_name=preempted",
         f"paths.log_dir={log_dir}", f"ckpt_path={AUTO_RESUME}", *ONE_PROCESS_RUN, *record_overrides(record),
         *preempt_overrides(2, "SIGUSR2")],
        cwd=tmp_path, timeout=600,
    )
    assert "Submitit 'local' sweep output dir" in output
    sweep_dir = log_dir / "train" / "multiruns" / "preempted"
    job_dir = sweep_dir / "0"
    submitit_log = "".join(path.read_text() for path in sorted(sweep_dir.glob(".submitit/*/*_log.*")))
    assert "this job is preempted" in submitit_log and "Requeued job" in submitit_log, submitit_log[-2000:]

    requeued = load_record(record)
    assert requeued["resumed_from"] == str(job_dir / "checkpoints" / "last.ckpt")
    uninterrupted = load_record(slurm_job_signalled_at_step_2 / "first")
    assert_same_losses(requeued["losses"], uninterrupted["losses"], [2, 3])
    assert_same_weights(requeued["weights"], uninterrupted["weights"])
    # The finished job's directory is where a later `run_name=preempted ... ckpt_path=last` looks.
    last = resolve_ckpt_path("last", job_dir)
    assert last == str(job_dir / "checkpoints" / "last.ckpt")
    assert torch.load(last, weights_only=True)["global_step"] == 4


# ------------------------------------------------------------------------------------- resume, wandb, checks
def test_ckpt_path_auto_takes_the_newest_checkpoint_of_the_run_directory_or_none(tmp_path: Path) -> None:
    assert resolve_ckpt_path(AUTO_RESUME, tmp_path) is None  # a first start: nothing to resume
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"")
    assert resolve_ckpt_path(AUTO_RESUME, tmp_path) == str(last)
    hpc = tmp_path / "hpc_ckpt_1.ckpt"  # Lightning's SLURM requeue checkpoint, written after last.ckpt
    hpc.write_bytes(b"")
    os.utime(last, ns=(1_000_000_000, 1_000_000_000))
    assert resolve_ckpt_path(AUTO_RESUME, tmp_path) == str(hpc)
    os.utime(hpc, ns=(500_000_000, 500_000_000))
    assert resolve_ckpt_path(AUTO_RESUME, tmp_path) == str(last)


def test_only_global_rank_zero_creates_the_wandb_run_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ranks started together (torchrun, srun) must not race for wandb_id.txt: requeued jobs read it back."""
    logger_cfg = compose_train_config(["logger=wandb"], return_hydra_config=False).logger
    with open_dict(logger_cfg):
        logger_cfg.wandb.save_dir = str(tmp_path)
        logger_cfg.wandb.offline = True
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    instantiate_loggers(logger_cfg, tmp_path)
    assert not (tmp_path / RUN_ID_FILENAME).exists()
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    first = instantiate_loggers(logger_cfg, tmp_path)[0]
    again = instantiate_loggers(logger_cfg, tmp_path)[0]  # the requeued job, same run directory
    stored = (tmp_path / RUN_ID_FILENAME).read_text().strip()
    assert first.version == again.version == stored


def test_multirun_refuses_a_trainer_that_would_start_train_py_again(
    restore_rank_and_main_address: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    for mode in (RunMode.MULTIRUN, RunMode.RUN):
        cfg = compose_train_config(
            ["trainer=ddp_sim", f"trainer.default_root_dir={tmp_path}", f"hydra.mode={mode.name}"]
        )
        HydraConfig.instance().set_config(cfg)
        assert HydraConfig.get().mode == mode
        two_processes, one_process = (hydra.utils.instantiate(cfg.trainer, devices=count) for count in (2, 1))
        refuse_script_relaunch_in_multirun(one_process)  # nothing to start again
        if mode == RunMode.MULTIRUN:
            with pytest.raises(ConfigError, match=r"multirun \(-m\).*hydra/launcher=slurm"):
                refuse_script_relaunch_in_multirun(two_processes)
        else:
            refuse_script_relaunch_in_multirun(two_processes)  # a plain run may start its ranks


def test_the_objective_is_the_named_metric_and_a_missing_one_is_an_error() -> None:
    metrics = {"val/mse": 0.25, "train/loss": 1.5}
    assert objective_value(metrics, "val/mse") == 0.25
    assert objective_value(metrics, None) is None
    with pytest.raises(ConfigError, match=r"optimized_metric=val/lpips.*'train/loss', 'val/mse'"):
        objective_value(metrics, "val/lpips")
    assert OmegaConf.select(compose_train_config([], return_hydra_config=False), "optimized_metric") is None


def test_a_validation_objective_without_validation_fails_before_training() -> None:
    default = compose_train_config(["optimized_metric=val/mse"], return_hydra_config=False)
    check_objective_is_validated(default)  # the synthetic data have a val split
    no_val_split = compose_train_config(["experiment=goae_ffhq_stage1", "optimized_metric=val/mse"],
                                        return_hydra_config=False)  # FFHQ: the whole set is the train split
    with pytest.raises(ConfigError, match=r"optimized_metric=val/mse .* data=ffhq has no val split"):
        check_objective_is_validated(no_val_split)
    no_validation = compose_train_config(["optimized_metric=val/mse", "+trainer.limit_val_batches=0"],
                                         return_hydra_config=False)
    with pytest.raises(ConfigError, match=r"limit_val_batches=0"):
        check_objective_is_validated(no_validation)
