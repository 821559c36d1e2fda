"""The crash campaign at CI size: 8 SIGKILLs of bin/trainer, 8 of bin/evaluator.

The campaign (tests/crash_helpers.py) trains a tiny run to 40 steps with a
checkpoint after every step while bin/evaluator follows it; both are killed
at fault points (`effnet_gin.faults`) and at random times, and restarted.
bench/crash_campaign.py runs the long version.
"""
import signal
import subprocess
import sys

import pytest
import tensorflow as tf

from effnet_gin import faults
from effnet_gin.evaluation import records
import crash_helpers
import trainer_helpers

TRAIN_STEPS = 40


@pytest.mark.slow  # 18 processes, each tracing the tiny model.
def test_sigkills_lose_no_checkpoint_and_no_result(tmp_path):
  report = crash_helpers.run_campaign(str(tmp_path), trainer_kills=8,
                                      evaluator_kills=8,
                                      train_steps=TRAIN_STEPS, seed=21)
  summary = "\n".join(report.lines())
  assert report.problems == [], summary
  assert len(report.kills["trainer"]) == 8, summary
  assert len(report.kills["evaluator"]) == 8, summary
  assert report.restarts == 16
  # Inside a save, and between the two halves of recording a result.
  assert "at checkpoint_written:1" in report.kills["trainer"] or (
      "at checkpoint_written:2" in report.kills["trainer"])
  assert "at best_copied:1" in report.kills["evaluator"]
  assert any(
      k.startswith("at result_offered") for k in report.kills["evaluator"])
  # Every restart that got as far as restoring resumed from the newest
  # checkpoint its killed predecessor had listed.
  assert report.resumes and all(
      expected == resumed for expected, resumed in report.resumes), summary
  assert report.final_step == TRAIN_STEPS
  assert (report.checkpoints_lost, report.results_duplicated,
          report.results_missing) == (0, 0, 0), summary
  assert report.results >= 1


def _reach(point, times, spec):
  """Runs a Python that reaches `point` `times` times under `spec`."""
  code = ("import sys; from effnet_gin import faults\n"
          f"for i in range({times}):\n"
          f"  faults.point({point!r}); print(i, flush=True)\n")
  return subprocess.run(
      [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
      check=False, env=trainer_helpers.subprocess_env(**{faults.ENV_VAR: spec}))


def test_a_fault_point_kills_its_process_at_the_nth_arrival():
  killed = _reach("best_copied", 5, "best_copied:3")
  assert killed.returncode == -signal.SIGKILL
  assert killed.stdout.split() == ["0", "1"]
  other = _reach("best_copied", 3, "checkpoint_written")
  assert (other.returncode, other.stdout.split()) == (0, ["0", "1", "2"])
  bad = _reach("best_copied", 1, "best_copies:1")
  assert bad.returncode == 1
  assert "EFFNET_GIN_KILL_AT='best_copies:1': unknown point" in bad.stderr
  assert "must be a positive integer" in _reach("best_copied", 1,
                                                "best_copied:0").stderr


# Offers ckpt-1 (top-1 0.5), then ckpt-2 (0.7) to model_dir/best/.
_OFFER_TWO = """
import sys
import tensorflow as tf
from effnet_gin.evaluation import records
for step, top_1 in ((1, 0.5), (2, 0.7)):
  path = tf.train.Checkpoint(step=tf.Variable(step)).write(
      f"{sys.argv[1]}/ckpt-{step}")
  records.BestCheckpoint(sys.argv[1]).offer(
      dict(step=step, checkpoint=path, top_1_accuracy=top_1), None)
"""


def test_a_kill_while_archiving_a_best_whose_checkpoint_is_then_deleted(
    tmp_path):
  model_dir = str(tmp_path)
  killed = subprocess.run(
      [sys.executable, "-c", _OFFER_TWO, model_dir], capture_output=True,
      text=True, timeout=120, check=False,
      env=trainer_helpers.subprocess_env(**{faults.ENV_VAR: "best_copied:2"}))
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  best_dir = tmp_path / "best"
  # Killed between naming ckpt-2 in best/ and recording it: ckpt-2 is never
  # recorded, and the trainer's retention deletes it before a restarted
  # evaluator could evaluate it again.
  for path in tmp_path.glob("ckpt-2.*"):
    path.unlink()
  records.Recorder(model_dir, chief=True).close()  # A restarted evaluator.
  record = records.BestCheckpoint(model_dir).read()
  assert record["step"] == 1
  assert tf.train.latest_checkpoint(str(best_dir)) == record["checkpoint"]
  assert sorted(p.name for p in best_dir.iterdir()) == [
      "best_result.json", "checkpoint", "ckpt-1.data-00000-of-00001",
      "ckpt-1.index"
  ]
