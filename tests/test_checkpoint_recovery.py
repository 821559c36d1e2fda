"""A truncated latest checkpoint: the trainer and the evaluator fall back."""
import glob
import logging
import os

import gin
import pytest

from effnet_gin import configurables
from effnet_gin import cli
from effnet_gin.checkpoints import run_dir
import trainer_helpers

from effnet_gin.evaluation import evaluator as evaluate_lib


def _configure(*params):
  gin.clear_config()
  cli.configure(
      ["demo.gin"],
      list(trainer_helpers.TINY_BINDINGS) + [
          "effnet_gin.train.train.mode = 'train'", "STEPS_PER_LOOP = 2",
          "effnet_gin.train.train.checkpoint_every_steps = 2", *params
      ])


def _truncate_data_file(prefix):
  [data_file] = glob.glob(prefix + ".data-*")
  with open(data_file, "r+b") as f:
    f.truncate(os.path.getsize(data_file) // 2)
  return data_file


def _messages(caplog, level=logging.ERROR):
  return [r.getMessage() for r in caplog.records if r.levelno >= level]


def test_truncated_latest_checkpoint_falls_back_everywhere(tmp_path, caplog):
  model_dir = str(tmp_path)
  _configure("TRAIN_STEPS = 4")
  configurables.train(model_dir=model_dir)
  bad = os.path.join(model_dir, "ckpt-4")
  data_file = _truncate_data_file(bad)
  bad_bytes = open(data_file, "rb").read()

  # The evaluator: the newest checkpoint that restores, the bad one named;
  # continuous eval records step 2, skips the bad final step and stops.
  with caplog.at_level(logging.ERROR):
    results = configurables.evaluate(model_dir=model_dir, newest_only=True)
  assert [r["step"] for r in results] == [2]
  assert any(bad in m and "does not restore" in m for m in _messages(caplog))
  caplog.clear()
  with caplog.at_level(logging.ERROR):
    [result] = configurables.evaluate(model_dir=model_dir, checkpoint=model_dir)
  assert result["step"] == 2
  assert any(bad in m for m in _messages(caplog))
  assert open(data_file, "rb").read() == bad_bytes  # Left in place.

  # The trainer resumes from ckpt-2 and keeps the bad files aside.
  _configure("TRAIN_STEPS = 6")
  caplog.clear()
  with caplog.at_level(logging.ERROR):
    result = configurables.train(model_dir=model_dir)
  assert (result["start_step"], result["step"]) == (2, 6)
  assert any(bad in m and "does not restore" in m for m in _messages(caplog))
  [kept] = glob.glob(
      os.path.join(model_dir, run_dir.UNRESTORABLE_DIR, "*",
                   os.path.basename(data_file)))
  assert open(kept, "rb").read() == bad_bytes
  assert trainer_helpers.latest_step(model_dir) == 6
  assert [
      run_dir.checkpoint_step(p) for p in run_dir.listed_checkpoints(model_dir)
  ] == [2, 4, 6]


def test_no_restorable_checkpoint_refuses_to_start_over(tmp_path):
  model_dir = str(tmp_path)
  _configure("TRAIN_STEPS = 2")
  configurables.train(model_dir=model_dir)
  _truncate_data_file(os.path.join(model_dir, "ckpt-2"))
  _configure("TRAIN_STEPS = 4")
  with pytest.raises(ValueError, match="none of the checkpoints"):
    configurables.train(model_dir=model_dir)
  assert glob.glob(os.path.join(model_dir, "ckpt-2.data-*"))
