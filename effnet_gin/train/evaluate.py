"""The evaluator's entry point: `evaluate`, what `bin/evaluator` runs.

It follows a model_dir the way the reference's `--mode=eval` job did
(`continuous_eval`), or evaluates a single checkpoint given by path
(`eval_once`). Restoring and scoring a checkpoint is `checkpoint_evaluator`,
one pass over the validation set `eval_runner`, and what is recorded
(eval/results.jsonl, best/) `eval_records`.

The evaluator writes only into model_dir/eval/ (TensorBoard scalars,
results.jsonl, other_checkpoints.jsonl, record_counts.json) and
model_dir/best/ (a copy of the best of the run's checkpoints), never into the
trainer's files: the layout is `run_dir`'s docstring.

All I/O goes through `tf.io.gfile`, so model_dir may be a gs:// path.
"""
from absl import logging

from effnet_gin.data import build_dataset
from effnet_gin.model import build_model
from effnet_gin.train import continuous_eval
from effnet_gin.train import eval_once
from effnet_gin.train import eval_records
from effnet_gin.train import run_dir
from effnet_gin.train import strategy as strategy_lib
from effnet_gin.train.checkpoint_evaluator import CheckpointEvaluator


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


def evaluate(*, model_dir, eval_batch_size, image_size, train_steps=None,
             use_ema=True, eval_timeout=None, checkpoint=None,
             min_interval_secs=0, precision="float32", jit_compile=False,
             newest_only=True, train_steps_from_run=False,
             model_builder=build_model, dataset_builder=build_dataset,
             strategy=None):
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
    train_steps: the run's final step, after which continuous eval ends
      (needed without `checkpoint`).
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
    model_builder: `model_builder()` builds the Keras model the checkpoints
      restore into (the run's architecture and class count).
    dataset_builder: `dataset_builder(input_context, split='eval',
      global_batch_size=, image_size=)` gives one pipeline's eval batches
      (`effnet_gin.data.build_dataset` with its source bound).
    strategy: the `tf.distribute.Strategy` to evaluate under; None builds
      the default one (`strategy.build_strategy()`).

  Returns:
    The list of result dicts evaluated by this call, oldest first.

  Raises:
    FileNotFoundError: when `checkpoint` names no checkpoint.
    ValueError: for bad settings, a checkpoint without EMA weights while
      `use_ema` is set, or an unrestorable `checkpoint` prefix. (A run whose
      train_and_eval trainer records its own evaluations is evaluated but
      not recorded: that trainer is the one writer of eval/results.jsonl and
      best/; see `eval_records`.)
  """
  if not model_dir:
    raise ValueError("evaluate needs a model_dir (--model_dir)")
  model_dir = model_dir.rstrip("/")
  if not checkpoint:
    train_steps = _final_train_steps(model_dir, train_steps,
                                     train_steps_from_run)
  strategy_lib.set_precision_policy(precision)
  strategy = strategy or strategy_lib.build_strategy()
  evaluator = CheckpointEvaluator(
      strategy=strategy, use_ema=use_ema, eval_batch_size=eval_batch_size,
      image_size=image_size, jit_compile=jit_compile,
      model_builder=model_builder, dataset_builder=dataset_builder)
  recorder = eval_records.Recorder(model_dir, strategy_lib.is_chief(strategy))
  try:
    if checkpoint:
      return [eval_once.evaluate_once(evaluator, recorder, checkpoint)]
    return continuous_eval.follow(
        model_dir, evaluator, recorder, train_steps=train_steps,
        newest_only=newest_only, min_interval_secs=min_interval_secs,
        eval_timeout=eval_timeout)
  finally:
    recorder.close()
