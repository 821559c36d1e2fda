"""Runs the data tools in bin/ as a user would."""
import os
import subprocess
import sys

import tensorflow as tf

from effnet_gin import data

BIN = os.path.join(os.path.dirname(os.path.dirname(__file__)), "bin")


def _run(script, *flags):
  return subprocess.run(
      [sys.executable, os.path.join(BIN, script), *flags], capture_output=True,
      text=True, timeout=300, check=False)


def test_make_fake_imagenet_and_images_to_tfrecords(tmp_path):
  fake = tmp_path / "fake"
  result = _run("make_fake_imagenet", f"--output_dir={fake}",
                "--kind=learnable", "--num_train=12", "--num_eval=6",
                "--num_classes=3", "--image_size=16", "--train_shards=3",
                "--eval_shards=2")
  assert result.returncode == 0, result.stderr
  source = data.TFRecordSource(str(fake))
  assert len(source.files("train")) == 3
  assert source.num_examples("eval") == 6
  labels = [int(e["label"]) for e in source.examples("eval", is_training=False)]
  assert set(labels) <= {0, 1, 2}

  folder = tmp_path / "folder"
  for name in ("dog", "cat"):
    os.makedirs(folder / name)
    (folder / name / "a.jpg").write_bytes(
        tf.io.encode_jpeg(tf.zeros([8, 8, 3], tf.uint8)).numpy())
  records = tmp_path / "records"
  result = _run("images_to_tfrecords", f"--input_dir={folder}",
                f"--output_dir={records}", "--num_shards=2")
  assert result.returncode == 0, result.stderr
  assert (records / "labels.txt").read_text() == "cat\ndog\n"
  assert sorted(os.listdir(records)) == [
      "labels.txt", "train-00000-of-00002", "train-00001-of-00002"
  ]


def test_make_fake_imagenet_rejects_bad_flags(tmp_path):
  result = _run("make_fake_imagenet", f"--output_dir={tmp_path}",
                "--kind=learnable", "--num_classes=100", "--num_train=2",
                "--num_eval=2", "--train_shards=1", "--eval_shards=1")
  assert result.returncode != 0
  assert "num_classes=100" in result.stderr
