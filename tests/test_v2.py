"""EfficientNetV2: the architecture against keras.applications and automl.

Expected numbers come from keras.applications' EfficientNetV2 builders (run
here with weights=None), from automl's `efficientnetv2/effnetv2_configs.py`
(sizes) or from the paper (XL's parameter count), never from the code under
test.
"""
import re

import keras
import numpy as np
import pytest

from effnet_gin.checkpoints import load_pretrained
from effnet_gin.model import build_model
from effnet_gin.model import flops
from effnet_gin.model import specs
from effnet_gin.model import specs_v2
from effnet_gin.model import variant_resolution
from effnet_gin.model import variant_train_resolution

KERAS_BUILDERS = {
    "efficientnetv2-b0": keras.applications.EfficientNetV2B0,
    "efficientnetv2-b1": keras.applications.EfficientNetV2B1,
    "efficientnetv2-b2": keras.applications.EfficientNetV2B2,
    "efficientnetv2-b3": keras.applications.EfficientNetV2B3,
    "efficientnetv2-s": keras.applications.EfficientNetV2S,
    "efficientnetv2-m": keras.applications.EfficientNetV2M,
    "efficientnetv2-l": keras.applications.EfficientNetV2L,
}
IMAGE_SIZE = 64
# (trainable, total) parameters of the two largest, which take 5-10 s each to
# build: read once from keras 3.15.1's EfficientNetV2M and EfficientNetV2L
# (weights=None, include_top=True, 1000 classes) by summing the sizes of
# `model.trainable_weights` and `model.weights`.
KERAS_COUNTS = {
    "efficientnetv2-m": (54139356, 54431388),
    "efficientnetv2-l": (118515272, 119027848),
}


def count(variables):
  return sum(int(np.prod(v.shape)) for v in variables)


@pytest.mark.parametrize("variant", sorted(KERAS_BUILDERS))
def test_parameter_counts_equal_keras_applications(variant):
  if variant in KERAS_COUNTS:
    trainable, total = KERAS_COUNTS[variant]
  else:
    theirs = KERAS_BUILDERS[variant](weights=None)
    trainable, total = count(theirs.trainable_weights), count(theirs.weights)
  cost = flops.spec_cost(variant)
  assert (cost.params, cost.variables) == (trainable, total)


@pytest.mark.parametrize("variant", ["efficientnetv2-b0", "efficientnetv2-s"])
def test_built_model_has_keras_applications_variables(variant):
  ours = build_model(variant, image_size=32)
  theirs = KERAS_BUILDERS[variant](weights=None, input_shape=(32, 32, 3))
  assert count(ours.trainable_weights) == count(theirs.trainable_weights)
  # B0's Keras input Normalization holds its mean and variance as variables;
  # effnet_gin's holds constants. Every other variable has its twin.
  keras_shapes = sorted(
      (v.path.replace("_dwconv2/", "_dwconv/"), tuple(v.shape))
      for v in theirs.weights
      if not v.path.startswith("normalization/"))
  assert sorted((v.path, tuple(v.shape)) for v in ours.weights) == keras_shapes


def test_xl_has_the_papers_208m_parameters():
  # Paper Table 7 (ImageNet-21k pretraining, 1k fine-tuning): 208M.
  assert round(flops.spec_cost("efficientnetv2-xl").params / 1e6) == 208


# automl's efficientnetv2_params: (train size, eval size, dropout).
AUTOML_SIZES = {
    "efficientnetv2-b0": (192, 224, 0.2),
    "efficientnetv2-b1": (192, 240, 0.2),
    "efficientnetv2-b2": (208, 260, 0.3),
    "efficientnetv2-b3": (240, 300, 0.3),
    "efficientnetv2-s": (300, 384, 0.2),
    "efficientnetv2-m": (384, 480, 0.3),
    "efficientnetv2-l": (384, 480, 0.4),
    "efficientnetv2-xl": (384, 512, 0.4),
}


@pytest.mark.parametrize("variant", sorted(AUTOML_SIZES))
def test_variant_table_has_automls_train_and_eval_sizes(variant):
  train, evaluate, dropout = AUTOML_SIZES[variant]
  assert variant_train_resolution(variant) == train
  assert variant_resolution(variant) == evaluate
  assert specs.get_variant(variant).dropout_rate == dropout


def test_v1_variants_train_at_their_eval_size():
  for variant in ("efficientnet-b0", "efficientnet-b4", "efficientnet-lite0"):
    assert variant_train_resolution(variant) == variant_resolution(variant)


