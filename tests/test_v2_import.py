"""automl's EfficientNetV2 checkpoints in: load_pretrained, import, fine-tune.

google/automl publishes its V2 weights (`gs://cloud-tpu-checkpoints/
efficientnet/v2/efficientnetv2-*.tgz`, ImageNet-1k, 21k and 21k-ft1k) as
name-based TensorFlow checkpoints whose variable names come from the Keras
layers of automl's `efficientnetv2/effnetv2_model.py`: the model's scope
is its name, then `stem`, `blocks_N` (numbered over the network) and
`head`; inside a block, convolutions are `conv2d`, `conv2d_1` and batch
norms `tpu_batch_normalization`, `_1`, `_2` in creation order, the
depthwise convolution `depthwise_conv2d`, squeeze-excite `se/conv2d` and
`se/conv2d_1`, and the classifier `head/dense`; `<name>/
ExponentialMovingAverage` holds each one's EMA shadow (trainable weights
and batch-norm statistics). Nothing is downloaded: the checkpoints here are
written by the test from a keras.applications EfficientNetV2 through the
table below, which is read off automl's code, not off effnet_gin's.
"""
import os

import keras
from keras.src.applications import efficientnet_v2 as keras_v2
import numpy as np
import pytest
import tensorflow as tf

from effnet_gin.checkpoints import load_pretrained
from effnet_gin.checkpoints import pretrained
from effnet_gin.model import build_model
from test_v2 import assert_endpoints_equal
from test_v2 import calibrate
from test_v2 import calibrated_keras_model
from test_v2 import endpoints
from test_v2 import sample_images
import trainer_helpers

IMAGE_SIZE = 32
IMAGES = sample_images(IMAGE_SIZE)
EMA = "/ExponentialMovingAverage"
BN = "tpu_batch_normalization"

# automl's scope of each keras.applications layer of a block, in the order
# automl creates them, by the block's kind.
FUSED_WITHOUT_EXPANSION = (("project_conv", "conv2d"), ("project_bn", BN))
FUSED = (("expand_conv", "conv2d"), ("expand_bn", BN),
         ("project_conv", "conv2d_1"), ("project_bn", f"{BN}_1"))
MBCONV = (("expand_conv", "conv2d"), ("expand_bn", BN),
          ("dwconv2", "depthwise_conv2d"), ("bn", f"{BN}_1"),
          ("se_reduce", "se/conv2d"), ("se_expand", "se/conv2d_1"),
          ("project_conv", "conv2d_1"), ("project_bn", f"{BN}_2"))
STEM_AND_HEAD = (("stem_conv", "stem/conv2d"), ("stem_bn", f"stem/{BN}"),
                 ("top_conv", "head/conv2d"), ("top_bn", f"head/{BN}"),
                 ("predictions", "head/dense"))


def automl_names(model, scope):
  """Keras variable path -> automl's name, for a keras.applications V2."""
  layers = {layer.name: layer for layer in model.layers}
  blocks = sorted({n.split("_")[0] for n in layers if n.startswith("block")},
                  key=lambda b: (int(b[5:-1]), b[-1]))
  table = dict(STEM_AND_HEAD)
  for index, block in enumerate(blocks):
    kind = (MBCONV if f"{block}_dwconv2" in layers else FUSED
            if f"{block}_expand_conv" in layers else FUSED_WITHOUT_EXPANSION)
    table.update({
        f"{block}_{part}": f"blocks_{index}/{name}" for part, name in kind
    })
  names = {}
  for layer_name, automl_scope in table.items():
    for variable in layers[layer_name].weights:
      weight = variable.path.rsplit("/", 1)[-1]
      if layer_name.endswith("dwconv2"):
        weight = "depthwise_kernel"
      names[variable.path] = f"{scope}/{automl_scope}/{weight}"
  return names


