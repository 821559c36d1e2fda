"""load_pretrained: reference TF1 checkpoints, keras.applications weights and
effnet_gin checkpoints into effnet_gin models, exactly or not at all."""
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from effnet_gin.model import build_model
from effnet_gin.checkpoints import load_pretrained
from effnet_gin.checkpoints import pretrained
from effnet_gin.model import specs
from effnet_gin.checkpoints import weight_sources
from effnet_gin.checkpoints import averaging
from effnet_gin.checkpoints import checkpointing

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures",
                        "reference_checkpoints")
EMA = weight_sources.EMA_SUFFIX
VARIANCE_FLOOR = 0.05


def fixture_path(name, *parts):
  return os.path.join(FIXTURES, name, *parts)


def build_fixture_model(name, **overrides):
  """The effnet_gin model of a fixture, from its meta.json overrides."""
  with open(fixture_path(name, "meta.json")) as f:
    meta = json.load(f)
  params = meta["override_params"]
  kwargs = dict(variant=meta["model_name"], num_classes=params["num_classes"],
                width_coefficient=params["width_coefficient"],
                depth_coefficient=params["depth_coefficient"],
                image_size=meta["image_size"])
  kwargs.update(overrides)
  return build_model(**kwargs)


def write_reference_copy(name, prefix, edit):
  """Writes `edit(tensors)` of a fixture with TF1 names (SaveV2)."""
  reader = tf.train.load_checkpoint(fixture_path(name))
  tensors = {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()}
  edit(tensors)
  names = sorted(tensors)
  tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names,
                    shape_and_slices=[""] * len(names),
                    tensors=[tf.constant(tensors[n]) for n in names])
  return str(prefix)


@pytest.mark.parametrize("name", [
    "tiny_b0", "tiny_lite0", "tiny_edgetpu_s", "tiny_condconv_b0_4e",
    "tiny_x_b0", "tiny_h_b5"
])
@pytest.mark.parametrize("use_ema,logits_file", [(True, "logits.npy"),
                                                 (False, "logits_no_ema.npy")])
def test_reference_checkpoint_reproduces_the_reference_logits(
    name, use_ema, logits_file):
  model = build_fixture_model(name)
  result = load_pretrained(model, fixture_path(name), use_ema=use_ema)
  assert result.source_format == "reference"
  assert result.variant == json.load(open(fixture_path(
      name, "meta.json")))["model_name"]
  assert result.ema is use_ema
  assert result.tensors_mapped == len(model.weights)
  assert result.skipped == ()
  images = np.load(fixture_path(name, "inputs_0_255.npy"))
  logits = model(images, training=False).numpy()
  expected = np.load(fixture_path(name, logits_file))
  assert np.abs(logits - expected).max() <= 1e-4


def spec_reference_shapes(spec, num_classes, bn="tpu_batch_normalization"):
  """Reference tensor names and shapes derived from the spec alone.

  An oracle independent of the model's layer names: block numbering,
  creation-order suffixes and the squeeze width are spelled out here.
  """
  shapes = {}

  def conv(scope, cin, cout, k=1, bias=False):
    shapes[f"{scope}/kernel"] = [k, k, cin, cout]
    if bias:
      shapes[f"{scope}/bias"] = [cout]

  def norm(scope, channels):
    for weight in ("gamma", "beta", "moving_mean", "moving_variance"):
      shapes[f"{scope}/{weight}"] = [channels]

  conv("stem/conv2d", 3, spec.stem_filters, 3)
  norm(f"stem/{bn}", spec.stem_filters)
  channels, index = spec.stem_filters, 0
  for block in spec.scaled_blocks():
    for _ in range(block.repeats):
      scope, convs, norms = f"blocks_{index}", 0, 0
      expanded = channels * block.expand_ratio
      if block.expand_ratio != 1:
        conv(f"{scope}/conv2d", channels, expanded)
        norm(f"{scope}/{bn}", expanded)
        convs, norms = 1, 1
      k = block.kernel_size
      shapes[f"{scope}/depthwise_conv2d/depthwise_kernel"] = [k, k, expanded, 1]
      norm(f"{scope}/{bn}" + (f"_{norms}" if norms else ""), expanded)
      norms += 1
      if block.se_ratio:
        squeezed = max(1, int(channels * block.se_ratio))
        conv(f"{scope}/se/conv2d", expanded, squeezed, bias=True)
        conv(f"{scope}/se/conv2d_1", squeezed, expanded, bias=True)
      conv(f"{scope}/conv2d" + (f"_{convs}" if convs else ""), expanded,
           block.output_filters)
      norm(f"{scope}/{bn}_{norms}", block.output_filters)
      channels, index = block.output_filters, index + 1
  conv("head/conv2d", channels, spec.head_filters)
  norm(f"head/{bn}", spec.head_filters)
  shapes["head/dense/kernel"] = [spec.head_filters, num_classes]
  shapes["head/dense/bias"] = [num_classes]
  return shapes