def test_automl_block_strings_mark_fused_stages_with_c1():
  fused = specs_v2.parse_v2_block("r4_k3_s2_e4_i24_o48_c1")
  assert (fused.repeats, fused.strides, fused.expand_ratio, fused.conv_type,
          fused.se_ratio) == (4, 2, 4, "fused", 0.0)
  mbconv = specs_v2.parse_v2_block("r6_k3_s2_e4_i64_o128_se0.25")
  assert (mbconv.conv_type, mbconv.se_ratio) == ("depthwise", 0.25)


def test_fused_stage_without_expansion_projects_with_its_kernel():
  # Keras' FusedMBConvBlock at expand_ratio 1: a 3x3 projection with the
  # activation after its batch norm, no expansion convolution.
  model = build_model("efficientnetv2-s", image_size=32)
  names = [layer.name for layer in model.layers]
  assert "block1a_expand_conv" not in names
  assert "block1a_project_activation" in names
  assert model.get_layer("block1a_project_conv").kernel.shape == (3, 3, 24, 24)
  assert model.get_layer("block2a_expand_conv").kernel.shape == (3, 3, 24, 96)
  assert "block2a_se_reduce" not in names
  assert "block4a_se_reduce" in names


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406]) * 255
IMAGENET_STDDEV = np.array([0.229, 0.224, 0.225]) * 255


