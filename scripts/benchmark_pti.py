"""Per-image time of PTI and Pose Opt. (extrapolated from a few timed steps) next to GOAE stage 1's encoder.

    python scripts/benchmark_pti.py                         # tiny generator, CPU
    python scripts/benchmark_pti.py --config ffhq512-128    # full size, random weights
    python scripts/benchmark_pti.py --config ffhq512-128 --device cuda

Random weights everywhere (time does not depend on values): the generator skips the output-range
calibration (``calibration_samples=0``, as scripts/benchmark_generator.py does) and the loss networks
keep random backbones. The steps are timed as ``PTIInverter`` runs them (PTI's losses: VGG16 LPIPS at
256 px for the search, AlexNet LPIPS at full size for the tuning); the totals are EXTRAPOLATED to the
configured step counts (450 + 350 for PTI, 400 + 400 for Pose Opt.) without early stopping, so they are
upper bounds of a real run's time. A benchmark, not a test: it asserts nothing, and prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

import runtime  # noqa: E402,F401  (config resolvers)
from cameras import look_at_label  # noqa: E402
from inversion.optimisation.pti import PTIInverter  # noqa: E402
from networks.eg3d.configs import build_generator, freeze, randomize_generator_weights_  # noqa: E402
from runtime.resolvers import PROJECT_ROOT  # noqa: E402

RANDOM_BACKBONE = "random"
METHODS = {"pti": {"pivot": 450, "tuning": 350, "pose": None},
           "pose_opt": {"pivot": 400, "tuning": 400, "pose": {"preheat_steps": 0}}}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_step(generator: torch.nn.Module, pose: dict | None, steps: int, device: torch.device) -> dict:
    """Per step of each phase: (a run of `steps` + 1 steps) - (a run of 1 step), divided by `steps`; wall
    clock and this process's CPU time (on a shared CPU the wall clock depends on the other processes)."""
    config = {"pivot_loss": {"net": "vgg", "backbone_weights": RANDOM_BACKBONE, "resolution": 256},
              "tuning_loss": {"net": "alex", "backbone_weights": RANDOM_BACKBONE}}
    size = int(generator.img_resolution)
    image = torch.zeros(1, 3, size, size, device=device)
    camera = look_at_label(torch.tensor([0.3]), torch.tensor([-0.1]), device=device)
    measured = {}
    for phase, counts in (("pivot", ({"steps": 1}, {"steps": steps + 1})), ("tuning", ({"steps": 1}, {"steps": steps + 1}))):
        runs = []
        for count in counts:
            pivot = count if phase == "pivot" else {"steps": 1}
            tuning = {**(count if phase == "tuning" else {"steps": 1}), "lpips_threshold": 0.0}
            inverter = PTIInverter(generator, pivot=pivot, tuning=tuning, pose=pose, progress_bar=False, report=None,
                                   **config).to(device)
            synchronize(device)
            wall, cpu = time.perf_counter(), time.process_time()
            inverter.invert(image, image, camera)
            synchronize(device)
            runs.append((time.perf_counter() - wall, time.process_time() - cpu))
        measured[f"{phase}_step_wall_s"] = (runs[1][0] - runs[0][0]) / steps
        measured[f"{phase}_step_cpu_s"] = (runs[1][1] - runs[0][1]) / steps
    return measured


def encoder_seconds(generator: torch.nn.Module, config: str, device: torch.device, repeats: int) -> dict:
    """GOAE stage 1's inversion + input-view render of one image (random encoder weights at the config's
    size): wall clock and CPU time."""
    from runtime.instantiate import instantiate_component

    stage_option = "encoder_tiny" if config == "tiny" else "encoder"
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            f"stage={stage_option}", "stage.loss_weights.adv=0", "stage.loss_weights.bg=0",
            "stage.loss_weights.lpips=0", "stage.loss_weights.id=0", "stage.encoder.backbone_weights=random"])
    stage = instantiate_component(cfg.stage, generator).to(device).eval()
    stage.reached_stage.fill_(3)
    size = int(cfg.stage.encoder.image_size)
    image = torch.zeros(1, 3, size, size, device=device)
    camera = look_at_label(torch.tensor([0.3]), torch.tensor([-0.1]), device=device)
    with torch.no_grad():
        stage.invert(image, image, camera)  # warm-up
        synchronize(device)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(repeats):
            result = stage.invert(image, image, camera)
            result.render_input_view(generator, camera)
        synchronize(device)
    return {"wall_s": round((time.perf_counter() - wall) / repeats, 4),
            "cpu_s": round((time.process_time() - cpu) / repeats, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", choices=["tiny", "ffhq512-128"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per phase (after one untimed)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    generator = freeze(randomize_generator_weights_(build_generator(args.config), seed=0, calibration_samples=0))
    generator = generator.to(device)
    report: dict = {"config": args.config, "device": str(device), "threads": torch.get_num_threads(),
                    "timed_steps_per_phase": args.steps, "methods": {}}
    for name in args.methods:
        method = METHODS[name]
        per_step = seconds_per_step(generator, method["pose"], args.steps, device)
        report["methods"][name] = {**{key: round(value, 4) for key, value in per_step.items()},
                                   "steps": [method["pivot"], method["tuning"]]}
        for clock in ("wall", "cpu"):
            total = (method["pivot"] * per_step[f"pivot_step_{clock}_s"]
                     + method["tuning"] * per_step[f"tuning_step_{clock}_s"])
            report["methods"][name][f"extrapolated_{clock}_seconds_per_image"] = round(total, 1)
        print(json.dumps({name: report["methods"][name]}), flush=True)
    report["goae_stage1_per_image"] = encoder_seconds(generator, args.config, device, 2)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
