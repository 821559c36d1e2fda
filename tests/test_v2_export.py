"""EfficientNetV2 exported: SavedModel, float and int8 TFLite, as V1 is.

One module-scoped run trains a tiny EfficientNetV2-S (quarter width, a tenth
of the depth: one or two blocks a stage, Fused-MBConv in the first three
stages and MBConv with squeeze-excite in the last three; 32 px; V2's own
x / 128 - 1 input normalisation) on generated learnable TFRecords with the
trainer, then exports its checkpoint with bin/exporter's library call. The
tests run each export in its own runtime (TensorFlow for the SavedModel,
LiteRT for .tflite) and compare it with the checkpoint's own EMA logits:
float formats within float32 rounding, int8 by top-1 agreement as V1's int8
is judged (tests/test_lite_deploy.py).
"""
import collections
import os

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from effnet_gin.data import preprocess_for_eval
from effnet_gin.data import write_fake_imagenet
from effnet_gin.model import build_model
from effnet_gin.serving import formats
from effnet_gin.serving import runtimes
from export_helpers import checkpoint_logits
from export_helpers import eval_examples
from export_helpers import relative_error
from export_helpers import run_params
from export_helpers import tflite_top1
from export_helpers import train_and_export

VARIANT = "efficientnetv2-s"
WIDTH, DEPTH = 0.25, 0.1
NUM_CLASSES = 6
NUM_EVAL = 100
IMAGE_SIZE = 32
FORMATS = ("saved_model", "tflite", "tflite_int8")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  root = tmp_path_factory.mktemp("v2")
  data_dir = str(root / "data")
  write_fake_imagenet(data_dir, num_train=640, num_eval=NUM_EVAL,
                      num_classes=NUM_CLASSES, image_size=40, train_shards=2,
                      eval_shards=2, kind="learnable")
  params = run_params(data_dir, variant=VARIANT, image_size=IMAGE_SIZE,
                      num_classes=NUM_CLASSES, num_eval=NUM_EVAL,
                      train_steps=150, width=WIDTH, depth=DEPTH)
  model_dir, exports = train_and_export(root, data_dir, params, FORMATS)
  examples = eval_examples(data_dir)
  images = np.stack([
      preprocess_for_eval(encoded, IMAGE_SIZE).numpy()
      for encoded, _ in examples
  ])
  checkpoint = tf.train.latest_checkpoint(model_dir)
  logits = checkpoint_logits(checkpoint, images)
  gin.clear_config()
  return dict(root=root, checkpoint=checkpoint, exports=exports,
              examples=examples, images=images, logits=logits,
              labels=np.array([label for _, label in examples]))


def test_the_tiny_model_has_fused_and_squeeze_excite_blocks():
  model = build_model(VARIANT, NUM_CLASSES, width_coefficient=WIDTH,
                      depth_coefficient=DEPTH, image_size=IMAGE_SIZE)
  kinds = collections.defaultdict(set)
  for layer in model.layers:
    if layer.name.startswith("block"):
      block = layer.name.split("_")[0]
      kinds[block].add(type(layer))
      if "_se_" in layer.name:
        kinds[block].add("se")
  fused = [b for b, k in kinds.items() if keras.layers.DepthwiseConv2D not in k]
  with_se = [b for b, k in kinds.items() if "se" in k]
  assert sorted(fused) == ["block1a", "block2a", "block3a"]
  assert sorted(with_se) == ["block4a", "block5a", "block6a", "block6b"]


def test_saved_model_matches_the_checkpoint(exported):
  expected = tf.nn.softmax(exported["logits"]).numpy()
  export_dir = exported["exports"]["saved_model"]
  loaded = tf.saved_model.load(export_dir)
  outputs = loaded.signatures["serving_images"](
      images=tf.constant(exported["images"]))
  np.testing.assert_allclose(outputs["probabilities"], expected, atol=1e-5)
  np.testing.assert_array_equal(outputs["classes"], expected.argmax(-1))
  # From the files' bytes: the same decode and crop, V2's normalisation.
  data = tf.stack([encoded for encoded, _ in exported["examples"][:8]])
  served = loaded.signatures["serving_default"](image_bytes=data)
  np.testing.assert_allclose(served["probabilities"], expected[:8], atol=1e-5)
  metadata = formats.read_metadata(export_dir)
  assert metadata["variant"] == VARIANT
  assert metadata["checkpoint"] == exported["checkpoint"]
  assert metadata["normalization"]["mean"] == [128.0] * 3
  assert metadata["normalization"]["stddev"] == [128.0] * 3


def test_float_tflite_matches_the_checkpoint_logits(exported):
  path = f"{exported['exports']['tflite']}/model.tflite"
  classifier = runtimes.load_classifier(path, num_threads=2)
  assert classifier.image_size == IMAGE_SIZE
  logits = classifier.logits(exported["images"])
  assert relative_error(logits, exported["logits"]) < 1e-4
  np.testing.assert_array_equal(tflite_top1(path, exported["images"]),
                                exported["logits"].argmax(-1))


def test_int8_tflite_agrees_with_the_checkpoint(exported):
  exports = exported["exports"]
  float_top1 = exported["logits"].argmax(-1)
  int8_top1 = tflite_top1(f"{exports['tflite_int8']}/model.tflite",
                          exported["images"])
  assert np.mean(float_top1 == exported["labels"]) > 0.4  # Chance is 1/6.
  assert np.mean(int8_top1 == float_top1) >= 0.9
  metadata = formats.read_metadata(exports["tflite_int8"])
  assert metadata["input"]["dtype"] == "uint8"
  comparison = metadata["int8_vs_float"]
  assert comparison["int8"]["num_examples"] == NUM_EVAL
  assert comparison["int8"]["top_1_accuracy"] == pytest.approx(
      np.mean(int8_top1 == exported["labels"]), abs=1e-12)
  assert comparison["float"]["top_1_accuracy"] == pytest.approx(
      np.mean(float_top1 == exported["labels"]), abs=1e-12)
  assert os.path.getsize(f"{exports['tflite_int8']}/model.tflite") < (
      0.5 * os.path.getsize(f"{exports['tflite']}/model.tflite"))
