"""The inference graph, TFLite/ONNX conversion, and safe export directories.

Tiny models of the two families: a B0-style network (swish, squeeze-excite)
and a Lite-style one (ReLU6, no SE), with batch-norm statistics and weights
moved away from their initial values so that folding them matters.
"""
import collections
import json
import os

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert import interpreter as litert

from effnet_gin import configurables
from effnet_gin.model import build_model
from effnet_gin.model import layers
from effnet_gin.model.inference import inference_model
from effnet_gin.checkpoints import averaging
from effnet_gin.checkpoints import checkpointing
from effnet_gin.serving import converters
from effnet_gin.serving import formats
from effnet_gin.serving import runtimes

from effnet_gin.serving import exporter as export_lib
from export_helpers import relative_error

IMAGE_SIZE = 32
NUM_CLASSES = 10
VARIANTS = ("efficientnet-b0", "efficientnet-lite0")


def tiny_model(variant):
  """A tiny model of `variant` with randomised BN statistics and weights."""
  model = build_model(variant, num_classes=NUM_CLASSES, width_coefficient=0.25,
                      depth_coefficient=0.25, image_size=IMAGE_SIZE)
  rng = np.random.default_rng(len(variant))
  for layer in model.layers:
    if isinstance(layer, layers.BatchNorm):
      shape = layer.gamma.shape
      layer.gamma.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
      layer.beta.assign(rng.normal(0, 0.2, shape).astype("float32"))
      layer.moving_mean.assign(rng.normal(0, 0.5, shape).astype("float32"))
      layer.moving_variance.assign(
          rng.uniform(0.2, 2.0, shape).astype("float32"))
  return model


def images(count=4, seed=0):
  return tf.random.stateless_uniform([count, IMAGE_SIZE, IMAGE_SIZE, 3],
                                     [seed, 1], maxval=255.0).numpy()


@pytest.mark.parametrize("variant", VARIANTS)
def test_inference_model_is_plain_math_with_the_same_logits(variant):
  model = tiny_model(variant)
  plain = inference_model(model)
  x = images()
  assert relative_error(plain(x).numpy(),
                        model(x, training=False).numpy()) < 1e-5
  kinds = collections.Counter(type(layer) for layer in plain.layers)
  for removed in (layers.BatchNorm, layers.Dropout, layers.StochasticDepth):
    assert kinds[removed] == 0
  activations = [getattr(layer, "activation", None) for layer in plain.layers]
  assert layers.fused_swish not in activations
  assert keras.activations.silu not in activations
  # Every convolution followed by a BN in the original now carries a bias.
  originals = [
      layer.name
      for layer in model.layers
      if isinstance(layer, layers.BatchNorm)
  ]
  assert originals and all(
      isinstance(plain.get_layer(name), keras.layers.Identity)
      for name in originals)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("format_name,tolerance", [("tflite", 1e-4),
                                                   ("tflite_float16", 1e-2),
                                                   ("onnx", 1e-4)])
def test_float_exports_match_the_keras_logits(variant, format_name, tolerance,
                                              tmp_path):
  model = tiny_model(variant)
  plain = inference_model(model)
  if format_name == "onnx":
    content = converters.convert_onnx(plain, batch_size=2)
  else:
    content = converters.convert_tflite(plain, format_name, batch_size=2)
  path = tmp_path / formats.model_file(format_name)
  path.write_bytes(content)
  classifier = runtimes.load_classifier(str(path), num_threads=2)
  assert (classifier.batch_size, classifier.image_size) == (2, IMAGE_SIZE)
  x = images(count=3)  # Not a multiple of the batch: the last one is padded.
  expected = model(x, training=False).numpy()
  assert relative_error(classifier.logits(x), expected) < tolerance


def tflite_ops(content):
  interpreter = litert.Interpreter(model_content=content)
  return collections.Counter(
      op["op_name"] for op in interpreter._get_ops_details())  # pylint: disable=protected-access


def test_converted_graphs_have_batch_norm_folded():
  # Lite0 has no swish and no SE: the only elementwise ops left are the
  # input normalisation (one SUB, one MUL) and the residual ADDs.
  model = tiny_model("efficientnet-lite0")
  residual_adds = sum(
      isinstance(layer, keras.layers.Add) for layer in model.layers)
  ops = tflite_ops(converters.convert_tflite(inference_model(model), "tflite"))
  assert ops["MUL"] == 1 and ops["SUB"] == 1
  assert ops["ADD"] == residual_adds
  assert not {"VAR_HANDLE", "READ_VARIABLE", "TRANSPOSE"} & set(ops)
  assert set(ops) <= {
      "CONV_2D", "DEPTHWISE_CONV_2D", "MUL", "SUB", "ADD", "MEAN",
      "FULLY_CONNECTED", "RESHAPE"
  }
  import onnx  # pylint: disable=g-import-not-at-top
  graph = onnx.load_from_string(converters.convert_onnx(
      inference_model(model))).graph
  node_types = collections.Counter(node.op_type for node in graph.node)
  assert "BatchNormalization" not in node_types
  assert node_types["Mul"] == 1 and node_types["Add"] == residual_adds