def sample_images(size=IMAGE_SIZE):
  """Four 0..255 images unlike in their statistics and spatial structure."""
  rng = np.random.default_rng(1)
  ramp = np.linspace(0, 1, size)
  noise = rng.uniform(0, 255, (size, size, 3))
  gradient = (ramp[None, :, None] * np.array([200, 60, 120]) +
              ramp[:, None, None] * np.array([20, 160, 40]) +
              rng.uniform(0, 20, (size, size, 3)))
  squares = np.kron(rng.integers(0, 2,
                                 (8, 8, 3)), np.ones(
                                     (size // 8, size // 8, 1))) * 230 + 10
  waves = 127 + 120 * np.sin(ramp[:, None, None] * np.array([9, 17, 5]) +
                             ramp[None, :, None] * np.array([13, 3, 21]))
  return np.stack([noise, gradient, squares, waves]).astype("float32")


IMAGES = sample_images()


def keras_inputs(images, include_preprocessing):
  """`images` as Keras takes them.

  Without its preprocessing, Keras takes what effnet_gin's B0 normalisation
  (ImageNet mean and stddev) makes of the pixels.
  """
  if include_preprocessing:
    return images
  return ((images - IMAGENET_MEAN) / IMAGENET_STDDEV).astype("float32")


def calibrate(model, inputs, seed=7):
  """Gives a Keras EfficientNet well-scaled random weights, in place.

  Kernels keep their variance-scaling initialisation; batch-norm scales are
  drawn from U(0.5, 1.5) (U(0.2, 0.5) for a block's last), offsets and biases from N(0, 0.1); the moving
  statistics are those of `inputs` (one training step with momentum 0 and
  no dropout), floored at a tenth of the layer's mean variance. So every
  batch norm outputs about unit variance on these inputs, and every block's
  output depends on the image: a wrong operation anywhere shows.
  """
  rng = np.random.default_rng(seed)
  for v in model.weights:
    name = v.path.rsplit("/", 1)[-1]
    if name == "gamma":
      # Residual branches add a third of a unit variance, as in trained
      # networks, so 15 blocks in a row neither explode nor amplify
      # rounding past 1e-4.
      low, high = (0.1, 0.3) if "_project_bn/" in v.path else (0.5, 1.5)
      v.assign(rng.uniform(low, high, v.shape).astype("float32"))
    elif name in ("beta", "bias"):
      v.assign(rng.normal(0.0, 0.1, v.shape).astype("float32"))
  batch_norms = [
      layer for layer in model.layers
      if isinstance(layer, keras.layers.BatchNormalization)
  ]
  saved = {}
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      saved[layer.name] = ("momentum", layer.momentum)
      layer.momentum = 0.0
    elif isinstance(layer, keras.layers.Dropout):
      saved[layer.name] = ("rate", layer.rate)
      layer.rate = 0.0
  model(inputs, training=True)
  for layer in model.layers:
    if layer.name in saved:
      setattr(layer, *saved[layer.name])
  for layer in batch_norms:
    variance = np.asarray(layer.moving_variance)
    layer.moving_variance.assign(np.maximum(variance, 0.5 * variance.mean()))
  return model


def calibrated_keras_model(variant, include_preprocessing=True,
                           image_size=IMAGE_SIZE):
  """A keras.applications EfficientNetV2 with `calibrate`d weights."""
  keras.utils.set_random_seed(7)
  model = KERAS_BUILDERS[variant](weights=None,
                                  input_shape=(image_size, image_size, 3),
                                  classifier_activation=None,
                                  include_preprocessing=include_preprocessing)
  return calibrate(
      model, keras_inputs(sample_images(image_size), include_preprocessing))


_BLOCK = re.compile(r"^block\d+[a-z]+_")


def endpoint_names(model):
  """The stem's, each block's and the head's last layer, in order."""
  last = {}
  for layer in model.layers:
    match = _BLOCK.match(layer.name)
    key = match.group(0) if match else layer.name.split("_")[0]
    if key in ("stem", "top") or match:
      last[key] = layer.name
  return list(last.values()) + ["predictions"]


def endpoints(model, inputs):
  """name -> output of every `endpoint_names` layer on `inputs`."""
  names = endpoint_names(model)
  probe = keras.Model(model.inputs,
                      [model.get_layer(name).output for name in names])
  return dict(zip(names, (np.asarray(o) for o in probe(inputs))))


def assert_endpoints_equal(ours, theirs, images, include_preprocessing=True):
  """Every block's output of `ours` equals Keras' within 1e-4 relative."""
  expected = endpoints(theirs, keras_inputs(images, include_preprocessing))
  actual = endpoints(ours, images)
  assert list(actual) == list(expected)
  for name, value in expected.items():
    # The calibration makes every endpoint tell the images apart...
    assert value.std(axis=0).mean() > 0.05 * np.abs(value).mean(), name
    # ... so a wrong operation in any block moves it by far more than this.
    np.testing.assert_allclose(actual[name], value, rtol=1e-4,
                               atol=1e-4 * np.abs(value).max(),
                               err_msg=f"at {name}")


@pytest.fixture(scope="module")
def keras_weight_files(tmp_path_factory):
  """(variant, include_preprocessing) -> (Keras model, .weights.h5 path)."""
  files = {}
  for key in (("efficientnetv2-b0", True), ("efficientnetv2-b0", False),
              ("efficientnetv2-s", True)):
    model = calibrated_keras_model(*key)
    path = str(
        tmp_path_factory.mktemp("keras") / f"{key[0]}-{key[1]}.weights.h5")
    model.save_weights(path)
    files[key] = (model, path)
  return files


@pytest.mark.parametrize("variant, include_preprocessing",
                         [("efficientnetv2-b0", True),
                          ("efficientnetv2-b0", False),
                          ("efficientnetv2-s", True)])
def test_every_block_equals_keras_given_its_weights_file(
    keras_weight_files, variant, include_preprocessing):
  theirs, path = keras_weight_files[variant, include_preprocessing]
  ours = build_model(variant, image_size=IMAGE_SIZE)
  result = load_pretrained(ours, path)
  assert result.variant == variant
  assert result.tensors_mapped == len(ours.weights)
  assert_endpoints_equal(ours, theirs, IMAGES, include_preprocessing)


def test_keras_preprocessing_must_match_the_models_normalisation(
    keras_weight_files):
  # EfficientNetV2S maps pixels to x / 128 - 1, not ImageNet mean/stddev.
  _, path = keras_weight_files["efficientnetv2-s", True]
  ours = build_model("efficientnetv2-s", image_size=IMAGE_SIZE,
                     input_normalization="imagenet")
  with pytest.raises(ValueError, match="input_normalization='v2'"):
    load_pretrained(ours, path)


def test_keras_weights_of_another_size_name_both(keras_weight_files):
  _, path = keras_weight_files["efficientnetv2-s", True]
  ours = build_model("efficientnetv2-b0", image_size=IMAGE_SIZE)
  with pytest.raises(ValueError, match="efficientnetv2-s"):
    load_pretrained(ours, path)


def test_legacy_h5_file_loads_as_keras_publishes_v2_weights(
    keras_weight_files, tmp_path):
  # keras.applications publishes its EfficientNetV2 weights as legacy .h5
  # files, keyed by layer name (`block4a_dwconv2` ...).
  theirs, _ = keras_weight_files["efficientnetv2-b0", True]
  path = str(tmp_path / "efficientnetv2-b0.h5")
  theirs.save(path)
  ours = build_model("efficientnetv2-b0", image_size=IMAGE_SIZE)
  assert load_pretrained(ours, path).variant == "efficientnetv2-b0"
  assert_endpoints_equal(ours, theirs, IMAGES[::-1])
