"""Eval-only: evaluating one checkpoint, or a directory's newest.

What `evaluate(checkpoint=...)` (`bin/evaluator --checkpoint`) runs. One
outside model_dir (another run's, or in best/) is recorded apart
(`eval_records.Recorder`).
"""
from absl import logging
import tensorflow as tf

from effnet_gin.train import checkpointing
from effnet_gin.train import run_dir
from effnet_gin.train.checkpoint_evaluator import evaluate_and_record
from effnet_gin.train.checkpoint_evaluator import UnrestorableCheckpointError


def evaluate_once(evaluator, recorder, checkpoint):
  """Evaluates and records `checkpoint`: a prefix, or a directory.

  Of a directory, the newest listed checkpoint that restores is taken (the
  unrestorable ones before it are logged, and left in place).

  Args:
    evaluator: a `CheckpointEvaluator`.
    recorder: an `eval_records.Recorder`.
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
    return _evaluate_newest_restorable(
        evaluator, recorder, run_dir.listed_checkpoints(checkpoint))
  path = checkpointing.resolve_checkpoint(checkpoint)
  result = evaluate_and_record(evaluator, recorder, path)
  if result is None:
    raise FileNotFoundError(f"checkpoint {path!r} was deleted while it was "
                            "being read")
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
      result = evaluate_and_record(evaluator, recorder, path)
    except UnrestorableCheckpointError as err:
      logging.error("%s; falling back to the checkpoint before it", err)
      continue
    if result is not None:
      return result
  raise FileNotFoundError(f"none of the checkpoints {candidates} could be "
                          "restored")
