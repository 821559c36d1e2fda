"""The crash campaign at CI size: 8 SIGKILLs of bin/trainer, 8 of bin/evaluator.

The campaign (tests/crash_helpers.py) trains a tiny run to 40 steps with a
checkpoint after every step while bin/evaluator follows it; both are killed
at fault points (`effnet_gin.faults`) and at random times, and restarted.
bench/crash_campaign.py runs the long version.
"""
import os
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


# Records step 1 (top-1 0.5), then step 2 (0.7) with a recorder of model_dir.
_RECORD_TWO = """
import sys
import tensorflow as tf
from effnet_gin.evaluation import records
recorder = records.Recorder(sys.argv[1], chief=True)
for step, top_1 in ((1, 0.5), (2, 0.7)):
  path = tf.train.Checkpoint(step=tf.Variable(step)).write(
      f"{sys.argv[1]}/ckpt-{step}")
  recorder(dict(step=step, checkpoint=path, top_1_accuracy=top_1,
                top_5_accuracy=1.0, loss=1.0), None)
"""


def _killed_recording(model_dir, point):
  """Records two steps, killed at `point`; then deletes ckpt-2's files.

  The deletion is the trainer's retention, before a restarted evaluator can
  evaluate ckpt-2 again; `Recorder` then stands for that evaluator.
  """
  killed = subprocess.run(
      [sys.executable, "-c", _RECORD_TWO, model_dir], capture_output=True,
      text=True, timeout=120, check=False,
      env=trainer_helpers.subprocess_env(**{faults.ENV_VAR: point}))
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  for name in os.listdir(model_dir):
    if name.startswith("ckpt-2."):
      os.remove(os.path.join(model_dir, name))
  records.Recorder(model_dir, chief=True).close()
  return records.ResultsLog(model_dir).read(), records.BestCheckpoint(
      model_dir).read()


def _best_files(model_dir):
  return sorted(os.listdir(os.path.join(model_dir, "best")))


def test_killed_while_archiving_a_best_then_its_checkpoint_deleted(tmp_path):
  # Killed between naming ckpt-2 in best/checkpoint and best_result.json.
  model_dir = str(tmp_path)
  results, best = _killed_recording(model_dir, "best_copied:2")
  assert [r["step"] for r in results] == [1]
  assert best["step"] == 1
  best_dir = os.path.join(model_dir, "best")
  assert tf.train.latest_checkpoint(best_dir) == best["checkpoint"]
  assert _best_files(model_dir) == [
      "best_result.json", "checkpoint", "ckpt-1.data-00000-of-00001",
      "ckpt-1.index"
  ]


def test_killed_between_archiving_a_best_and_recording_it(tmp_path):
  model_dir = str(tmp_path)
  results, best = _killed_recording(model_dir, "result_offered:2")
  assert results == [
      dict(step=step, checkpoint=os.path.join(model_dir, f"ckpt-{step}"),
           top_1_accuracy=top_1, top_5_accuracy=1.0, loss=1.0)
      for step, top_1 in ((1, 0.5), (2, 0.7))
  ]
  assert best["step"] == 2
  assert tf.train.latest_checkpoint(os.path.join(model_dir,
                                                 "best")) == best["checkpoint"]
  assert crash_helpers.best_problems(model_dir, results) == []
