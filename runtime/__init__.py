"""Framework utilities around `train.py`: config checks and printing, instantiation of callbacks and
loggers, a rank-zero-aware logger, wandb offline resolution, and the built-in preview job.

Importing this package registers the OmegaConf resolvers the configs use (``${project_root:}``),
so import it before composing ``configs/train.yaml``. It stays light: no torch/lightning import here.

Conventions that every stage follows (see README "Writing a stage"):

* ``cfg.stage`` is instantiated by ``train.py``. A stage is either a ``LightningModule`` (trained with
  ``trainer.fit``) or a plain job object with ``run(output_dir: Path) -> Path``.
* The generator is built ONCE from ``cfg.generator``. Any stage or data config that declares
  ``generator: ???`` receives that instance as the ``generator=`` constructor argument.
* ``ckpt_path`` resumes (full trainer state); ``init_from`` only initialises weights (stage configs
  read it as ``${init_from}``).
"""

from runtime.resolvers import register_resolvers

register_resolvers()