def model_reference_shapes(model):
  names = weight_sources.reference_names(model)
  return {names[v.path]: list(v.shape) for v in model.weights}


@pytest.mark.parametrize(
    "variant", ["efficientnet-b0", "efficientnet-b3", "efficientnet-lite0"])
def test_published_name_lists_map_onto_full_size_models(variant):
  prefix = variant + "/"
  listed = {}
  with open(os.path.join(FIXTURES, "varlists", variant + ".txt")) as f:
    for line in f:
      name, shape, _ = line.rstrip("\n").split("\t")
      if name.startswith(prefix) and not name.endswith(
          (EMA, "/RMSProp", "/RMSProp_1")):
        listed[name[len(prefix):]] = json.loads(shape)
  model = build_model(variant, image_size=32)  # Weights ignore resolution.
  assert model_reference_shapes(model) == listed
  assert spec_reference_shapes(specs.get_variant(variant), 1000) == listed


@pytest.mark.parametrize(
    "variant",
    sorted(
        set(specs.FAMILIES["EfficientNet"] +
            specs.FAMILIES["EfficientNet-Lite"]) -
        {"efficientnet-b0", "efficientnet-b3", "efficientnet-lite0"}))
def test_every_variant_maps_its_spec_names_onto_its_model(variant):
  # Each variant's own depth (block count, which blocks expand, SE or not)
  # at a tenth of the width, so that even L2 builds in seconds.
  model = build_model(variant, num_classes=3, width_coefficient=0.1,
                      image_size=32)
  spec = specs.get_variant(variant)
  narrow = pretrained.dataclasses.replace(spec, width_coefficient=0.1)
  assert model_reference_shapes(model) == spec_reference_shapes(narrow, 3)


def test_every_standard_variant_has_its_own_signature():
  # x-b0, x-tpu-b0 and x-gpu-b0 are one network under three names (so are
  # x-tpu-b1 and x-gpu-b1): a signature names the first of them.
  distinct = {spec: name for name, spec in reversed(specs.VARIANTS.items())}
  assert len(distinct) == len(specs.VARIANTS) - 3
  signatures = {weight_sources.spec_signature(s) for s in distinct}
  assert len(signatures) == len(distinct)
  for spec, name in distinct.items():
    assert weight_sources.variant_named_by(
        weight_sources.spec_signature(spec)) == name


@pytest.mark.parametrize(
    "name", ["tiny_edgetpu_s", "tiny_condconv_b0_4e", "tiny_x_b0", "tiny_h_b5"])
def test_zoo_fixture_names_and_shapes_are_the_models(name):
  # The reference's own variable list (variables.txt) is the oracle.
  prefix = json.load(open(fixture_path(name, "meta.json")))["model_name"]
  listed = {}
  with open(fixture_path(name, "variables.txt")) as f:
    for line in f:
      var, shape, _ = line.rstrip("\n").split("\t")
      if var.startswith(prefix + "/") and not var.endswith(
          (EMA, "/RMSProp", "/RMSProp_1")):
        listed[var[len(prefix) + 1:]] = json.loads(shape)
  assert model_reference_shapes(build_fixture_model(name)) == listed


def test_condconv_checkpoint_for_a_b0_model_names_its_variant():
  model = build_fixture_model("tiny_condconv_b0_4e", variant="efficientnet-b0")
  with pytest.raises(
      ValueError,
      match=("holds efficientnet-condconv-b0-4e .*CondConv with 4 experts.*the "
             "model is efficientnet-b0")):
    load_pretrained(model, fixture_path("tiny_condconv_b0_4e"))


