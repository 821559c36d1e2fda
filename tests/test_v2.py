"""EfficientNetV2: the architecture against keras.applications and automl.

Expected numbers come from keras.applications' EfficientNetV2 builders (run
here with weights=None), from automl's `efficientnetv2/effnetv2_configs.py`
(sizes) or from the paper (XL's parameter count), never from the code under
test.
"""
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


def count(variables):
  return sum(int(np.prod(v.shape)) for v in variables)


@pytest.mark.parametrize("variant", sorted(KERAS_BUILDERS))
def test_parameter_counts_equal_keras_applications(variant):
  theirs = KERAS_BUILDERS[variant](weights=None)
  cost = flops.spec_cost(variant)
  assert cost.params == count(theirs.trainable_weights)
  assert cost.variables == count(theirs.weights)


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


def random_keras_model(variant, include_preprocessing):
  """A Keras EfficientNetV2 with random weights and non-trivial statistics."""
  model = KERAS_BUILDERS[variant](weights=None,
                                  input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
                                  classifier_activation=None,
                                  include_preprocessing=include_preprocessing)
  rng = np.random.default_rng(7)
  for v in model.weights:
    if v.path.startswith("normalization"):
      continue
    if v.path.endswith("moving_variance"):
      v.assign(rng.uniform(0.5, 1.5, v.shape).astype("float32"))
    else:
      v.assign(rng.normal(0.0, 0.1, v.shape).astype("float32"))
  return model


@pytest.fixture(scope="module")
def keras_weight_files(tmp_path_factory):
  """(variant, include_preprocessing) -> (Keras model, .weights.h5 path)."""
  files = {}
  for key in (("efficientnetv2-b0", True), ("efficientnetv2-b0", False),
              ("efficientnetv2-s", True)):
    model = random_keras_model(*key)
    path = str(
        tmp_path_factory.mktemp("keras") / f"{key[0]}-{key[1]}.weights.h5")
    model.save_weights(path)
    files[key] = (model, path)
  return files


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406]) * 255
IMAGENET_STDDEV = np.array([0.229, 0.224, 0.225]) * 255


@pytest.mark.parametrize("variant, include_preprocessing",
                         [("efficientnetv2-b0", True),
                          ("efficientnetv2-b0", False),
                          ("efficientnetv2-s", True)])
def test_logits_equal_keras_given_its_weights_file(keras_weight_files, variant,
                                                   include_preprocessing):
  theirs, path = keras_weight_files[variant, include_preprocessing]
  ours = build_model(variant, image_size=IMAGE_SIZE)
  result = load_pretrained(ours, path)
  assert result.variant == variant
  assert result.tensors_mapped == len(ours.weights)
  images = np.random.default_rng(1).uniform(
      0, 255, (2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
  # Without its preprocessing, Keras takes what effnet_gin's B0 normalisation
  # (ImageNet mean and stddev) makes of the pixels.
  keras_inputs = (images if include_preprocessing else
                  (images - IMAGENET_MEAN) / IMAGENET_STDDEV)
  expected = np.asarray(theirs(keras_inputs.astype("float32"), training=False))
  actual = np.asarray(ours(images, training=False))
  assert expected.std() > 0.05  # Logits that tell images and classes apart.
  np.testing.assert_allclose(actual, expected, rtol=1e-4,
                             atol=1e-4 * np.abs(expected).max())


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
