"""The TFRecord -> Bigtable loader and its bin script, on the emulator."""
import os
import shutil
import subprocess
import sys

from bigtable_emulator import bigtable_emulator  # noqa: F401 (fixture)
from bigtable_emulator import load_dataset_into_emulator
import data_helpers
from google.cloud import bigtable as bigtable_admin
import pytest
import tensorflow as tf
from test_bigtable import NUM_EVAL
from test_bigtable import NUM_TRAIN
from test_bigtable import write_jpeg_tfrecords

# The client announces the emulator once per client it creates.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Connecting to Bigtable emulator:RuntimeWarning")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("imagenet")
  write_jpeg_tfrecords(str(directory))
  return str(directory)


def table_contents(emulator, table):
  """{row key: [every cell value, all versions]} of the whole table."""
  admin = bigtable_admin.Client(project=emulator.project, admin=True)
  rows = admin.instance(emulator.instance).table(table).read_rows()
  return {
      row.row_key: [
          cell.value
          for cells in row.cells.values()
          for versions in cells.values()
          for cell in versions
      ] for row in rows
  }


def expected_contents(data_dir):
  expected = {}
  for prefix, pattern in (("train_", "train-*"), ("validation_",
                                                  "validation-*")):
    records = data_helpers.read_records(data_dir, pattern)
    for index, record in enumerate(records):
      expected[f"{prefix}{index:010d}".encode()] = [record]
  return expected


def test_load_writes_reference_rows_and_rerun_writes_nothing(
    bigtable_emulator, data_dir):  # noqa: F811
  first = load_dataset_into_emulator(bigtable_emulator, data_dir, table="twice",
                                     batch_size=7)
  assert {
      prefix: (load.num_rows, load.num_written)
      for prefix, load in first.items()
  } == {
      "train_": (NUM_TRAIN, NUM_TRAIN),
      "validation_": (NUM_EVAL, NUM_EVAL)
  }
  second = load_dataset_into_emulator(bigtable_emulator, data_dir,
                                      table="twice", batch_size=7)
  assert [load.num_written for load in second.values()] == [0, 0]
  assert table_contents(bigtable_emulator,
                        "twice") == expected_contents(data_dir)


def test_interrupted_load_resumes_without_duplicates(bigtable_emulator,
                                                     data_dir,
                                                     tmp_path):  # noqa: F811
  # A crash mid-load: the third train file of a copy is truncated.
  broken_dir = tmp_path / "broken"
  shutil.copytree(data_dir, broken_dir)
  broken_file = sorted(broken_dir.glob("train-*"))[2]
  broken_file.write_bytes(broken_file.read_bytes()[:100])
  with pytest.raises(tf.errors.DataLossError, match=broken_file.name):
    load_dataset_into_emulator(bigtable_emulator, broken_dir, table="crashed",
                               batch_size=10)
  # A batch that was only partly applied leaves a gap below written rows.
  admin = bigtable_admin.Client(project=bigtable_emulator.project, admin=True)
  table = admin.instance(bigtable_emulator.instance).table("crashed")
  row = table.direct_row(b"train_0000000012")
  row.delete()
  assert table.mutate_rows([row])[0].code == 0
  partial = table_contents(bigtable_emulator, "crashed")
  assert len(partial) == 39 and b"train_0000000012" not in partial

  resumed = load_dataset_into_emulator(bigtable_emulator, data_dir,
                                       table="crashed", batch_size=10)
  assert resumed["train_"].num_written == NUM_TRAIN - 12
  assert resumed["validation_"].num_written == NUM_EVAL
  assert table_contents(bigtable_emulator,
                        "crashed") == expected_contents(data_dir)


def test_missing_files_are_named(bigtable_emulator, tmp_path):  # noqa: F811
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    load_dataset_into_emulator(bigtable_emulator, tmp_path, table="none")


def test_bin_script_loads_with_flags(bigtable_emulator, data_dir):  # noqa: F811
  result = subprocess.run([
      sys.executable,
      os.path.join(REPO, "bin",
                   "tfrecords_to_bigtable"), f"--data_dir={data_dir}",
      f"--bigtable_project={bigtable_emulator.project}",
      f"--bigtable_instance={bigtable_emulator.instance}",
      "--bigtable_table=from_bin", "--eval_pattern=validation-00000-*",
      "--batch_size=16"
  ], env=bigtable_emulator.env(), capture_output=True, text=True, timeout=300,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "rows in the table" in result.stderr
  keys = set(table_contents(bigtable_emulator, "from_bin"))
  num_eval_in_first_file = len(
      data_helpers.read_records(data_dir, "validation-00000-*"))
  assert len(keys) == NUM_TRAIN + num_eval_in_first_file