def test_ema_only_checkpoint_loads_with_ema_and_refuses_raw(tmp_path):
  path = write_reference_copy(
      "tiny_b0", tmp_path / "ema_only", lambda t:
      [t.pop(n) for n in list(t) if n != "global_step" and not n.endswith(EMA)])
  model = build_fixture_model("tiny_b0")
  with pytest.raises(ValueError, match="only EMA weights.*use_ema=True"):
    load_pretrained(model, path, use_ema=False)
  load_pretrained(model, path, use_ema=True)
  logits = model(np.load(fixture_path("tiny_b0", "inputs_0_255.npy")))
  expected = np.load(fixture_path("tiny_b0", "logits.npy"))
  assert np.abs(logits.numpy() - expected).max() <= 1e-4


def _assert_nothing_assigned(model, before):
  assert all(
      np.array_equal(v.numpy(), b) for v, b in zip(model.weights, before))


def test_missing_tensor_is_named_and_nothing_is_assigned(tmp_path):
  gone = "efficientnet-b0/blocks_3/tpu_batch_normalization_1/gamma"
  path = write_reference_copy(
      "tiny_b0", tmp_path / "missing",
      lambda t: [t.pop(n) for n in list(t) if n.startswith(gone)])
  model = build_fixture_model("tiny_b0")
  before = [v.numpy() for v in model.weights]
  with pytest.raises(ValueError, match=f"{gone}{EMA} is missing"):
    load_pretrained(model, path)
  _assert_nothing_assigned(model, before)


def test_wrong_shape_is_named(tmp_path):
  name = "efficientnet-b0/blocks_1/depthwise_conv2d/depthwise_kernel"
  path = write_reference_copy(
      "tiny_b0", tmp_path / "shape",
      lambda t: t.update({name: np.zeros([5, 5, 48, 1], np.float32)}))
  with pytest.raises(ValueError, match=f"{name} has shape \\[5, 5, 48, 1\\]"):
    load_pretrained(build_fixture_model("tiny_b0"), path, use_ema=False)


def test_checkpoint_of_another_variant_says_which():
  model = build_fixture_model("tiny_lite0", variant="efficientnet-b0")
  with pytest.raises(
      ValueError, match="holds efficientnet-lite0 .*, the "
      "model is efficientnet-b0"):
    load_pretrained(model, fixture_path("tiny_lite0"))
  full = build_model("efficientnet-b3", image_size=32)
  with pytest.raises(
      ValueError, match="holds efficientnet-b0 with "
      "non-standard shapes .*, the model is efficientnet-b3"):
    load_pretrained(full, fixture_path("tiny_b0"))


def test_files_that_are_no_checkpoint_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    load_pretrained(build_fixture_model("tiny_b0"), str(tmp_path / "nowhere"))
  junk = tmp_path / "junk"
  junk.with_suffix(".index").write_bytes(b"not a checkpoint at all")
  with pytest.raises(ValueError, match=f"{junk}.*not a readable"):
    load_pretrained(build_fixture_model("tiny_b0"), str(junk))
  text = tmp_path / "notes.h5"
  text.write_text("hello")
  with pytest.raises(ValueError, match="notes.h5.*not a Keras weights"):
    load_pretrained(build_fixture_model("tiny_b0"), str(text))


def test_classifier_of_another_size_is_skipped_only_when_asked():
  model = build_fixture_model("tiny_b0", num_classes=5)
  with pytest.raises(
      ValueError, match="skip_mismatched_classifier.*"
      r"head/dense/kernel\S* has shape \[128, 10\]"):
    load_pretrained(model, fixture_path("tiny_b0"))
  result = load_pretrained(model, fixture_path("tiny_b0"),
                           skip_mismatched_classifier=True)
  assert result.skipped == ("predictions/kernel", "predictions/bias")
  assert result.num_classes == 10
  reader = tf.train.load_checkpoint(fixture_path("tiny_b0"))
  np.testing.assert_array_equal(
      model.get_layer("top_conv").kernel.numpy(),
      reader.get_tensor(f"efficientnet-b0/head/conv2d/kernel{EMA}"))


def test_effnet_gin_checkpoint_round_trips_with_its_ema(tmp_path):
  source = build_model(num_classes=4, width_coefficient=0.1,
                       depth_coefficient=0.1, image_size=32)
  ema = averaging.ExponentialMovingAverage(source)
  for average in ema.averages:
    average.assign(tf.random.normal(average.shape))
  path = checkpointing.build_checkpoint(model=source,
                                        ema=ema).write(str(tmp_path / "ckpt-7"))
  target = build_model(num_classes=4, width_coefficient=0.1,
                       depth_coefficient=0.1, image_size=32)
  result = load_pretrained(target, path)
  assert (result.source_format, result.ema) == ("effnet_gin", True)
  for variable, average in zip(averaging.averaged_variables(target),
                               ema.averages):
    np.testing.assert_array_equal(variable.numpy(), average.numpy())
  other = build_model(num_classes=4, width_coefficient=0.2,
                      depth_coefficient=0.1, image_size=32)
  with pytest.raises(ValueError, match="does not fit"):
    load_pretrained(other, path)