# ---------------------------------------------------------------------------
# export(): formats, metadata, bad input and safe overwrites.
# ---------------------------------------------------------------------------


@pytest.fixture(name="run")
def run_fixture(tmp_path):
  """A model_dir with one checkpoint (model and EMA) of a tiny Lite0."""
  configure()
  model = tiny_model("efficientnet-lite0")
  ema = averaging.ExponentialMovingAverage(model)
  ema.update(1)
  checkpointing.Manager(
      checkpointing.build_checkpoint(step=tf.Variable(1, dtype=tf.int64),
                                     model=model, ema=ema),
      str(tmp_path / "run"), max_to_keep=2).save(1)
  return str(tmp_path / "run")


def configure(with_data=False):
  gin.clear_config()
  gin.parse_config(f"""
      build_model.variant = 'efficientnet-lite0'
      build_model.num_classes = {NUM_CLASSES}
      build_model.width_coefficient = 0.25
      build_model.depth_coefficient = 0.25
      build_model.image_size = {IMAGE_SIZE}
  """)
  if with_data:
    gin.parse_config(f"""
        build_dataset.source = @RandomNoiseSource()
        build_dataset.num_classes = {NUM_CLASSES}
        RandomNoiseSource.num_train = 8
        RandomNoiseSource.num_eval = 12
        RandomNoiseSource.num_classes = {NUM_CLASSES}
        RandomNoiseSource.image_size = 40
    """)


def test_tflite_export_writes_model_and_metadata(run, tmp_path):
  labels = tmp_path / "labels.txt"
  labels.write_text("".join(f"class {i}\n" for i in range(NUM_CLASSES)))
  export_dir = str(tmp_path / "lite")
  configurables.export(model_dir=run, export_dir=export_dir, format="tflite",
                       batch_size=2, labels_file=str(labels))
  assert sorted(os.listdir(export_dir)) == ["metadata.json", "model.tflite"]
  assert not [p for p in os.listdir(tmp_path) if "partial" in p]
  metadata = json.loads((tmp_path / "lite" / "metadata.json").read_text())
  assert metadata["variant"] == "efficientnet-lite0"
  # The resize named is the one the run's eval pipeline uses.
  resize_method = configurables.Preprocessing().resize_method
  assert f"{resize_method} resize" in metadata["preprocessing"]
  assert metadata["image_size"] == IMAGE_SIZE
  assert metadata["num_classes"] == NUM_CLASSES
  assert metadata["labels"] == [f"class {i}" for i in range(NUM_CLASSES)]
  assert metadata["input"]["shape"] == [2, IMAGE_SIZE, IMAGE_SIZE, 3]
  assert metadata["input"]["dtype"] == "float32"
  assert metadata["normalization"]["mean"] == [127.0] * 3
  assert metadata["normalization"]["stddev"] == [128.0] * 3
  assert metadata["ema"] is True
  assert metadata["size_bytes"] == os.path.getsize(f"{export_dir}/model.tflite")


def test_int8_export_quantizes_uint8_pixels(run, tmp_path):
  configure(with_data=True)
  export_dir = str(tmp_path / "int8")
  configurables.export(model_dir=run, export_dir=export_dir,
                       format="tflite_int8")
  metadata = json.loads((tmp_path / "int8" / "metadata.json").read_text())
  assert metadata["input"]["dtype"] == "uint8"
  assert metadata["input"]["quantization"] == {"scale": 1.0, "zero_point": 0}
  assert metadata["output"]["dtype"] == "uint8"
  comparison = metadata["int8_vs_float"]
  assert comparison["int8"]["num_examples"] == 12
  assert comparison["float"]["num_examples"] == 12
  ops = tflite_ops((tmp_path / "int8" / "model.tflite").read_bytes())
  assert ops["CONV_2D"] > 0 and "DEQUANTIZE" not in ops


def test_bad_input_is_refused_with_a_clear_error(run, tmp_path):
  with pytest.raises(ValueError, match="'tflite_int4'"):
    configurables.export(model_dir=run, export_dir=str(tmp_path / "x"),
                         format="tflite_int4")
  with pytest.raises(ValueError, match="calibrate"):
    configurables.export(model_dir=run, export_dir=str(tmp_path / "int8"),
                         format="tflite_int8")
  assert not os.path.exists(tmp_path / "int8")
  assert not [p for p in os.listdir(tmp_path) if "partial" in p]
  with pytest.raises(ValueError, match="batch_size"):
    configurables.export(model_dir=run, export_dir=str(tmp_path / "y"),
                         format="tflite", batch_size=0)