def write_automl_checkpoint(directory, scope, ema_model, raw_model):
  """An extracted automl .tgz: `checkpoint` and the `model` prefix.

  The raw names hold `raw_model`'s weights, the EMA shadows `ema_model`'s,
  as in a training checkpoint; the global step sits outside the scope.
  """
  raw = {v.path: np.asarray(v) for v in raw_model.weights}
  tensors = {"global_step": np.array(1000, np.int64)}
  for variable in ema_model.weights:
    if variable.path.startswith("normalization/"):
      continue
    name = automl_names(ema_model, scope)[variable.path]
    tensors[name] = raw[variable.path]
    tensors[name + EMA] = np.asarray(variable)
  names = sorted(tensors)
  os.makedirs(directory, exist_ok=True)
  tf.raw_ops.SaveV2(prefix=os.path.join(directory, "model"), tensor_names=names,
                    shape_and_slices=[""] * len(names),
                    tensors=[tf.constant(tensors[n]) for n in names])
  with open(os.path.join(directory, "checkpoint"), "w") as f:
    f.write('model_checkpoint_path: "model"\n')
  return str(directory)


def test_names_follow_automls_scheme():
  model = keras.applications.EfficientNetV2B0(weights=None,
                                              input_shape=(32, 32, 3))
  names = set(automl_names(model, "efficientnetv2-b0").values())
  # B0: a fused block without expansion, fused blocks, then MBConv with SE.
  for name in ("stem/conv2d/kernel", f"stem/{BN}/moving_variance",
               "blocks_0/conv2d/kernel", f"blocks_0/{BN}/gamma",
               "blocks_1/conv2d/kernel", "blocks_1/conv2d_1/kernel",
               f"blocks_1/{BN}_1/beta", "blocks_5/depthwise_conv2d/"
               "depthwise_kernel", "blocks_5/se/conv2d_1/bias",
               f"blocks_5/{BN}_2/moving_mean", "head/conv2d/kernel",
               f"head/{BN}/gamma", "head/dense/kernel", "head/dense/bias"):
    assert f"efficientnetv2-b0/{name}" in names
  assert len(names) == len(
      [v for v in model.weights if not v.path.startswith("normalization/")])


@pytest.fixture(scope="module")
def b0_checkpoint(tmp_path_factory):
  """(EMA Keras model, raw Keras model, automl B0 checkpoint directory)."""
  ema = calibrated_keras_model("efficientnetv2-b0", image_size=IMAGE_SIZE)
  raw = keras.models.clone_model(ema)
  raw.set_weights(ema.get_weights())
  calibrate(raw, IMAGES, seed=8)
  path = write_automl_checkpoint(
      tmp_path_factory.mktemp("automl") / "efficientnetv2-b0",
      "efficientnetv2-b0", ema, raw)
  return ema, raw, path


@pytest.mark.parametrize("use_ema", [True, False])
def test_automl_checkpoint_gives_keras_outputs(b0_checkpoint, use_ema):
  ema, raw, path = b0_checkpoint
  ours = build_model("efficientnetv2-b0", image_size=IMAGE_SIZE)
  result = load_pretrained(ours, path, use_ema=use_ema)
  assert (result.source_format, result.variant, result.num_classes,
          result.ema) == ("automl", "efficientnetv2-b0", 1000, use_ema)
  assert result.tensors_mapped == len(ours.weights)
  assert_endpoints_equal(ours, ema if use_ema else raw, IMAGES)


def test_describe_source_reads_variant_classes_and_normalisation(b0_checkpoint):
  info = pretrained.describe_source(b0_checkpoint[2])
  assert (info.source_format, info.variant, info.num_classes,
          info.input_normalization) == ("automl", "efficientnetv2-b0", 1000,
                                        "imagenet")


# A tiny EfficientNetV2-S with ImageNet-21k's 21,843 classes.
TINY = dict(width_coefficient=0.1, depth_coefficient=0.25)
CLASSES_21K = 21843


