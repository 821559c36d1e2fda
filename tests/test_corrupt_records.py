"""Corrupt JPEGs in training shards: stop by default; with skip_corrupt,
skip and count them, and stop past max_skipped_fraction naming the shard.

Real TFRecord shards whose records hold truncated JPEG bytes; the counts are
read from the pipeline in process and from bin/trainer's log, TensorBoard
summaries and last line as a process.
"""
import glob
import subprocess

import numpy as np
import pytest
import tensorflow as tf

import data_helpers
from effnet_gin import data
from effnet_gin.data import corrupt_records
from trainer_helpers import script
from trainer_helpers import subprocess_env
from trainer_helpers import TINY_BINDINGS

_BAD_LABEL = 10  # Stored (1-based) label of the corrupt records: class 9.


def _write_shards(directory, num_good, num_bad):
  """train-00000 all good, train-00001 with `num_bad` corrupt; validation."""
  image = tf.io.encode_jpeg(tf.fill([40, 40, 3],
                                    tf.constant(90, tf.uint8))).numpy()
  good = [
      data.serialize_imagenet_example(image, i % 9 + 1) for i in range(num_good)
  ]
  bad = [data.serialize_imagenet_example(image[:60], _BAD_LABEL)] * num_bad
  data_helpers.write_records(directory / "train-00000-of-00002", good)
  data_helpers.write_records(directory / "train-00001-of-00002", good[:4] + bad)
  data_helpers.write_records(directory / "validation-00000-of-00001", good[:8])
  return str(directory / "train-00001-of-00002")


def test_skipped_records_are_counted_with_their_shard(tmp_path):
  bad_shard = _write_shards(tmp_path, num_good=12, num_bad=4)
  tally = corrupt_records.PROCESS_TALLY
  tally.reset()
  dataset = data.build_dataset(split="train", global_batch_size=4,
                               image_size=16, num_classes=10,
                               source=data.TFRecordSource(str(tmp_path)),
                               skip_corrupt=True, max_skipped_fraction=0.5)
  labels = np.concatenate([b[1].numpy() for b in dataset.take(16)])
  assert _BAD_LABEL - 1 not in labels  # No placeholder got through.
  assert tally.active and tally.skipped >= 4
  assert set(tally.shards) == {bad_shard}
  assert tally.read >= 64 + tally.skipped
  tally.check()  # 4 in 20 is under half.
  tally.reset()


def test_the_default_still_stops_at_a_corrupt_jpeg(tmp_path):
  _write_shards(tmp_path, num_good=4, num_bad=1)
  dataset = data.build_dataset(split="train", global_batch_size=9,
                               image_size=16, num_classes=10,
                               source=data.TFRecordSource(str(tmp_path)))
  with pytest.raises(tf.errors.InvalidArgumentError, match="JPEG"):
    list(dataset.take(2))


def test_too_many_is_named_in_one_line():
  tally = corrupt_records.SkipTally()
  tally.activate(0.01)
  tally._note_read(90)  # pylint: disable=protected-access
  tally._note_skipped(tf.constant(b"/d/train-7"))  # pylint: disable=protected-access
  tally.check()  # One is always tolerated.
  tally._note_skipped(tf.constant(b"/d/train-7"))  # pylint: disable=protected-access
  with pytest.raises(corrupt_records.TooManyCorruptRecords) as error:
    tally.check()
  assert str(error.value).startswith(
      "2 of 92 training records (2.17%) did not decode, over "
      "build_dataset.max_skipped_fraction = 0.01; in /d/train-7 (2)")


def _trainer(data_dir, model_dir, *bindings):
  command = script("trainer") + ["--gin_file=demo.gin"]
  command += [
      f"--gin_param={b}" for b in TINY_BINDINGS + [
          "effnet_gin.train.train.mode = 'train'",
          "effnet_gin.data.build_dataset.skip_corrupt = True", *bindings
      ]
  ]
  return subprocess.Popen(
      command + [f"--data_dir={data_dir}", f"--model_dir={model_dir}"],
      env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)


def _scalars(events_dir, tag):
  values = []
  for path in glob.glob(f"{events_dir}/events.out.tfevents.*"):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == tag:
          values.append(float(tf.make_ndarray(value.tensor)))
  return values


def test_the_trainer_counts_skips_and_stops_past_the_fraction(tmp_path):
  few, many = tmp_path / "few", tmp_path / "many"
  few.mkdir()
  many.mkdir()
  _write_shards(few, num_good=60, num_bad=1)
  bad_shard = _write_shards(many, num_good=8, num_bad=24)
  tolerant = _trainer(
      few, tmp_path / "run_few", "TRAIN_STEPS = 4",
      "effnet_gin.data.build_dataset.max_skipped_fraction = "
      "0.5")
  strict = _trainer(
      many, tmp_path / "run_many", "TRAIN_STEPS = 50",
      "effnet_gin.data.build_dataset.max_skipped_fraction = "
      "0.1")
  _, tolerant_log = tolerant.communicate(timeout=300)
  _, strict_log = strict.communicate(timeout=300)

  assert tolerant.returncode == 0, tolerant_log[-3000:]
  assert "training records skipped so far" in tolerant_log
  skipped = _scalars(tmp_path / "run_few" / "train", "skipped_records")
  assert len(skipped) == 4 and skipped[-1] >= 1, skipped

  assert strict.returncode == 1, strict_log[-3000:]
  assert "Traceback" not in strict_log
  last = strict_log.strip().splitlines()[-1]
  assert last.startswith("trainer: "), strict_log[-3000:]
  assert "training records" in last and "did not decode, over " \
      "build_dataset.max_skipped_fraction = 0.1; in " in last, last
  assert f"{bad_shard} (" in last
