"""Continuous evaluation: following a training run's checkpoints.

What `evaluate` (`bin/evaluator` without --checkpoint) runs, the way the
reference's `--mode=eval` job followed a model_dir: it waits for the
checkpoints the trainer writes and evaluates each once.
"""
from absl import logging
import tensorflow as tf

from effnet_gin.train import run_dir
from effnet_gin.train.checkpoint_evaluator import evaluate_and_record
from effnet_gin.train.checkpoint_evaluator import UnrestorableCheckpointError


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
    evaluator: a `CheckpointEvaluator`.
    recorder: an `eval_records.Recorder` for model_dir.
    train_steps: the run's final step: following ends once it is evaluated.
    newest_only: evaluate only the newest unevaluated checkpoint per poll.
    min_interval_secs: minimum seconds between two polls.
    eval_timeout: stop when no new checkpoint appeared for this many
      seconds; None waits for the final one.

  Returns:
    The results evaluated, oldest first.

  When the run's trainer records its own evaluations
  (`eval_records.Recorder.trainer_records`), the results are returned and
  logged but not recorded.
  """
  if recorder.trainer_records():
    logging.warning("The trainer of %s records its evaluations in process; "
                    "this evaluator's results are logged, not recorded",
                    model_dir)
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
        result = evaluate_and_record(evaluator, recorder, path)
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
