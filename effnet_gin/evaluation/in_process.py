"""The trainer's own evaluations (train.mode='train_and_eval').

`InProcessEvaluator` scores the weights the trainer holds (their EMA when
it keeps one) at the step it just checkpointed, and records the result as
bin/evaluator records its own (`records.Recorder`).
"""
import contextlib
import json

from absl import logging

from effnet_gin.checkpoints import run_dir
from effnet_gin.evaluation import records
from effnet_gin.evaluation.eval_pass import EvalRunner


class InProcessEvaluator:
  """`evaluator(step, checkpoint)` evaluates the trainer's weights at `step`.

  One `EvalRunner` serves all of a run's evaluations, so the eval step is
  traced (and, with XLA, compiled) once.

  Args:
    strategy: the strategy the model was built under.
    model: the trained model.
    ema: its `ExponentialMovingAverage`, whose weights are scored; None
      scores the raw weights.
    model_dir: the run directory; the result names model_dir/ckpt-<step>,
      which must be saved before the evaluation.
    chief: whether this process records.
    eval_batch_size: global eval batch size.
    image_size: eval resolution in pixels.
    jit_compile: compile the eval step with XLA.
    dataset_builder: gives the eval split (see `EvalRunner`).
  """

  def __init__(self, *, strategy, model, ema, model_dir, chief, eval_batch_size,
               image_size, jit_compile, dataset_builder):
    self._runner = EvalRunner(strategy=strategy, model=model,
                              eval_batch_size=eval_batch_size,
                              image_size=image_size, jit_compile=jit_compile,
                              dataset_builder=dataset_builder)
    self._ema = ema
    self._model_dir = model_dir
    self._chief = chief

  def __call__(self, step, checkpoint):
    """Evaluates the (EMA) weights of `step`; returns the metrics.

    The result is recorded as bin/evaluator's are (eval/results.jsonl and
    best/, which the trainer then owns; scalars under train_eval/).

    Args:
      step: the step the weights are at.
      checkpoint: the `tf.train.Checkpoint` saved as model_dir/ckpt-<step>
        (best/ archives it when the result is the best).
    """
    swap = (self._ema.averaged_weights()
            if self._ema is not None else contextlib.nullcontext())
    with swap:
      metrics = self._runner.run()
    logging.info("eval at step %d: %s", step, json.dumps(metrics))
    recorder = records.Recorder(
        self._model_dir, self._chief, in_process=True,
        summary_dir=run_dir.path(self._model_dir,
                                 run_dir.TRAIN_EVAL_SUMMARIES_DIR))
    try:
      recorder(
          dict(step=step,
               checkpoint=run_dir.checkpoint_path(self._model_dir,
                                                  step), **metrics), checkpoint)
    finally:
      recorder.close()
    return metrics
