"""The evaluator's entry point: `evaluate`, what `bin/evaluator` runs.

It decides which checkpoints are evaluated: it follows a model_dir the way
the reference's `--mode=eval` job did (`follow`), or evaluates one
checkpoint given by path (`evaluate_once`). Restoring, scoring and recording
a checkpoint is `checkpoint_evaluator`, one pass over the validation set
`eval_pass`, and what is recorded (eval/results.jsonl, best/) `records`.

The evaluator writes only into model_dir/eval/ (TensorBoard scalars,
results.jsonl, other_checkpoints.jsonl, record_counts.json) and
model_dir/best/ (a copy of the best of the run's checkpoints), never into the
trainer's files: the layout is `run_dir`'s docstring.

All I/O goes through `tf.io.gfile`, so model_dir may be a gs:// path.
"""
from absl import logging
import tensorflow as tf

from effnet_gin.data import build_dataset
from effnet_gin.model import build_model
from effnet_gin.evaluation import glob_records
from effnet_gin.evaluation import records
from effnet_gin.checkpoints import checkpointing
from effnet_gin.checkpoints import run_dir
from effnet_gin import distribute
from effnet_gin.evaluation.checkpoint_evaluator import CheckpointEvaluator
from effnet_gin.evaluation.checkpoint_evaluator import UnrestorableCheckpointError


