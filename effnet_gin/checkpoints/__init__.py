"""Everything that reads or writes weights on disk.

How a run's weights flow through this package:

  run_dir         names every file in a model_dir (checkpoints, configs,
                  eval/, best/) and owns the atomic write helpers.
  run_lock        one trainer per model_dir: the chief's `run.lock`, refused
                  while its holder lives, taken over once it is dead.
  checkpointing   the trainer's checkpoint contract, `tf.train.Checkpoint(
                  step, model, optimizer, ema)`, and `Manager` (save, resume
                  from the newest checkpoint that restores, set aside the
                  ones that do not).
  averaging       the exponential moving average of the weights that the
                  trainer updates and evaluation and export restore.
  weight_sources  readers of foreign weights (the reference's TF1
                  checkpoints, keras.applications files), mapped to
                  effnet_gin's layer names.
  pretrained      `load_pretrained` assigns any of those into a built model;
                  `initialize_from` starts a fine-tuning run from them.
  importer        `import_checkpoint` turns a published checkpoint into an
                  ordinary model_dir (`ckpt-0` plus `model.gin`).

It builds on model/ (the architecture a checkpoint is read into) and nothing
above it.
"""
from effnet_gin.checkpoints.averaging import ExponentialMovingAverage
from effnet_gin.checkpoints.pretrained import checkpoint_format
from effnet_gin.checkpoints.pretrained import initialize_from
from effnet_gin.checkpoints.pretrained import load_pretrained
from effnet_gin.checkpoints.pretrained import LoadResult
