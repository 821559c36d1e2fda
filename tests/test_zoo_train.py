"""The zoo under the shipped configs: recipe, labels, resize, training.

Each family trains through the trainer (`configurables.train`, what
bin/trainer runs) at smoke size; CondConv also with its step XLA-compiled
(about 15 s, most of it compiling).
"""
import gin
import numpy as np
import pytest
import tensorflow as tf

from effnet_gin import cli
from effnet_gin import configurables
from effnet_gin import data
import trainer_helpers

DATA = ["effnet_gin.data.TFRecordSource.data_dir = 'gs://bucket/imagenet'"]


def configured(gin_files, params=()):
  gin.clear_config()
  cli.configure(list(gin_files), list(params))


def test_edgetpu_config_is_the_reference_recipe_at_1001_classes():
  configured(["edgetpu_s_tpu.gin"], DATA)
  try:
    model = configurables.build_model(image_size=32, width_coefficient=0.1)
    assert model.output_shape == (None, 1001)
    assert model.name == "efficientnet-edgetpu-S"
    assert configurables.Preprocessing().resize_method == "tf1_bilinear"
    assert trainer_helpers.resolved(
        "effnet_gin.data.build_dataset.num_labels") == 1000
    assert trainer_helpers.resolved(
        "effnet_gin.train.build_schedule.base_learning_rate") == 0.016
  finally:
    gin.clear_config()


@pytest.mark.parametrize("model_name, resize",
                         [("efficientnet-b0", "tf1_bicubic"),
                          ("efficientnet-lite0", "tf1_bilinear"),
                          ("efficientnet-edgetpu-M", "tf1_bilinear"),
                          ("efficientnet-condconv-b0-4e", "tf1_bicubic"),
                          ("efficientnet-x-b0", "tf1_bicubic"),
                          ("efficientnet-h-b5", "tf1_bicubic")])
def test_each_variant_resizes_as_the_reference_unless_overridden(
    model_name, resize):
  configured(["b0_tpu.gin"], DATA + [f"MODEL_NAME = '{model_name}'"])
  try:
    assert configurables.Preprocessing().resize_method == resize
  finally:
    gin.clear_config()
  configured(["b0_tpu.gin"], DATA + [
      f"MODEL_NAME = '{model_name}'",
      "effnet_gin.data.Preprocessing.resize_method = 'bilinear'"
  ])
  try:
    assert configurables.Preprocessing().resize_method == "bilinear"
  finally:
    gin.clear_config()


def test_tf1_bilinear_is_the_references_resize():
  image = np.random.default_rng(3).integers(0, 256, (37, 29, 3), np.uint8)
  ours = data.preprocessing.resize(image, 16, "tf1_bilinear").numpy()
  reference = tf.compat.v1.image.resize_bilinear(image[None], [16, 16])[0]
  np.testing.assert_allclose(ours, reference, atol=1e-4)
  # TF2's bilinear samples at half-pixel centres: another image.
  assert np.abs(ours -
                data.preprocessing.resize(image, 16, "bilinear")).max() > 1.0


def labels_of(num_classes, num_labels):
  source = data.RandomNoiseSource(num_train=8, num_eval=8, num_classes=4,
                                  image_size=8)
  dataset = data.build_dataset(split="eval", global_batch_size=8, image_size=8,
                               source=source, num_classes=num_classes,
                               num_labels=num_labels)
  (_, labels, _), = list(dataset)
  plain = data.build_dataset(split="eval", global_batch_size=8, image_size=8,
                             source=source, num_classes=4)
  (_, source_labels, _), = list(plain)
  return labels.numpy(), source_labels.numpy()


def test_a_model_with_a_background_class_gets_labels_shifted_by_one():
  labels, source_labels = labels_of(num_classes=5, num_labels=4)
  assert source_labels.min() >= 0 and source_labels.max() <= 3
  np.testing.assert_array_equal(labels, source_labels + 1)
  labels, _ = labels_of(num_classes=4, num_labels=4)
  np.testing.assert_array_equal(labels, source_labels)


@pytest.mark.parametrize("model_name", [
    "efficientnet-edgetpu-S", "efficientnet-condconv-b0-4e",
    "efficientnet-x-b0", "efficientnet-h-b5"
])
def test_each_family_trains_two_steps(model_name, tmp_path):
  # smoke.gin shrinks the network.
  result = train_smoke(tmp_path, model_name)
  assert result["step"] == 2
  assert np.isfinite(result["loss"])
  assert trainer_helpers.latest_step(str(tmp_path)) == 2


def test_condconv_trains_with_its_step_compiled_by_xla(tmp_path):
  # As on TPU: static shapes, the whole step one XLA computation.
  result = train_smoke(tmp_path, "efficientnet-condconv-b0-4e",
                       "effnet_gin.train.train.jit_compile = True")
  assert result["step"] == 2
  assert np.isfinite(result["loss"])


def train_smoke(model_dir, model_name, *params):
  configured(["b0_cpu.gin", "smoke.gin"],
             [f"MODEL_NAME = '{model_name}'"] + list(params))
  try:
    return configurables.train(model_dir=str(model_dir), command="test")
  finally:
    gin.clear_config()