@pytest.fixture(scope="module")
def tiny_21k(tmp_path_factory):
  """(Keras model, its automl-named 21k checkpoint directory)."""
  keras.utils.set_random_seed(7)
  model = keras_v2.EfficientNetV2(**TINY, default_size=IMAGE_SIZE,
                                  name="efficientnetv2-s", weights=None,
                                  input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
                                  classes=CLASSES_21K,
                                  classifier_activation=None)
  calibrate(model, IMAGES)
  path = write_automl_checkpoint(
      tmp_path_factory.mktemp("automl") / "efficientnetv2-s-21k",
      "efficientnetv2-s", model, model)
  return model, path


def features(model, images):
  """The pooled features the classifier takes."""
  return endpoints(model, images)["top_dropout"]


def test_21k_checkpoint_initialises_a_model_of_another_class_count(tiny_21k):
  theirs, path = tiny_21k
  ours = build_model("efficientnetv2-s", image_size=IMAGE_SIZE, num_classes=10,
                     **TINY)
  fresh = ours.get_layer("predictions").get_weights()
  # What train.init_checkpoint runs: everything but the classifier.
  skipped = pretrained.initialize_from(ours, path, model_builder=None)
  assert skipped == ["predictions"]
  for now, before in zip(ours.get_layer("predictions").get_weights(), fresh):
    np.testing.assert_array_equal(now, before)
  expected = features(theirs, IMAGES)
  np.testing.assert_allclose(features(ours, IMAGES), expected, rtol=1e-4,
                             atol=1e-4 * np.abs(expected).max())


def test_import_checkpoint_of_a_21k_checkpoint_for_fine_tuning(
    tiny_21k, tmp_path):
  theirs, path = tiny_21k
  model_dir = str(tmp_path / "imported")
  output = trainer_helpers.run_logged(
      trainer_helpers.script("import_checkpoint") + [
          f"--source={path}", f"--model_dir={model_dir}", "--num_classes=10",
          f"--image_size={IMAGE_SIZE}"
      ], model_dir + ".log")
  assert "efficientnetv2-s (automl format, EMA weights" in output
  with open(f"{model_dir}/model.gin") as f:
    bindings = f.read()
  for line in ("build_model.variant = %MODEL_NAME", "NUM_CLASSES = 10",
               "input_normalization = 'v2'"):
    assert line in bindings
  ours = build_model("efficientnetv2-s", image_size=IMAGE_SIZE, num_classes=10,
                     **TINY)
  skipped = pretrained.initialize_from(
      ours, model_dir, model_builder=lambda n: build_model(
          "efficientnetv2-s", image_size=IMAGE_SIZE, num_classes=n, **TINY))
  assert skipped == []
  expected = features(theirs, IMAGES)
  np.testing.assert_allclose(features(ours, IMAGES), expected, rtol=1e-4,
                             atol=1e-4 * np.abs(expected).max())


def test_21k_checkpoint_into_a_21k_model_needs_no_skipping(tiny_21k):
  theirs, path = tiny_21k
  ours = build_model("efficientnetv2-s", image_size=IMAGE_SIZE,
                     num_classes=CLASSES_21K, **TINY)
  result = load_pretrained(ours, path)
  assert (result.num_classes, result.skipped,
          result.variant) == (CLASSES_21K, (), "efficientnetv2-s")
  expected = np.asarray(theirs(IMAGES))
  np.testing.assert_allclose(np.asarray(ours(IMAGES)), expected, rtol=1e-4,
                             atol=1e-4 * np.abs(expected).max())


def test_21k_checkpoint_refuses_a_1k_model_unless_asked_to_skip(tiny_21k):
  _, path = tiny_21k
  ours = build_model("efficientnetv2-s", image_size=IMAGE_SIZE, **TINY)
  with pytest.raises(ValueError, match="only the classifier differs"):
    load_pretrained(ours, path)
  result = load_pretrained(ours, path, skip_mismatched_classifier=True)
  assert result.skipped == ("predictions/kernel", "predictions/bias")