def calibrated_keras_efficientnet(index, image_size, num_classes, images):
  """A random keras.applications EfficientNetB<index> that sees its inputs.

  Seeded random weights with batch-norm statistics taken from `images`
  (momentum 0, one training pass without dropout; variances floored) and
  random scales and offsets, so that activations stay normalised as in a
  trained network and the logits depend on the input; ImageNet input
  normalisation, as Keras' own weights.
  """
  keras.utils.set_random_seed(index)
  rng = np.random.default_rng(index)
  model = getattr(keras.applications,
                  f"EfficientNetB{index}")(weights=None,
                                           input_shape=(image_size, image_size,
                                                        3), classes=num_classes,
                                           classifier_activation=None)
  mean, stddev = specs.INPUT_NORMALIZATIONS["imagenet"]
  for layer in model.layers:
    if isinstance(layer, keras.layers.Normalization):
      layer.set_weights(
          [np.array(mean) / 255, (np.array(stddev) / 255)**2,
           np.array(0)])
      layer.finalize_state()
    if isinstance(layer, keras.layers.Dropout):
      layer.rate = 0.0  # Calibrate on the inference-time network.
    if isinstance(layer, keras.layers.BatchNormalization):
      layer.momentum = 0.0
      layer.gamma.assign(rng.uniform(0.5, 1.0, layer.gamma.shape))
      layer.beta.assign(rng.normal(0.0, 0.3, layer.beta.shape))
  model(images, training=True)
  for layer in model.layers:
    # At 2x2 pixels a channel can be nearly constant over the batch; a
    # floor keeps such statistics from amplifying float noise a thousandfold.
    if isinstance(layer, keras.layers.BatchNormalization):
      layer.moving_variance.assign(
          np.maximum(layer.moving_variance.numpy(), VARIANCE_FLOOR))
  return model


def _test_images(image_size, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.uniform(0, 255, (8, image_size, image_size, 3))
  ramp = np.linspace(0, 255, image_size)[None, :, None] * [1.0, 0.5, 0.2]
  images[0], images[1] = ramp, ramp.transpose(1, 0, 2)
  return images.astype(np.float32)


@pytest.mark.parametrize("index", [0, 3])
def test_keras_applications_weights_file_gives_keras_logits(index, tmp_path):
  images = _test_images(64)
  keras_model = calibrated_keras_efficientnet(index, 64, 7, images)
  expected = keras_model(images, training=False).numpy()
  assert np.std(expected, axis=0).mean() > 0.1 * np.abs(expected).mean()
  path = str(tmp_path / "keras.weights.h5")
  keras_model.save_weights(path)
  model = build_model(f"efficientnet-b{index}", 7, image_size=64)
  result = load_pretrained(model, path)
  assert (result.source_format, result.variant,
          result.ema) == ("keras", f"efficientnet-b{index}", False)
  assert result.tensors_mapped == len(model.weights)
  logits = model(images, training=False).numpy()
  relative = np.abs(logits - expected).max() / np.abs(expected).max()
  print(f"B{index} max relative logits difference {relative:.2e}")
  assert relative <= 1e-4
  if index == 0:  # The same from the model object, and its checks.
    model = build_model("efficientnet-b0", 7, image_size=64)
    load_pretrained(model, keras_model)
    np.testing.assert_allclose(model(images).numpy(), logits, atol=1e-5)
    for name in ("legacy.h5", "model.keras"):  # Keras 2's h5: by layer name.
      keras_model.save(str(tmp_path / name))
      model = build_model("efficientnet-b0", 7, image_size=64)
      load_pretrained(model, str(tmp_path / name))
      np.testing.assert_allclose(model(images).numpy(), logits, atol=1e-5)
    lite = build_model("efficientnet-b0", 7, image_size=64,
                       input_normalization="lite")
    with pytest.raises(ValueError, match="input_normalization='imagenet'"):
      load_pretrained(lite, path)
    b1 = build_model("efficientnet-b1", 7, image_size=64)
    with pytest.raises(
        ValueError, match="holds efficientnet-b0, the model "
        "is efficientnet-b1"):
      load_pretrained(b1, keras_model)
