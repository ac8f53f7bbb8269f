"""Invert photos with a trained stage: reconstruction, multi-view grid, orbit video, depth, latents,
mesh and edits per image. Configs: configs/invert.yaml (Hydra; same stage/generator groups as train.py).

$ python invert.py ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt inputs=my_photos align=true
$ python invert.py stage=encoder generator=ffhq512-128 generator.checkpoint=pretrained/ffhqrebalanced512-128.pkl \
      ckpt_path=stage1.ckpt inputs=data/aligned_folder edit.directions=[example/ws_edit/age.npy]
$ python invert.py method=pti generator=ffhq512-128 generator.checkpoint=... inputs=data/aligned_folder   # PTI
$ python invert.py inputs=data/aligned_folder results_from=logs/invert/runs/<run>   # re-render saved results

See docs/invert.md and, for PTI / Pose Opt. / encoder + PTI, docs/pti.md.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

import runtime  # noqa: F401  (registers the config resolvers before Hydra composes)
from inversion.inputs import InvertInputError
from inversion.loading import CheckpointError
from inversion.tuned_generator import TunedGeneratorError
from losses.frozen import PretrainedWeightsError
from inversion.run import EditDirectionError, InvertConfigError, checkpoint_needed, run_invert
from runtime.config import apply_extras, check_required_values

# Errors whose message says everything: printed without a traceback, exit status 1.
USER_ERRORS = (InvertInputError, CheckpointError, EditDirectionError, InvertConfigError, TunedGeneratorError,
               PretrainedWeightsError)


def invert(cfg: DictConfig) -> None:
    not_needed = () if checkpoint_needed(cfg) else ("ckpt_path",)
    check_required_values(cfg, filled_by_code=("stage.generator", "method.generator", *not_needed))
    apply_extras(cfg, output_dir=None)
    summary = run_invert(cfg)
    print(f"wrote {len(summary.images)} image folder(s) under {summary.outputs}")


@hydra.main(version_base="1.3", config_path="configs", config_name="invert")
def main(cfg: DictConfig) -> None:
    try:
        invert(cfg)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
