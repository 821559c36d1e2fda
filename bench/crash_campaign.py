#!/usr/bin/env python3
"""The long crash campaign: many SIGKILLs of bin/trainer and bin/evaluator.

    python3 bench/crash_campaign.py [--kills=50] [--seed=0] [--steps=120]

One tiny run (B0 at width and depth 0.1, 32 px random-noise images, a
checkpoint after every step) trained by bin/trainer and followed by
bin/evaluator, both SIGKILLed again and again (the kills split between them)
and restarted after each kill: at fault points (inside a checkpoint save,
between copying a best checkpoint and recording it, between offering a result
to best/ and writing it to results.jsonl) and at random times. The campaign
is tests/crash_helpers.py's; tests/test_crash_campaign.py runs a short one.
Prints the kills, restarts, checkpoints lost, results duplicated and missing
(all must be 0 but the first two) and the final step; exits 1 on a problem.
"""
import os
import sys
import tempfile

from absl import app
from absl import flags

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import crash_helpers  # noqa: E402  (the campaign, shared with the test)

flags.DEFINE_integer(
    "kills", 50, "Kills in all, split evenly between the "
    "trainer and the evaluator.")
flags.DEFINE_integer("seed", 0, "Seed of the kill plan.")
flags.DEFINE_integer(
    "steps", 120, "The run's train_steps (one checkpoint "
    "per step); at least the number of trainer kills + 1.")
flags.DEFINE_integer("keep_checkpoints", 10, "The trainer's retention.")
flags.DEFINE_string(
    "work_dir", None, "Where model_dir and the logs go "
    "(default: a new temporary directory).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  trainer_kills = (FLAGS.kills + 1) // 2
  if FLAGS.steps <= trainer_kills:
    raise app.UsageError(f"--steps={FLAGS.steps} leaves no room for "
                         f"{trainer_kills} trainer kills")
  work_dir = FLAGS.work_dir or tempfile.mkdtemp(prefix="crash_campaign_")
  print(
      f"crash campaign in {work_dir}: {FLAGS.kills} kills, seed "
      f"{FLAGS.seed}, {FLAGS.steps} steps", flush=True)
  report = crash_helpers.run_campaign(
      work_dir, trainer_kills=trainer_kills,
      evaluator_kills=FLAGS.kills - trainer_kills, train_steps=FLAGS.steps,
      seed=FLAGS.seed, keep_checkpoints=FLAGS.keep_checkpoints,
      timeout=24 * 3600)
  print("\n".join(report.lines()))
  lost = report.checkpoints_lost + report.results_missing
  print(f"{len(sum(report.kills.values(), []))} kills, {lost} lost")
  return 1 if report.problems else 0


if __name__ == "__main__":
  app.run(main)
