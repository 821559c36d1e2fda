"""bin/exporter --endpoint and --output: features or probabilities, not logits.

The expected tensors come from the Keras model itself: `build_model(
return_endpoints=True)` with the checkpoint's EMA weights, and a NumPy
softmax of the Keras logits.
"""
import json
import os
import subprocess

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from effnet_gin import configurables
from effnet_gin.checkpoints import averaging
from effnet_gin.checkpoints import checkpointing
from effnet_gin.data import preprocessing
from effnet_gin.serving import endpoints
from effnet_gin.serving import predict
from effnet_gin.serving import runtimes

import trainer_helpers

IMAGE_SIZE = 32
NUM_CLASSES = 10
BINDINGS = f"""
    build_model.variant = 'efficientnet-b0'
    build_model.num_classes = {NUM_CLASSES}
    build_model.width_coefficient = 0.25
    build_model.depth_coefficient = 0.25
    build_model.image_size = {IMAGE_SIZE}
"""


@pytest.fixture(scope="module", name="run")
def run_fixture(tmp_path_factory):
  """A model_dir with one checkpoint whose EMA weights differ from its raw."""
  gin.parse_config(BINDINGS)
  model = configurables.build_model()
  ema = averaging.ExponentialMovingAverage(model)
  for i, variable in enumerate(model.trainable_variables):
    variable.assign_add(0.2 * tf.random.stateless_normal(
        variable.shape, [i, 0], dtype=variable.dtype))
  ema.update(1)
  model_dir = str(tmp_path_factory.mktemp("run"))
  checkpointing.Manager(
      checkpointing.build_checkpoint(step=tf.Variable(1, dtype=tf.int64),
                                     model=model, ema=ema), model_dir,
      max_to_keep=1).save(1)
  gin.clear_config()
  return model_dir


def images(count=2):
  return tf.random.stateless_uniform([count, IMAGE_SIZE, IMAGE_SIZE, 3], [3, 1],
                                     maxval=255.0).numpy()


def keras_endpoints(model_dir):
  """The endpoint dict and pooled features of the checkpoint's EMA weights."""
  model = configurables.build_model(return_endpoints=True)
  ema = averaging.ExponentialMovingAverage(model)
  checkpointing.build_checkpoint(model=model, ema=ema).read(
      tf.train.latest_checkpoint(model_dir)).expect_partial()
  ema.copy_to_model()
  pooled = keras.Model(model.inputs, model.get_layer("avg_pool").output)
  outputs = {k: np.asarray(v) for k, v in model(images()).items()}
  outputs["pooled_features"] = np.asarray(pooled(images()))
  return outputs


def relative_error(actual, expected):
  return np.max(np.abs(actual - expected)) / np.max(np.abs(expected))


@pytest.mark.parametrize("endpoint,keras_name", [
    ("pooled_features", "pooled_features"),
    ("reduction_3", "reduction_3"),
    ("features", "reduction_5"),
    ("head_1x1", "features"),
])
def test_a_tflite_endpoint_is_the_keras_models_tensor(run, tmp_path, endpoint,
                                                      keras_name):
  gin.parse_config(BINDINGS)
  export_dir = str(tmp_path / endpoint)
  configurables.export(model_dir=run, export_dir=export_dir, format="tflite",
                       batch_size=2, endpoint=endpoint)
  expected = keras_endpoints(run)[keras_name]
  exported = runtimes.load_classifier(export_dir).logits(images())
  assert exported.shape == expected.shape
  assert relative_error(exported, expected) < 1e-4
  metadata = json.loads((tmp_path / endpoint / "metadata.json").read_text())
  assert metadata["output"]["name"] == endpoint
  assert metadata["output"]["shape"] == list(expected.shape)


def test_a_saved_model_endpoint_serves_that_tensor(run, tmp_path):
  gin.parse_config(BINDINGS)
  export_dir = str(tmp_path / "sm")
  configurables.export(model_dir=run, export_dir=export_dir,
                       endpoint="reduction_2")
  serve = tf.saved_model.load(export_dir).signatures["serving_images"]
  outputs = serve(images=tf.constant(images()))
  assert list(outputs) == ["reduction_2"]
  expected = keras_endpoints(run)["reduction_2"]
  assert relative_error(outputs["reduction_2"].numpy(), expected) < 1e-4


