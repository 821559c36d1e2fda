"""The evaluator: eval-only of one checkpoint, and continuous evaluation.

`evaluate` is what `bin/evaluator` runs: it follows a model_dir the way the
reference's `--mode=eval` job did, evaluating the checkpoints the trainer
writes, or a single checkpoint given by path. One pass over the validation
set is `eval_runner`; what is recorded (eval/results.jsonl, best/) is
`eval_records`. Their public names are importable from here too.

The evaluator writes only into model_dir/eval/ (TensorBoard scalars,
results.jsonl, other_checkpoints.jsonl, record_counts.json) and
model_dir/best/ (a copy of the best of the run's checkpoints), never into the
trainer's files: the layout is `run_dir`'s docstring.

All I/O goes through `tf.io.gfile`, so model_dir may be a gs:// path.
"""
import time

from absl import logging
import gin
import tensorflow as tf

from effnet_gin.model import build_model
from effnet_gin.train import averaging
from effnet_gin.train import checkpointing
from effnet_gin.train import strategy as strategy_lib
from effnet_gin.train import eval_records
from effnet_gin.train import run_dir
from effnet_gin.train.eval_records import BestCheckpoint  # noqa: F401
from effnet_gin.train.eval_records import ResultsLog  # noqa: F401
from effnet_gin.train.eval_runner import EvalRunner
from effnet_gin.train.eval_runner import METRICS  # noqa: F401
from effnet_gin.train.eval_runner import run_evaluation  # noqa: F401


class UnrestorableCheckpointError(ValueError):
  """A checkpoint's files exist but do not restore (truncated or corrupt)."""


