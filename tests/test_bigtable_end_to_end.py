"""bin/trainer and bin/evaluator reading Cloud Bigtable, on the emulator.

Real JPEG TFRecords are loaded into the emulator with the loader the
`bin/tfrecords_to_bigtable` script uses; then `bin/trainer` trains the shipped
demo.gin, shrunk to a tiny model, for a few steps from the table, and
`bin/evaluator` evaluates the final checkpoint from the same table. Both
select the source only through the `--bigtable_*` shortcut flags.
"""
import json
import os
import subprocess
import sys

from bigtable_emulator import bigtable_emulator  # noqa: F401 (fixture)
from bigtable_emulator import load_dataset_into_emulator
import data_helpers
import pytest
import trainer_helpers

pytestmark = pytest.mark.filterwarnings(
    "ignore:Connecting to Bigtable emulator:RuntimeWarning")

TABLE = "end_to_end"
NUM_TRAIN = 64
NUM_EVAL = 24
TRAIN_STEPS = 4

# The tiny bindings minus their RandomNoiseSource: `--gin_param`s are applied
# after the shortcut flags, so `build_dataset.source = @RandomNoiseSource()`
# would override the source that `--bigtable_instance` selects.
BINDINGS = [
    b for b in trainer_helpers.TINY_BINDINGS if "RandomNoiseSource" not in b
]
BINDINGS += [
    f"NUM_EVAL_IMAGES = {NUM_EVAL}", f"TRAIN_STEPS = {TRAIN_STEPS}",
    "effnet_gin.train.train.mode = 'train'"
]


@pytest.fixture(scope="module")
def bigtable_table(bigtable_emulator, tmp_path_factory):  # noqa: F811
  """Loads 64 train / 24 eval 32 px JPEGs of 10 classes into TABLE."""
  data_dir = tmp_path_factory.mktemp("tfrecords")
  data_helpers.write_imagenet_tfrecords(str(data_dir), num_train=NUM_TRAIN,
                                        num_eval=NUM_EVAL, num_classes=10,
                                        image_size=32)
  load_dataset_into_emulator(bigtable_emulator, data_dir, table=TABLE)
  return TABLE


def run_bin(script, model_dir, emulator, no_tfrecords_dir):
  """Runs bin/<script> on demo.gin reading TABLE; returns CompletedProcess."""
  command = [
      sys.executable,
      os.path.join(trainer_helpers.BIN, script),
      "--gin_file=demo.gin",
      f"--model_dir={model_dir}",
      f"--bigtable_project={emulator.project}",
      f"--bigtable_instance={emulator.instance}",
      f"--bigtable_table={TABLE}",
  ]
  # demo.gin's TFRecordSource is pointed at an empty directory, so a run that
  # read anything but Bigtable would fail instead of passing by accident.
  params = BINDINGS + [
      f"effnet_gin.data.TFRecordSource.data_dir = '{no_tfrecords_dir}'"
  ]
  command += [f"--gin_param={p}" for p in params]
  return subprocess.run(command,
                        env=emulator.env(trainer_helpers.subprocess_env()),
                        capture_output=True, text=True, timeout=300,
                        check=False)


def test_trainer_then_evaluator_from_bigtable(
    bigtable_emulator,  # noqa: F811
    bigtable_table,
    tmp_path):
  del bigtable_table  # Loaded; the processes read it by name.
  model_dir = str(tmp_path / "model")
  no_tfrecords_dir = tmp_path / "no_tfrecords"
  no_tfrecords_dir.mkdir()

  trained = run_bin("trainer", model_dir, bigtable_emulator, no_tfrecords_dir)
  assert trained.returncode == 0, trained.stderr[-4000:]
  assert trainer_helpers.latest_step(model_dir) == TRAIN_STEPS
  assert os.path.exists(os.path.join(model_dir, f"ckpt-{TRAIN_STEPS}.index"))
  with open(os.path.join(model_dir, "operative_config.gin")) as f:
    operative = f.read()
  assert f"BigtableSource.instance = '{bigtable_emulator.instance}'" in operative
  assert f"BigtableSource.table = '{TABLE}'" in operative

  evaluated = run_bin("evaluator", model_dir, bigtable_emulator,
                      no_tfrecords_dir)
  assert evaluated.returncode == 0, evaluated.stderr[-4000:]
  with open(os.path.join(model_dir, "eval", "results.jsonl")) as f:
    results = [json.loads(line) for line in f if line.strip()]
  final = results[-1]
  assert final["step"] == TRAIN_STEPS
  assert final["num_examples"] == NUM_EVAL
