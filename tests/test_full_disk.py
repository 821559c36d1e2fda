"""A full disk stops each tool with one line and loses nothing written before.

Real full disks: a small tmpfs is mounted for each test (the tests run as
root, as on CI; without the permission to mount they are skipped), a filler
file takes all but a little of its space, and bin/trainer, bin/evaluator and
bin/exporter run as processes against it. After the failure the filler is
deleted and the same command resumes and finishes.
"""
import os
import subprocess

import pytest
import tensorflow as tf

from effnet_gin.checkpoints import run_dir
from trainer_helpers import latest_step
from trainer_helpers import run_trainer
from trainer_helpers import script
from trainer_helpers import subprocess_env
from trainer_helpers import TINY_BINDINGS

# What the filler leaves free: room for the small files a run writes (the
# lock, configs, summaries), not for a checkpoint (about 640 KB here).
_LEFT_FREE = 96 * 1024
_EVERY_STEP = "effnet_gin.train.train.checkpoint_every_steps = 1"


@pytest.fixture
def disk(tmp_path):
  """A 16 MB tmpfs mounted at tmp_path/disk for the test, then unmounted."""
  mount_point = tmp_path / "disk"
  mount_point.mkdir()
  mounted = subprocess.run(
      ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs",
       str(mount_point)], capture_output=True, text=True, check=False)
  if mounted.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
  try:
    yield mount_point
  finally:
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(disk, left_free=_LEFT_FREE):
  """Takes all but `left_free` bytes of `disk` with a filler file."""
  filler = disk / "filler"
  free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
  with open(filler, "wb") as f:
    f.write(b"\0" * max(0, free - left_free))
  return filler


def _one_line_failure(process, tool):
  """The last stderr line of a tool that failed with one line."""
  assert process.returncode == 1, process.stderr[-3000:]
  assert "Traceback" not in process.stderr, process.stderr[-3000:]
  last = process.stderr.strip().splitlines()[-1]
  assert last.startswith(f"{tool}: "), process.stderr[-3000:]
  return last


def _restores(prefix):
  """Reads every tensor of checkpoint `prefix` (raises if it is damaged)."""
  reader = tf.train.load_checkpoint(prefix)
  for name in reader.get_variable_to_shape_map():
    reader.get_tensor(name)
  return True


def _run(tool, *args):
  command = script(tool) + ["--gin_file=demo.gin"]
  command += [f"--gin_param={binding}" for binding in TINY_BINDINGS]
  return subprocess.run(command + list(args), env=subprocess_env(),
                        capture_output=True, text=True, timeout=300,
                        check=False)


def test_a_full_disk_stops_the_trainer_and_a_rerun_resumes(disk):
  model_dir = disk / "run"
  first = run_trainer(model_dir, "TRAIN_STEPS = 2", _EVERY_STEP)
  assert first.returncode == 0, first.stderr[-3000:]
  filler = _fill(disk)

  full = run_trainer(model_dir, "TRAIN_STEPS = 4", _EVERY_STEP)
  line = _one_line_failure(full, "trainer")
  assert line.startswith(f"trainer: no space left in model_dir {model_dir} "
                         "to save checkpoint ckpt-3 (a checkpoint takes "
                         "about "), line
  assert "the checkpoints up to ckpt-2 are intact" in line
  # The state file lists only complete checkpoints, all of which restore,
  # and nothing of the failed save is left taking space.
  assert run_dir.listed_checkpoints(
      str(model_dir)) == [f"{model_dir}/ckpt-1", f"{model_dir}/ckpt-2"]
  assert all(_restores(f"{model_dir}/ckpt-{step}") for step in (1, 2))
  assert not [name for name in os.listdir(model_dir) if "ckpt-3" in name]
  assert not (model_dir / run_dir.RUN_LOCK_FILE).exists()

  filler.unlink()
  rerun = run_trainer(model_dir, "TRAIN_STEPS = 4", _EVERY_STEP)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f"Resumed from {model_dir}/ckpt-2 at step 2" in rerun.stderr
  assert latest_step(str(model_dir)) == 4
  assert _restores(f"{model_dir}/ckpt-4")


def test_a_full_disk_stops_the_evaluator_unrecorded_and_a_rerun_records(disk):
  model_dir = disk / "run"
  # No in-process evaluation: bin/evaluator is the one that records.
  trained = run_trainer(model_dir, "TRAIN_STEPS = 2", _EVERY_STEP,
                        "effnet_gin.train.train.mode = 'train'")
  assert trained.returncode == 0, trained.stderr[-3000:]
  filler = _fill(disk)

  full = _run("evaluator", f"--model_dir={model_dir}")
  line = _one_line_failure(full, "evaluator")
  assert line.startswith(f"evaluator: no space left in model_dir {model_dir} "
                         f"to archive {model_dir}/ckpt-2 in best/"), line
  results = model_dir / run_dir.EVAL_DIR / run_dir.RESULTS_FILE
  assert not results.exists() or "ckpt-2" not in results.read_text()
  best = model_dir / run_dir.BEST_DIR
  assert not best.exists() or not os.listdir(best), os.listdir(best)

  filler.unlink()
  rerun = _run("evaluator", f"--model_dir={model_dir}")
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  lines = results.read_text().splitlines()
  assert len(lines) == 1 and '"step": 2' in lines[0], lines
  assert _restores(str(best / "ckpt-2"))


def test_a_full_disk_leaves_the_previous_export_in_place(disk, tmp_path):
  model_dir = tmp_path / "run"
  trained = run_trainer(model_dir, "TRAIN_STEPS = 2", _EVERY_STEP)
  assert trained.returncode == 0, trained.stderr[-3000:]
  export_dir = disk / "export"
  first = _run("exporter", f"--model_dir={model_dir}",
               f"--export_dir={export_dir}", f"--checkpoint={model_dir}/ckpt-1")
  assert first.returncode == 0, first.stderr[-3000:]
  before = {
      name: (export_dir / name).read_bytes()
      for name in ("saved_model.pb", "metadata.json")
  }
  filler = _fill(disk, left_free=32 * 1024)

  args = (f"--model_dir={model_dir}", f"--export_dir={export_dir}",
          f"--checkpoint={model_dir}/ckpt-2", "--overwrite")
  full = _run("exporter", *args)
  line = _one_line_failure(full, "exporter")
  assert line.startswith(f"exporter: no space left to export to {export_dir} "
                         "(an export takes about "), line
  assert "the previous export in" in line
  assert {name: (export_dir / name).read_bytes() for name in before} == before
  assert sorted(os.listdir(disk)) == ["export", "filler"]  # No staging left.

  filler.unlink()
  rerun = _run("exporter", *args)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "ckpt-2" in (export_dir / "metadata.json").read_text()
  assert tf.saved_model.load(str(export_dir)).signatures["serving_default"]
