"""Restoring a checkpoint, scoring it and recording it: `CheckpointEvaluator`.

Both ways of running the evaluator use it (`evaluator`: one checkpoint, or
following a run); what a result records is `records`.
"""
import time

from absl import logging
import tensorflow as tf

from effnet_gin.data import build_dataset
from effnet_gin.model import build_model
from effnet_gin.checkpoints import averaging
from effnet_gin.checkpoints import checkpointing
from effnet_gin.evaluation.eval_pass import EvalRunner


class UnrestorableCheckpointError(ValueError):
  """A checkpoint's files exist but do not restore (truncated or corrupt)."""


class CheckpointEvaluator:
  """Restores checkpoints into one model (and EMA) and scores them.

  The model is built once (by `model_builder`) under the strategy's scope
  and one `EvalRunner` is kept, so evaluating many checkpoints traces the
  eval step once.

  Args:
    strategy: the `tf.distribute.Strategy` to evaluate under.
    use_ema: score the checkpoints' EMA weights (which they must hold).
    eval_batch_size: global eval batch size.
    image_size: eval resolution in pixels.
    jit_compile: compile the eval step with XLA.
    recorder: a `records.Recorder` each result is handed to, with the
      checkpoint object it was restored into; None records nothing.
    model_builder: builds the model, `model_builder()`.
    dataset_builder: gives the eval split (see `EvalRunner`).
  """

  def __init__(self, *, strategy, use_ema, eval_batch_size, image_size,
               jit_compile, recorder=None, model_builder=build_model,
               dataset_builder=build_dataset):
    self._recorder = recorder
    with strategy.scope():
      self._model = model_builder()
      self._ema = (averaging.ExponentialMovingAverage(self._model)
                   if use_ema else None)
      self._step = tf.Variable(0, dtype=tf.int64, trainable=False,
                               name="global_step")
    self.checkpoint = checkpointing.build_checkpoint(step=self._step,
                                                     model=self._model,
                                                     ema=self._ema)
    self._runner = EvalRunner(strategy=strategy, model=self._model,
                              eval_batch_size=eval_batch_size,
                              image_size=image_size, jit_compile=jit_compile,
                              dataset_builder=dataset_builder)

  def _check_compatible(self, path):
    num_classes = checkpointing.checkpoint_num_classes(path)
    if num_classes != self._model.output_shape[-1]:
      raise ValueError(
          f"checkpoint {path!r} has {num_classes} classes but the "
          f"configured model has {self._model.output_shape[-1]}; set "
          "NUM_CLASSES (build_model.num_classes) to match the run")
    if self._ema is not None and not checkpointing.has_ema(path):
      raise ValueError(
          f"checkpoint {path!r} holds no EMA weights (trained with "
          "train.use_ema=False?); evaluate its raw weights with "
          "evaluate.use_ema=False")

  def _restore(self, path):
    """Restores `path`; returns False when it vanished before it was read.

    Raises:
      UnrestorableCheckpointError: when its files exist but do not read.
    """
    try:
      self._check_compatible(path)
      self.checkpoint.read(
          path).assert_existing_objects_matched().expect_partial()
    except checkpointing.RESTORE_ERRORS as err:
      if not tf.io.gfile.exists(path + ".index"):
        return False
      raise UnrestorableCheckpointError(
          f"checkpoint {path!r} does not restore "
          f"({checkpointing.describe_error(err)}); its files are left in "
          "place") from err
    return True

  def __call__(self, path):
    """Evaluates checkpoint `path` and hands the result to the recorder.

    Returns:
      The result dict (`step`, `checkpoint` and the metrics), or None when
      the checkpoint was deleted (by the trainer's retention) before it could
      be read.

    Raises:
      UnrestorableCheckpointError: when its files do not restore.
    """
    if not self._restore(path):
      logging.warning(
          "Checkpoint %s was deleted before it could be "
          "evaluated (the trainer keeps only its newest "
          "checkpoints); skipping it", path)
      return None
    start = time.time()
    if self._ema is not None:
      with self._ema.averaged_weights():
        metrics = self._runner.run()
    else:
      metrics = self._runner.run()
    result = dict(step=int(self._step.numpy()), checkpoint=path, **metrics)
    logging.info("Evaluated %s (step %d%s) in %.1fs: %s", path, result["step"],
                 ", EMA weights" if self._ema else "",
                 time.time() - start, metrics)
    if self._recorder is not None:
      self._recorder(result, self.checkpoint)
    return result
