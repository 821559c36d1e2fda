"""Evaluation: scoring checkpoints on the eval split and recording results.

  eval_pass             one pass over the eval split under a strategy
                        (`EvalRunner`): top-1, top-5 and loss.
  checkpoint_evaluator  restores one checkpoint (EMA weights) and scores it.
  evaluator             `evaluate`, what bin/evaluator runs: one checkpoint,
                        or following a model_dir as the trainer writes it.
  records               what a result records and where: eval/results.jsonl,
                        best/ and the eval split's record counts.

The trainer's in-process evaluation uses the same runner and records. Data
flows from data/ (the eval split) and checkpoints/ (restored weights) into
this package; it imports nothing of train/ or serving/.
"""
from effnet_gin.evaluation.eval_pass import run_evaluation
from effnet_gin.evaluation.evaluator import evaluate