class _CheckpointEvaluator:
  """Restores checkpoints into one model (and EMA) and scores them."""

  def __init__(self, *, strategy, use_ema, eval_batch_size, image_size,
               jit_compile):
    with strategy.scope():
      self._model = build_model()
      self._ema = (averaging.ExponentialMovingAverage(self._model) if use_ema
                   else None)
      self._step = tf.Variable(0, dtype=tf.int64, trainable=False,
                               name="global_step")
    self.checkpoint = checkpointing.build_checkpoint(
        step=self._step, model=self._model, ema=self._ema)
    self._runner = EvalRunner(strategy=strategy, model=self._model,
                              eval_batch_size=eval_batch_size,
                              image_size=image_size, jit_compile=jit_compile)

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
      self.checkpoint.read(path).assert_existing_objects_matched(
      ).expect_partial()
    except checkpointing.RESTORE_ERRORS as err:
      if not tf.io.gfile.exists(path + ".index"):
        return False
      raise UnrestorableCheckpointError(
          f"checkpoint {path!r} does not restore "
          f"({checkpointing.describe_error(err)}); its files are left in "
          "place") from err
    return True

  def __call__(self, path):
    """Evaluates checkpoint `path`.

    Returns:
      The result dict (`step`, `checkpoint` and the metrics), or None when
      the checkpoint was deleted (by the trainer's retention) before it could
      be read.

    Raises:
      UnrestorableCheckpointError: when its files do not restore.
    """
    if not self._restore(path):
      logging.warning("Checkpoint %s was deleted before it could be "
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
    logging.info("Evaluated %s (step %d%s) in %.1fs: %s", path,
                 result["step"], ", EMA weights" if self._ema else "",
                 time.time() - start, metrics)
    return result


def _evaluate_one(evaluator, recorder, path):
  """Evaluates and records one checkpoint; None if it vanished first."""
  result = evaluator(path)
  if result is not None:
    recorder(result, evaluator.checkpoint)
  return result


def _evaluate_newest_restorable(evaluator, recorder, candidates):
  """Evaluates the newest of `candidates` that restores; returns its result.

  The unrestorable ones tried before it are logged with their error (and
  left in place).

  Raises:
    FileNotFoundError: when none of them restores or all vanished.
  """
  for path in reversed(candidates):
    try:
      result = _evaluate_one(evaluator, recorder, path)
    except UnrestorableCheckpointError as err:
      logging.error("%s; falling back to the checkpoint before it", err)
      continue
    if result is not None:
      return result
  raise FileNotFoundError(f"none of the checkpoints {candidates} could be "
                          "restored")


def _follow(model_dir, evaluator, recorder, *, train_steps, newest_only,
            min_interval_secs, eval_timeout):
  """Continuous evaluation of model_dir until its final checkpoint."""
  done_steps = recorder.results_log.evaluated_steps()
  if done_steps:
    logging.info("Already evaluated in %s: steps %s",
                 recorder.results_log.path, sorted(done_steps))
  results = []
  for _ in tf.train.checkpoints_iterator(
      model_dir, min_interval_secs=min_interval_secs, timeout=eval_timeout):
    pending = [p for p in run_dir.listed_checkpoints(model_dir)
               if run_dir.checkpoint_step(p) not in done_steps]
    # Newest first when only the newest counts; an unrestorable one falls
    # back to the one before it.
    for path in reversed(pending) if newest_only else pending:
      done_steps.add(run_dir.checkpoint_step(path))
      try:
        result = _evaluate_one(evaluator, recorder, path)
      except UnrestorableCheckpointError as err:
        logging.error("%s; skipping it", err)
        continue
      if result is None:
        continue
      results.append(result)
      skipped = [p for p in pending
                 if run_dir.checkpoint_step(p) not in done_steps]
      if newest_only and skipped:
        logging.warning("Skipped %s: the newer %s was evaluated instead "
                        "(evaluate.newest_only)", skipped, path)
        done_steps.update(run_dir.checkpoint_step(p) for p in skipped)
        break
    if max(done_steps, default=-1) >= train_steps:
      logging.info("Evaluated the final checkpoint (step >= %d); done",
                   train_steps)
      break
  else:
    logging.info("No new checkpoint in %s for %ss; stopping", model_dir,
                 eval_timeout)
  return results


def _final_train_steps(model_dir, train_steps, train_steps_from_run):
  """The configured train_steps, or the trainer's when asked and known."""
  run_steps = (run_dir.config_train_steps(model_dir) if train_steps_from_run
               else None)
  if run_steps is not None:
    logging.info("Following the trainer's train_steps=%d from %s/config.gin "
                 "(this evaluator's config says %s; pass --train_steps to "
                 "override)", run_steps, model_dir, train_steps)
    return run_steps
  if train_steps is None or train_steps <= 0:
    raise ValueError(f"evaluate.train_steps must be positive, got "
                     f"{train_steps!r}")
  return train_steps


@gin.configurable("evaluate", module="effnet_gin.train",
                  denylist=["model_dir", "train_steps_from_run"])
def evaluate(*, model_dir, eval_batch_size=gin.REQUIRED,
             image_size=gin.REQUIRED, train_steps=gin.REQUIRED, use_ema=True,
             eval_timeout=None, checkpoint=None, min_interval_secs=0,
             precision="float32", jit_compile=False, newest_only=True,
             train_steps_from_run=False):
  """Evaluates the checkpoints of a training run (`bin/evaluator`).

  Without `checkpoint`, follows model_dir like the reference's eval job:
  waits for checkpoints and evaluates those the trainer writes, skipping
  steps already recorded in model_dir/eval/results.jsonl so a restarted
  evaluator carries on. With `newest_only`, each poll evaluates only the
  newest unevaluated checkpoint and logs the older ones it skips, so a slow
  evaluator keeps up with the trainer; otherwise every checkpoint is
  evaluated once, oldest first (those the trainer's retention deleted
  meanwhile are skipped with a warning). An unrestorable checkpoint is
  logged and skipped, never deleted. It stops after the checkpoint whose
  step reaches `train_steps`, or when no new checkpoint appeared for
  `eval_timeout` seconds.

  Args:
    model_dir: the training run's directory (local or gs://); results go to
      its eval/ and best/ subdirectories.
    eval_batch_size: global eval batch size.
    image_size: eval resolution in pixels.
    train_steps: the run's final step, after which continuous eval ends.
    use_ema: evaluate the exponential moving average of the weights (as the
      reference does) instead of the raw weights.
    eval_timeout: seconds to wait for a new checkpoint; None waits until the
      final one.
    checkpoint: evaluate only this checkpoint and return: a prefix such as
      model_dir/ckpt-1000, or a directory, whose newest checkpoint that
      restores is taken. One outside model_dir (another run's, or in best/)
      is recorded in eval/other_checkpoints.jsonl only.
    min_interval_secs: minimum seconds between two checkpoint polls.
    precision: the Keras precision policy ('float32', 'mixed_bfloat16').
    jit_compile: compile the eval step with XLA (on for TPU).
    newest_only: in continuous eval, evaluate the newest checkpoint and
      skip older unevaluated ones.
    train_steps_from_run: take train_steps from the trainer's
      model_dir/config.gin when it has one (bin/evaluator sets this unless
      told --train_steps).

  Returns:
    The list of result dicts evaluated by this call, oldest first.

  Raises:
    FileNotFoundError: when `checkpoint` names no checkpoint.
    ValueError: for bad settings, a checkpoint without EMA weights while
      `use_ema` is set, or an unrestorable `checkpoint` prefix.
  """
  if not model_dir:
    raise ValueError("evaluate needs a model_dir (--model_dir)")
  model_dir = model_dir.rstrip("/")
  train_steps = _final_train_steps(model_dir, train_steps,
                                   train_steps_from_run)
  strategy_lib.set_precision_policy(precision)
  strategy = strategy_lib.build_strategy()
  evaluator = _CheckpointEvaluator(
      strategy=strategy, use_ema=use_ema, eval_batch_size=eval_batch_size,
      image_size=image_size, jit_compile=jit_compile)
  recorder = eval_records.Recorder(model_dir, strategy_lib.is_chief(strategy))
  try:
    if checkpoint and tf.io.gfile.isdir(checkpoint):
      checkpointing.resolve_checkpoint(checkpoint)  # Raises when empty.
      return [_evaluate_newest_restorable(
          evaluator, recorder, run_dir.listed_checkpoints(checkpoint))]
    if checkpoint:
      path = checkpointing.resolve_checkpoint(checkpoint)
      result = _evaluate_one(evaluator, recorder, path)
      if result is None:
        raise FileNotFoundError(f"checkpoint {path!r} was deleted while it "
                                "was being read")
      return [result]
    return _follow(model_dir, evaluator, recorder, train_steps=train_steps,
                   newest_only=newest_only,
                   min_interval_secs=min_interval_secs,
                   eval_timeout=eval_timeout)
  finally:
    recorder.close()