@pytest.mark.parametrize("format_name", ["tflite", "saved_model"])
def test_probabilities_are_the_softmax_of_the_logits(run, tmp_path,
                                                     format_name):
  gin.parse_config(BINDINGS)
  logits = keras_endpoints(run)["logits"]
  shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
  softmax = shifted / shifted.sum(axis=-1, keepdims=True)
  export_dir = str(tmp_path / format_name)
  configurables.export(model_dir=run, export_dir=export_dir, format=format_name,
                       batch_size=2, output="probabilities")
  if format_name == "tflite":
    probabilities = runtimes.load_classifier(export_dir).logits(images())
  else:
    serve = tf.saved_model.load(export_dir).signatures["serving_images"]
    probabilities = serve(images=tf.constant(images()))["probabilities"].numpy()
  np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(probabilities, softmax, atol=1e-5)
  if format_name == "tflite":  # bin/predict shows them, not their softmax.
    image = tmp_path / "a.png"
    image.write_bytes(tf.io.encode_png(images(1)[0].astype(np.uint8)).numpy())
    [(_, top)] = predict.predict_exported(export_dir, [str(image)], top_k=3)
    pixels = preprocessing.preprocess_for_eval(tf.io.read_file(str(image)),
                                               IMAGE_SIZE,
                                               preprocessing.REFERENCE)
    direct = runtimes.load_classifier(export_dir).logits(pixels[None])[0]
    assert top[0][2] == pytest.approx(float(direct.max()), abs=1e-6)


def test_saved_model_logits_output(run, tmp_path):
  gin.parse_config(BINDINGS)
  configurables.export(model_dir=run, export_dir=str(tmp_path / "sm"),
                       output="logits")
  serve = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_images"]
  outputs = serve(images=tf.constant(images()))
  assert sorted(outputs) == ["classes", "logits"]
  expected = keras_endpoints(run)["logits"]
  assert relative_error(outputs["logits"].numpy(), expected) < 1e-4


def test_bad_endpoints_and_outputs_are_refused(run, tmp_path):
  gin.parse_config(BINDINGS)
  with pytest.raises(ValueError) as error:
    configurables.export(model_dir=run, export_dir=str(tmp_path / "x"),
                         endpoint="reduction_9")
  assert str(error.value).splitlines()[0] == (
      "unknown endpoint 'reduction_9'; this model has logits, head, stem, "
      "reduction_1, reduction_2, reduction_3, reduction_4, reduction_5, "
      "features, head_1x1, pooled_features, global_pool")
  with pytest.raises(ValueError, match="not the logits"):
    endpoints.check_output("pooled_features", "probabilities")
  with pytest.raises(ValueError, match="unknown output 'softmax'"):
    endpoints.check_output(None, "softmax")
  assert not os.path.exists(tmp_path / "x")


def test_the_reference_export_flags(run, tmp_path):
  command = [
      *trainer_helpers.script("exporter"), "--gin_file=b0_cpu.gin",
      "--model_name=efficientnet-b0", "--num_label_classes=10",
      "--image_size=32", "--width_coefficient=0.25", "--depth_coefficient=0.25",
      f"--ckpt_dir={run}"
  ]

  def exporter(*args):
    return subprocess.run(command + list(args), capture_output=True, text=True,
                          timeout=300, check=False,
                          env=trainer_helpers.subprocess_env())

  refused = exporter("--output_tflite=/tmp/m.tflite")
  assert refused.returncode == 1
  assert "--output_tflite is the reference's export_model.py flag: give " \
      "--export_dir=DIR" in refused.stderr
  ran = exporter(f"--output_saved_model_dir={tmp_path / 'sm'}",
                 "--endpoint_name=pooled_features", "--noenable_ema")
  assert ran.returncode == 0, ran.stderr[-3000:]
  metadata = json.loads((tmp_path / "sm" / "metadata.json").read_text())
  assert metadata["output_name"] == "pooled_features"
  assert metadata["ema"] is False
