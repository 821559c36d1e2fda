"""bin/import_checkpoint, evaluator and exporter on an EdgeTPU checkpoint.

The EdgeTPU family has a background class 0: an imported model evaluated on
ImageNet-format data (labels 1..N on disk) must be scored against labels
1..N, which the test checks against its own count of the model's answers.
"""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from effnet_gin import data
from effnet_gin.data import parse_imagenet_example
from effnet_gin.data import serialize_imagenet_example
from effnet_gin.data import write_fake_imagenet
from effnet_gin.model import build_model
from effnet_gin.checkpoints import load_pretrained
from effnet_gin.model import specs
from effnet_gin.checkpoints import importer
from effnet_gin.serving import runtimes
import trainer_helpers

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures",
                        "reference_checkpoints")
EDGETPU = os.path.join(FIXTURES, "tiny_edgetpu_s")
VARIANT = "efficientnet-edgetpu-S"
NUM_LABELS = 9  # The fixture's 10 classes are background + 9.


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp("imported") / "edgetpu")
  output = trainer_helpers.run_logged(
      trainer_helpers.script("import_checkpoint") +
      [f"--source={EDGETPU}", f"--model_dir={model_dir}", "--image_size=64"],
      model_dir + ".log")
  assert f"{VARIANT} (reference format, EMA weights" in output
  return model_dir


def test_import_records_the_variant_classes_and_normalisation(imported):
  with open(f"{imported}/model.gin") as f:
    bindings = f.read()
  for line in (f"MODEL_NAME = '{VARIANT}'", "NUM_CLASSES = 10",
               "IMAGE_SIZE = 64", "build_model.input_normalization = 'lite'",
               "build_model.width_coefficient = 0.1",
               "build_model.depth_coefficient = 0.5"):
    assert line + "\n" in bindings


def rewrite_labels(data_dir, labels_for):
  """Rewrites the validation records with the labels `labels_for` gives."""
  path, = tf.io.gfile.glob(os.path.join(data_dir, "validation-*"))
  examples = [
      parse_imagenet_example(r, label_offset=0)
      for r in tf.data.TFRecordDataset(path)
  ]
  labels = labels_for([e["image"] for e in examples])
  with tf.io.TFRecordWriter(path) as writer:
    for example, label in zip(examples, labels):
      writer.write(
          serialize_imagenet_example(example["image"].numpy(), int(label)))


def float_images(data_dir, images_count):
  """The eval split as the eval pipeline feeds it, at the variant's resize."""
  preprocessing = data.Preprocessing(
      resize_method=specs.default_resize_method(VARIANT))
  dataset = data.build_dataset(split="eval", global_batch_size=images_count,
                               image_size=64,
                               source=data.TFRecordSource(data_dir),
                               num_classes=10, preprocessing=preprocessing)
  (images, _, _), = list(dataset)
  return images.numpy()


def model_logits(data_dir, images_count):
  """The fixture model's logits on the eval split."""
  model = build_model(VARIANT, num_classes=10, width_coefficient=0.1,
                      depth_coefficient=0.5, image_size=64)
  load_pretrained(model, EDGETPU)
  return model(float_images(data_dir, images_count), training=False).numpy()


def test_evaluator_scores_an_edgetpu_import_with_its_background_class(
    imported, tmp_path):
  data_dir = str(tmp_path / "data")
  write_fake_imagenet(data_dir, num_train=4, num_eval=12,
                      num_classes=NUM_LABELS, image_size=72, train_shards=1,
                      eval_shards=1, kind="learnable")
  logits = model_logits(data_dir, 12)
  # Disk label L (1..9) is the model's class L: give each image the model's
  # best non-background class, so it is right unless it answers 0.
  disk_labels = np.argmax(logits[:, 1:], axis=-1) + 1
  rewrite_labels(data_dir, lambda _: disk_labels)
  answers = np.argmax(logits, axis=-1)
  with_background = np.mean(answers == disk_labels)
  without = np.mean(answers == disk_labels - 1)
  assert with_background != without
  trainer_helpers.run_logged(
      trainer_helpers.script("evaluator") + [
          "--gin_file=b0_cpu.gin", f"--gin_file={imported}/model.gin",
          f"--model_dir={imported}", f"--data_dir={data_dir}",
          f"--checkpoint={imported}/ckpt-0", "--gin_param=NUM_EVAL_IMAGES = 12",
          "--gin_param=EVAL_BATCH_SIZE = 4",
          f"--gin_param=effnet_gin.data.build_dataset.num_labels = {NUM_LABELS}",
          "--gin_param=effnet_gin.train.build_strategy.kind = 'cpu'"
      ], str(tmp_path / "evaluator.log"))
  with open(os.path.join(imported, "eval", "results.jsonl")) as f:
    result = json.loads(f.readline())
  assert result["num_examples"] == 12
  assert result["top_1_accuracy"] == pytest.approx(with_background)


def test_int8_export_of_the_edgetpu_import_agrees_with_float(
    imported, tmp_path):
  data_dir = str(tmp_path / "data")
  write_fake_imagenet(data_dir, num_train=4, num_eval=24,
                      num_classes=NUM_LABELS, image_size=72, train_shards=1,
                      eval_shards=1, kind="learnable")
  export_dir = str(tmp_path / "int8")
  trainer_helpers.run_logged(
      trainer_helpers.script("exporter") + [
          "--gin_file=edgetpu_s_tpu.gin", f"--gin_file={imported}/model.gin",
          f"--model_dir={imported}", f"--data_dir={data_dir}",
          f"--checkpoint={imported}/ckpt-0", f"--export_dir={export_dir}",
          "--format=tflite_int8", "--calibration_images=16",
          "--gin_param=NUM_EVAL_IMAGES = 24", "--gin_param=EVAL_BATCH_SIZE = 8",
          f"--gin_param=effnet_gin.data.build_dataset.num_labels = {NUM_LABELS}",
          "--gin_param=effnet_gin.train.build_strategy.kind = 'cpu'"
      ], str(tmp_path / "exporter.log"))
  with open(os.path.join(export_dir, "metadata.json")) as f:
    metadata = json.load(f)
  assert (metadata["variant"], metadata["num_classes"]) == (VARIANT, 10)
  assert metadata["input"]["dtype"] == "uint8"
  lite = runtimes.load_classifier(os.path.join(export_dir, "model.tflite"))
  float_logits = model_logits(data_dir, 24)
  images = float_images(data_dir, 24)
  int8_answers = np.argmax(lite.logits(images), axis=-1)
  agreement = np.mean(int8_answers == np.argmax(float_logits, axis=-1))
  assert agreement >= 0.75


def test_an_unknown_variant_lists_the_known_families(tmp_path):
  with pytest.raises(ValueError) as error:
    importer.import_checkpoint(source=EDGETPU, model_dir=str(tmp_path / "x"),
                               variant="efficientnet-edgetpu-XS")
  for family in ("EfficientNet-EdgeTPU", "EfficientNet-CondConv",
                 "EfficientNet-X", "EfficientNet-H"):
    assert family in str(error.value)
  assert not os.path.exists(tmp_path / "x")