def _final_train_steps(model_dir, train_steps, train_steps_from_run):
  """The configured train_steps, or the trainer's when asked and known."""
  run_steps = (run_dir.run_train_steps(model_dir)
               if train_steps_from_run else None)
  if run_steps is not None:
    logging.info(
        "Following the trainer's train_steps=%d from %s/run.json "
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
             strategy=None, image_glob=None):
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
      model_dir/run.json when it has one (bin/evaluator sets this unless
      told --train_steps).
    model_builder: `model_builder()` builds the Keras model the checkpoints
      restore into (the run's architecture and class count).
    dataset_builder: `dataset_builder(input_context, split='eval',
      global_batch_size=, image_size=)` gives one pipeline's eval batches
      (`effnet_gin.data.build_dataset` with its source bound).
    strategy: the `tf.distribute.Strategy` to evaluate under; None builds
      the default one (`strategy.build_strategy()`).
    image_glob: (glob, label file) when `dataset_builder` reads an image
      glob (`ImageGlobSource`) rather than the run's eval split: the
      `checkpoint` is evaluated and recorded in model_dir/eval_image_glob/
      only (`glob_records.ImageGlobRecorder`), never in results.jsonl or best/.

  Returns:
    The list of result dicts evaluated by this call, oldest first.

  Raises:
    FileNotFoundError: when `checkpoint` names no checkpoint.
    ValueError: for bad settings, a checkpoint without EMA weights while
      `use_ema` is set, or an unrestorable `checkpoint` prefix. (A run whose
      train_and_eval trainer records its own evaluations is evaluated but
      not recorded: that trainer is the one writer of eval/results.jsonl and
      best/; see `records`.)
  """
  if not model_dir:
    raise ValueError("evaluate needs a model_dir (--model_dir)")
  model_dir = model_dir.rstrip("/")
  if image_glob and not checkpoint:
    raise ValueError("an image-glob evaluation needs the checkpoint to "
                     "evaluate (--checkpoint or --ckpt_dir)")
  if not checkpoint:
    train_steps = _final_train_steps(model_dir, train_steps,
                                     train_steps_from_run)
  distribute.set_precision_policy(precision)
  strategy = strategy or distribute.build_strategy()
  if image_glob:
    recorder = glob_records.ImageGlobRecorder(model_dir,
                                              distribute.is_chief(strategy),
                                              images=image_glob[0],
                                              labels_file=image_glob[1])
  else:
    recorder = records.Recorder(model_dir, distribute.is_chief(strategy))
  evaluator = CheckpointEvaluator(strategy=strategy, use_ema=use_ema,
                                  eval_batch_size=eval_batch_size,
                                  image_size=image_size,
                                  jit_compile=jit_compile, recorder=recorder,
                                  model_builder=model_builder,
                                  dataset_builder=dataset_builder)
  try:
    if checkpoint:
      return [evaluate_once(evaluator, checkpoint)]
    return follow(model_dir, evaluator, recorder, train_steps=train_steps,
                  newest_only=newest_only, min_interval_secs=min_interval_secs,
                  eval_timeout=eval_timeout)
  finally:
    recorder.close()


def evaluate_once(evaluator, checkpoint):
  """Evaluates and records `checkpoint`: a prefix, or a directory.

  Of a directory, the newest listed checkpoint that restores is taken (the
  unrestorable ones before it are logged, and left in place).

  Args:
    evaluator: a `CheckpointEvaluator` (with the run's recorder).
    checkpoint: a checkpoint prefix or a directory holding checkpoints.

  Returns:
    The result dict.

  Raises:
    FileNotFoundError: when `checkpoint` names no checkpoint, or it was
      deleted while being read.
    UnrestorableCheckpointError: when the prefix given does not restore.
  """
  if tf.io.gfile.isdir(checkpoint):
    checkpointing.resolve_checkpoint(checkpoint)  # Raises when empty.
    return _evaluate_newest_restorable(evaluator,
                                       run_dir.listed_checkpoints(checkpoint))
  path = checkpointing.resolve_checkpoint(checkpoint)
  result = evaluator(path)
  if result is None:
    raise FileNotFoundError(f"checkpoint {path!r} was deleted while it was "
                            "being read")
  return result


def _evaluate_newest_restorable(evaluator, candidates):
  """Evaluates the newest of `candidates` that restores; returns its result.

  The unrestorable ones tried before it are logged with their error (and
  left in place).

  Raises:
    FileNotFoundError: when none of them restores or all vanished.
  """
  for path in reversed(candidates):
    try:
      result = evaluator(path)
    except UnrestorableCheckpointError as err:
      logging.error("%s; falling back to the checkpoint before it", err)
      continue
    if result is not None:
      return result
  raise FileNotFoundError(f"none of the checkpoints {candidates} could be "
                          "restored")


def follow(model_dir, evaluator, recorder, *, train_steps, newest_only,
           min_interval_secs, eval_timeout):
  """Evaluates model_dir's checkpoints as they appear, until the final one.

  Steps already in the results log are skipped (a restarted evaluator
  carries on). With `newest_only`, each poll evaluates only the newest
  unevaluated checkpoint and logs the older ones it skips; otherwise every
  one is evaluated, oldest first. An unrestorable checkpoint is logged and
  skipped; one deleted by the trainer's retention before it was read, too.

  Args:
    model_dir: the training run's directory.
    evaluator: a `CheckpointEvaluator` recording with `recorder`.
    recorder: the `records.Recorder` for model_dir.
    train_steps: the run's final step: following ends once it is evaluated.
    newest_only: evaluate only the newest unevaluated checkpoint per poll.
    min_interval_secs: minimum seconds between two polls.
    eval_timeout: stop when no new checkpoint appeared for this many
      seconds; None waits for the final one.

  Returns:
    The results evaluated, oldest first.

  When the run's trainer records its own evaluations
  (`records.Recorder.trainer_records`), the results are returned and
  logged but not recorded.
  """
  if recorder.trainer_records():
    logging.warning(
        "The trainer of %s records its evaluations in process; "
        "this evaluator's results are logged, not recorded", model_dir)
  done_steps = recorder.results_log.evaluated_steps()
  if done_steps:
    logging.info("Already evaluated in %s: steps %s", recorder.results_log.path,
                 sorted(done_steps))
  results = []
  for _ in tf.train.checkpoints_iterator(model_dir,
                                         min_interval_secs=min_interval_secs,
                                         timeout=eval_timeout):
    pending = [
        p for p in run_dir.listed_checkpoints(model_dir)
        if run_dir.checkpoint_step(p) not in done_steps
    ]
    # Newest first when only the newest counts; an unrestorable one falls
    # back to the one before it.
    for path in reversed(pending) if newest_only else pending:
      done_steps.add(run_dir.checkpoint_step(path))
      try:
        result = evaluator(path)
      except UnrestorableCheckpointError as err:
        logging.error("%s; skipping it", err)
        continue
      if result is None:
        continue
      results.append(result)
      skipped = [
          p for p in pending if run_dir.checkpoint_step(p) not in done_steps
      ]
      if newest_only and skipped:
        logging.warning(
            "Skipped %s: the newer %s was evaluated instead "
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
