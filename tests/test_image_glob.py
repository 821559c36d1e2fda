"""bin/evaluator on a glob of JPEGs with a label file (eval_ckpt_main's mode).

Real JPEG files, a real checkpoint written as the trainer writes them, and
the expected accuracy computed straight from the Keras model with the
checkpoint's EMA weights on each file preprocessed for eval, one at a time.
"""
import json
import os
import subprocess

import gin
import numpy as np
import pytest
import tensorflow as tf

from effnet_gin import configurables
from effnet_gin.data import ImageGlobSource
from effnet_gin.data import preprocessing
from effnet_gin.checkpoints import averaging
from effnet_gin.checkpoints import checkpointing

import eval_helpers
import trainer_helpers

NUM_FILES = 13  # Not a multiple of the batch (8): the last batch is partial.


@pytest.fixture(scope="module", name="images")
def images_fixture(tmp_path_factory):
  """NUM_FILES JPEGs of several sizes and their 0-based label file."""
  directory = tmp_path_factory.mktemp("val")
  rng = np.random.default_rng(0)
  labels = []
  for i in range(NUM_FILES):
    size = (40 + 3 * i, 36 + 5 * (i % 4), 3)
    pixels = rng.integers(0, 256, size, dtype=np.uint8)
    (directory / f"ILSVRC2012_val_{i:08d}.JPEG").write_bytes(
        tf.io.encode_jpeg(pixels).numpy())
    labels.append(int(rng.integers(0, eval_helpers.NUM_CLASSES)))
  (directory / "labels.txt").write_text("".join(f"{l}\n" for l in labels))
  return str(directory / "*.JPEG"), str(directory / "labels.txt"), labels


@pytest.fixture(scope="module", name="checkpoint")
def checkpoint_fixture(tmp_path_factory):
  gin.clear_config()
  eval_helpers.configure("/unused")
  model_dir = str(tmp_path_factory.mktemp("run"))
  path = eval_helpers.ContractWriter(model_dir).save(3)
  gin.clear_config()
  return path


def expected_top_k(checkpoint, pattern, labels):
  """Top-1 and top-5 of the checkpoint's EMA weights, file by file."""
  model = configurables.build_model()
  ema = averaging.ExponentialMovingAverage(model)
  checkpointing.build_checkpoint(model=model,
                                 ema=ema).read(checkpoint).expect_partial()
  ema.copy_to_model()
  top_1 = top_5 = 0
  for path, label in zip(sorted(tf.io.gfile.glob(pattern)), labels):
    image = preprocessing.preprocess_for_eval(tf.io.read_file(path),
                                              eval_helpers.IMAGE_SIZE,
                                              configurables.Preprocessing())
    logits = model(image[None], training=False).numpy()[0]
    ranked = np.argsort(-logits, kind="stable")
    top_1 += int(ranked[0] == label)
    top_5 += int(label in ranked[:5])
  return top_1 / len(labels), top_5 / len(labels)


def test_every_image_is_counted_once_and_recorded_apart(images, checkpoint):
  pattern, labels_file, labels = images
  eval_helpers.configure("/unused")
  gin.parse_config(f"""
      build_dataset.source = @ImageGlobSource()
      ImageGlobSource.pattern = '{pattern}'
      ImageGlobSource.labels_file = '{labels_file}'
  """)
  model_dir = os.path.dirname(checkpoint)
  [result] = eval_helpers.evaluate(model_dir, checkpoint=checkpoint,
                                   image_glob=(pattern, labels_file))
  assert result["num_examples"] == NUM_FILES
  top_1, top_5 = expected_top_k(checkpoint, pattern, labels)
  assert result["top_1_accuracy"] == pytest.approx(top_1)
  assert result["top_5_accuracy"] == pytest.approx(top_5)
  with open(os.path.join(model_dir, "eval_image_glob", "results.jsonl")) as f:
    [recorded] = [json.loads(line) for line in f]
  assert recorded["images"] == pattern
  assert recorded["top_1_accuracy"] == result["top_1_accuracy"]
  # Not the run's validation split: neither its results nor its best.
  assert not os.path.exists(os.path.join(model_dir, "eval", "results.jsonl"))
  assert not os.path.exists(os.path.join(model_dir, "best"))


def test_num_images_and_label_offset(images):
  pattern, labels_file, labels = images
  source = ImageGlobSource(pattern, labels_file, num_images=5, label_offset=-1)
  assert source.num_examples("eval") == 5
  got = [
      int(example["label"])
      for example in source.examples("eval", is_training=False)
  ]
  assert got == [label + 1 for label in labels[:5]]
  assert ImageGlobSource(pattern, labels_file,
                         num_images=-1).num_examples("eval") == NUM_FILES


def test_bad_globs_and_label_files_are_named(images, tmp_path):
  pattern, labels_file, _ = images
  with pytest.raises(FileNotFoundError, match="no image file matches"):
    ImageGlobSource(str(tmp_path / "*.JPEG"), labels_file)
  short = tmp_path / "short.txt"
  short.write_text("1\n2\n")
  with pytest.raises(ValueError, match=f"has 2 labels but .* matches "
                     f"{NUM_FILES} files"):
    ImageGlobSource(pattern, str(short))
  bad = tmp_path / "bad.txt"
  bad.write_text("1\nn01440764\n" + "3\n" * (NUM_FILES - 2))
  with pytest.raises(ValueError, match="line 2: the label 'n01440764' is not"):
    ImageGlobSource(pattern, str(bad))


def evaluator(*args):
  return subprocess.run([
      *trainer_helpers.script("evaluator"), "--gin_file=b0_cpu.gin",
      "--model_name=efficientnet-b0", "--num_label_classes=10",
      "--input_image_size=32", "--width_coefficient=0.25",
      "--depth_coefficient=0.25", "--eval_batch_size=8", *args
  ], capture_output=True, text=True, timeout=300, check=False,
                        env=trainer_helpers.subprocess_env())


def test_the_reference_command_line_runs(images, checkpoint):
  pattern, labels_file, labels = images
  ran = evaluator("--runmode=imagenet",
                  f"--ckpt_dir={os.path.dirname(checkpoint)}",
                  f"--imagenet_eval_glob={pattern}",
                  f"--imagenet_eval_label={labels_file}", "--enable_ema",
                  "--num_images=-1")
  assert ran.returncode == 0, ran.stderr[-3000:]
  result = json.loads(ran.stdout.strip().splitlines()[-1])
  assert result["num_examples"] == NUM_FILES
  assert result["checkpoint"] == checkpoint
  eval_helpers.configure("/unused")
  top_1, _ = expected_top_k(checkpoint, pattern, labels)
  assert result["top_1_accuracy"] == pytest.approx(top_1)


def test_a_label_file_of_the_wrong_length_stops_with_one_line(
    images, checkpoint, tmp_path):
  pattern, _, _ = images
  short = tmp_path / "short.txt"
  short.write_text("1\n")
  ran = evaluator(f"--checkpoint={checkpoint}",
                  f"--imagenet_eval_glob={pattern}",
                  f"--imagenet_eval_label={short}")
  assert ran.returncode == 1
  last = ran.stderr.strip().splitlines()[-1]
  assert last == (f"evaluator: '{short}' has 1 labels but '{pattern}' "
                  f"matches {NUM_FILES} files: one label per file, in sorted "
                  "file order")
