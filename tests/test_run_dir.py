"""The run directory's names and helpers (`effnet_gin.checkpoints.run_dir`)."""
import json
import os

import pytest

from effnet_gin.checkpoints import run_dir


def _layout_names():
  return [
      value for name, value in vars(run_dir).items()
      if name.endswith(("_FILE", "_DIR", "_PREFIX")) and name.isupper()
  ]


@pytest.mark.parametrize("value", _layout_names())
def test_every_name_is_in_the_documented_tree(value):
  assert value in run_dir.__doc__


def test_checkpoint_names_round_trip():
  path = run_dir.checkpoint_path("gs://bucket/run/", 1251)
  assert path == "gs://bucket/run/ckpt-1251"
  assert run_dir.checkpoint_step(path) == 1251
  assert run_dir.checkpoint_step("gs://bucket/run/model.ckpt") is None
  assert run_dir.is_own_checkpoint("gs://bucket/run/", path)
  assert not run_dir.is_own_checkpoint("gs://bucket/run",
                                       "gs://bucket/run/best/ckpt-1251")
  assert not run_dir.is_own_checkpoint("gs://bucket/run", "gs://bucket/ckpt-1")


def test_write_text_replaces_the_file_and_leaves_no_temporary(tmp_path):
  directory = str(tmp_path / "new" / "eval")
  run_dir.write_text(directory, "notes", "first")
  run_dir.write_text(directory, "notes", "second")
  assert os.listdir(directory) == ["notes"]
  assert run_dir.read_text(directory, "notes") == "second"
  assert run_dir.read_text(directory, "absent") is None


def test_the_run_file_records_train_steps_as_plain_data(tmp_path):
  model_dir = str(tmp_path)
  run_dir.write_run_config(model_dir, command="bin/trainer",
                           config="TRAIN_STEPS = 7\n", train_steps=218949)
  with open(tmp_path / "run.json") as f:
    assert json.load(f) == {"train_steps": 218949}
  assert run_dir.run_train_steps(model_dir) == 218949
  assert run_dir.read_text(model_dir, run_dir.COMMAND_FILE) == "bin/trainer"


def test_run_train_steps_without_a_run_file_is_none(tmp_path):
  assert run_dir.run_train_steps(str(tmp_path)) is None


def test_a_damaged_run_file_is_named(tmp_path):
  (tmp_path / "run.json").write_text("{\"steps\": 3}")
  with pytest.raises(ValueError, match="run.json"):
    run_dir.run_train_steps(str(tmp_path))