@pytest.mark.parametrize("first,second", [("tflite", "onnx"),
                                          ("saved_model", "tflite")])
def test_a_model_in_export_dir_is_kept_unless_overwrite(run, tmp_path, first,
                                                        second):
  export_dir = str(tmp_path / "export")
  configurables.export(model_dir=run, export_dir=export_dir, format=first)
  with pytest.raises(FileExistsError, match="already holds a model"):
    configurables.export(model_dir=run, export_dir=export_dir, format=second)
  assert json.loads(
      (tmp_path / "export" / "metadata.json").read_text())["format"] == first
  configurables.export(model_dir=run, export_dir=export_dir, format=second,
                       overwrite=True)
  assert json.loads(
      (tmp_path / "export" / "metadata.json").read_text())["format"] == second
  assert not os.path.exists(f"{export_dir}/{formats.model_file(first)}")
  assert sorted(os.listdir(tmp_path)) == ["export", "run"]


def saved_model_probabilities(export_dir):
  serve = tf.saved_model.load(export_dir).signatures["serving_images"]
  return serve(images=tf.constant(images()))["probabilities"].numpy()


@pytest.mark.parametrize("failing_step", ["convert", "metadata"])
def test_failed_overwrite_leaves_the_previous_export_loadable(
    run, tmp_path, monkeypatch, failing_step):
  export_dir = str(tmp_path / "export")
  configurables.export(model_dir=run, export_dir=export_dir)
  before = saved_model_probabilities(export_dir)
  # The new export has written its model file (or whole SavedModel) into
  # the staging directory when the failure strikes.
  if failing_step == "convert":
    target, fmt = runtimes, "tflite"
    name = "load_classifier"
  else:
    target, fmt = formats, "saved_model"
    name = "write_metadata"

  def fail(*args, **kwargs):
    del args, kwargs
    staged = [p for p in os.listdir(tmp_path) if ".partial-" in p]
    assert staged and os.listdir(tmp_path / staged[0])
    raise RuntimeError("injected failure half-way through the export")

  monkeypatch.setattr(target, name, fail)
  with pytest.raises(RuntimeError, match="half-way"):
    configurables.export(model_dir=run, export_dir=export_dir, format=fmt,
                         overwrite=True)
  np.testing.assert_array_equal(saved_model_probabilities(export_dir), before)
  assert json.loads((tmp_path / "export" /
                     "metadata.json").read_text())["format"] == "saved_model"
  assert sorted(os.listdir(tmp_path)) == ["export", "run"]


def test_export_into_an_existing_directory_without_a_model(run, tmp_path):
  export_dir = tmp_path / "export"
  export_dir.mkdir()
  (export_dir / "notes.txt").write_text("kept")
  configurables.export(model_dir=run, export_dir=str(export_dir), format="onnx")
  assert sorted(
      os.listdir(export_dir)) == ["metadata.json", "model.onnx", "notes.txt"]
  assert (export_dir / "notes.txt").read_text() == "kept"


def test_exporter_command_line(run, tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import trainer_helpers  # pylint: disable=g-import-not-at-top
  export_dir = str(tmp_path / "export")
  configurables.export(model_dir=run, export_dir=export_dir, format="tflite")
  command = [
      sys.executable,
      os.path.join(trainer_helpers.BIN,
                   "exporter"), "--gin_file=demo.gin", f"--model_dir={run}",
      f"--export_dir={export_dir}", "--gin_param=MODEL_NAME = "
      "'efficientnet-lite0'", f"--gin_param=IMAGE_SIZE = {IMAGE_SIZE}",
      f"--gin_param=NUM_CLASSES = {NUM_CLASSES}",
      "--gin_param=effnet_gin.model.build_model.width_coefficient = 0.25",
      "--gin_param=effnet_gin.model.build_model.depth_coefficient = 0.25"
  ]

  def exporter(*flags):
    return subprocess.run(command + list(flags), capture_output=True, text=True,
                          timeout=300, check=False,
                          env=trainer_helpers.subprocess_env())

  refused = exporter("--format=tflite_float16")
  assert refused.returncode != 0
  assert "already holds a model (model.tflite)" in refused.stderr
  unknown = exporter("--format=coreml", "--overwrite")
  assert unknown.returncode != 0 and "'coreml'" in unknown.stderr
  replaced = exporter("--format=tflite_float16", "--overwrite",
                      "--batch_size=4")
  assert replaced.returncode == 0, replaced.stderr[-3000:]
  assert "tflite_float16 of efficientnet-lite0 at 32x32" in replaced.stdout
  metadata = formats.read_metadata(export_dir)
  assert metadata["format"] == "tflite_float16"
  assert metadata["input"]["shape"][0] == 4
