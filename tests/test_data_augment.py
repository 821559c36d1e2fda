"""Tests of AutoAugment, RandAugment, their ops, and mixup."""
import numpy as np
import pytest
import tensorflow as tf

from effnet_gin.data.augment import mixing
from effnet_gin.data.augment import policies
from effnet_gin.data.sources import generated


def _image(seed=0, size=(24, 32)):
  return generated.learnable_image(tf.constant(seed % 10),
                                   tf.constant([seed, 9], tf.int64), *size)


def _check_uint8_image(output, shape):
  assert output.dtype == tf.uint8
  assert tuple(output.shape) == tuple(shape)


@pytest.mark.parametrize("name", policies.RANDAUGMENT_OPS)
@pytest.mark.parametrize("level", [0.0, 5.0, 10.0, 28.0])
def test_every_op_keeps_uint8_shape(name, level):
  image = _image()
  output = policies._apply_op(image, name, level, tf.constant([1, 2], tf.int64),
                              cutout_const=40, translate_const=100)
  _check_uint8_image(output, image.shape)


def test_simple_ops_match_their_definitions():
  image = tf.constant([[[0, 100, 200], [127, 128, 255]]], tf.uint8)
  np.testing.assert_array_equal(policies.invert(image), 255 - image.numpy())
  np.testing.assert_array_equal(policies.solarize(image, 128),
                                [[[0, 100, 55], [127, 127, 0]]])
  np.testing.assert_array_equal(policies.solarize_add(image, 100, 128),
                                [[[100, 200, 200], [227, 128, 255]]])
  np.testing.assert_array_equal(policies.posterize(image, 2),
                                [[[0, 64, 192], [64, 128, 192]]])
  np.testing.assert_array_equal(policies.brightness(image, 0.0), 0)
  np.testing.assert_array_equal(policies.brightness(image, 1.0), image)
  np.testing.assert_array_equal(policies.brightness(image, 2.0),
                                [[[0, 200, 255], [254, 255, 255]]])


def test_histogram_ops():
  low_contrast = tf.constant(
      np.random.default_rng(0).integers(100, 141, [32, 32, 3]).astype(np.uint8))
  stretched = policies.autocontrast(low_contrast).numpy()
  assert stretched.min() == 0 and stretched.max() == 255
  equalized = policies.equalize(low_contrast).numpy()
  assert equalized.min() == 0 and equalized.max() > 200
  flat = tf.fill([4, 6, 3], tf.constant(90, tf.uint8))
  np.testing.assert_array_equal(policies.autocontrast(flat), flat)
  np.testing.assert_array_equal(policies.equalize(flat), flat)
  np.testing.assert_array_equal(policies.sharpness(flat, 1.7), flat)
  np.testing.assert_array_equal(policies.contrast(flat, 0.3), flat)


def _pil_equalize(image):
  """PIL's ImageOps.equalize, per channel, in numpy (the reference's model)."""
  output = image.copy()
  for c in range(3):
    histogram = np.bincount(image[..., c].ravel(), minlength=256)
    nonzero = histogram[histogram > 0]
    step = (nonzero.sum() - nonzero[-1]) // 255
    if step:
      lut = (np.cumsum(histogram) + step // 2) // step
      lut = np.clip(np.concatenate([[0], lut[:-1]]), 0, 255)
      output[..., c] = lut[image[..., c]]
  return output


@pytest.mark.parametrize("low,high", [(100, 141), (0, 256), (0, 3), (7, 8)])
def test_equalize_matches_pil(low, high):
  image = np.random.default_rng(low).integers(low, high,
                                              [40, 30, 3]).astype(np.uint8)
  image[..., 2] = 9  # One flat channel.
  np.testing.assert_array_equal(policies.equalize(tf.constant(image)),
                                _pil_equalize(image))


def test_geometric_ops_fill_with_grey():
  image = tf.fill([10, 10, 3], tf.constant(255, tf.uint8))
  shifted = policies.translate_x(image, 4).numpy()
  np.testing.assert_array_equal(shifted[:, :4], 128)
  np.testing.assert_array_equal(shifted[:, 4:], 255)
  np.testing.assert_array_equal(policies.rotate(image, 0.0), image)
  np.testing.assert_array_equal(policies.shear_y(image, 0.0), image)
  cut = policies.cutout(image, 2, tf.constant([0, 0], tf.int64)).numpy()
  assert 1 <= (cut == 128).all(axis=-1).sum() <= 16


@pytest.mark.parametrize("policy", ["autoaugment", "randaugment"])
def test_policies_same_eagerly_and_in_tf_data_and_in_range(policy):

  def apply(image, seed):
    if policy == "autoaugment":
      return policies.autoaugment(image, seed)
    return policies.randaugment(image, seed, num_layers=2, magnitude=17)

  images = tf.stack([_image(i) for i in range(6)])
  seeds = [[i, 3] for i in range(6)]
  eager = [apply(image, seed) for image, seed in zip(images, seeds)]
  dataset = tf.data.Dataset.from_tensor_slices(
      (images, tf.constant(seeds, tf.int64))).map(apply)
  changed = 0
  for original, expected, actual in zip(images, eager, dataset):
    _check_uint8_image(actual, original.shape)
    np.testing.assert_array_equal(expected, actual)
    changed += not np.array_equal(original, actual)
  assert changed >= 3


def test_policies_reject_float_images():
  with pytest.raises(ValueError, match="uint8"):
    policies.autoaugment(tf.zeros([8, 8, 3]), [0, 0])
  with pytest.raises(ValueError, match="uint8"):
    policies.randaugment(tf.zeros([8, 8, 3]), [0, 0])


def test_mixup_mixes_images_and_labels_with_the_same_weight():
  images = tf.stack([tf.fill([4, 4, 3], v) for v in (0.0, 100.0, 255.0)])
  labels = tf.constant([0, 1, 2])
  mixed_images, mixed_labels = mixing.mixup(images, labels, 4, 0.2, [1, 2])
  assert mixed_images.shape == images.shape
  assert mixed_labels.shape == (3, 4) and mixed_labels.dtype == tf.float32
  np.testing.assert_allclose(tf.reduce_sum(mixed_labels, -1), 1.0, rtol=1e-6)
  weight = mixed_labels.numpy()[np.arange(3), labels.numpy()]
  weight[1] = mixed_labels[1, 1]  # Example 1 is mixed with itself.
  assert (weight >= 0.5).all()
  # Example 0 is mixed with example 2 (the batch reversed).
  np.testing.assert_allclose(mixed_images[0], (1 - weight[0]) * 255.0,
                             rtol=1e-5)
  assert 0.0 <= float(tf.reduce_min(mixed_images))
  assert float(tf.reduce_max(mixed_images)) <= 255.0
