"""Tests of effnet_gin.data.preprocessing on real encoded images."""
import gin
import numpy as np
import pytest
import tensorflow as tf

from effnet_gin import configurables
from effnet_gin.data import preprocessing
from effnet_gin.data.sources import generated

SIZE = 24


def _pixels(height=30, width=44, seed=0):
  return generated.learnable_image(tf.constant(seed % 10),
                                   tf.constant([seed, 1], tf.int64), height,
                                   width)


def _jpeg(height=30, width=44, seed=0):
  return tf.io.encode_jpeg(_pixels(height, width, seed), quality=95)


@pytest.mark.parametrize("kind", ["jpeg", "png", "uint8", "grey_uint8"])
def test_train_and_eval_shapes_dtypes_and_scale(kind):
  pixels = _pixels()
  image = {
      "jpeg": tf.io.encode_jpeg(pixels),
      "png": tf.io.encode_png(pixels),
      "uint8": pixels,
      "grey_uint8": pixels[..., :1],
  }[kind]
  for output in (preprocessing.preprocess_for_train(image, SIZE, [1, 2]),
                 preprocessing.preprocess_for_eval(image, SIZE)):
    assert output.shape == (SIZE, SIZE, 3)
    assert output.dtype == tf.float32
    # On the 0..255 scale, not clipped: bicubic overshoots near edges, by
    # less than its kernel's negative lobes allow.
    assert 0 < np.mean(output) < 255
    assert -128 < np.min(output) and np.max(output) < 384


def test_png_uint8_and_jpeg_inputs_agree():
  jpeg = _jpeg()
  decoded = tf.io.decode_jpeg(jpeg)
  png = tf.io.encode_png(decoded)
  for preprocess in (
      lambda image: preprocessing.preprocess_for_train(image, SIZE, [3, 4]),
      lambda image: preprocessing.preprocess_for_eval(image, SIZE)):
    np.testing.assert_array_equal(preprocess(png), preprocess(decoded))
    # Same crop; the fused JPEG decode-and-crop upsamples chroma near the
    # crop border a little differently from a full decode.
    difference = np.abs(preprocess(jpeg) - preprocess(decoded))
    assert difference.mean() < 2.0


def test_train_preprocessing_same_eagerly_and_in_tf_data():
  images = [_jpeg(seed=i) for i in range(4)]
  seeds = [[i, 7] for i in range(4)]
  eager = [
      preprocessing.preprocess_for_train(image, SIZE, seed)
      for image, seed in zip(images, seeds)
  ]
  dataset = tf.data.Dataset.from_tensor_slices(
      (tf.stack(images), tf.constant(seeds, tf.int64))).map(
          lambda image, seed: preprocessing.preprocess_for_train(
              image, SIZE, seed), num_parallel_calls=2)
  for expected, actual in zip(eager, dataset):
    np.testing.assert_array_equal(expected, actual)


def test_eval_preprocessing_same_eagerly_and_in_tf_data():
  image = _jpeg()
  in_dataset = next(
      iter(
          tf.data.Dataset.from_tensors(image).map(
              lambda x: preprocessing.preprocess_for_eval(x, SIZE))))
  np.testing.assert_array_equal(preprocessing.preprocess_for_eval(image, SIZE),
                                in_dataset)


def test_train_preprocessing_varies_with_seed_only():
  image = _jpeg()
  first = preprocessing.preprocess_for_train(image, SIZE, [1, 1])
  again = preprocessing.preprocess_for_train(image, SIZE, [1, 1])
  other = preprocessing.preprocess_for_train(image, SIZE, [1, 2])
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)


@pytest.mark.parametrize("shape", [(30, 44), (375, 500), (7, 200), (64, 64)])
def test_crop_windows_stay_inside_the_image(shape):
  image_shape = tf.constant([*shape, 3])
  for i in range(200):
    y, x, h, w = preprocessing.train_crop_window(image_shape, SIZE,
                                                 tf.constant([i, 3])).numpy()
    assert 0 <= y and 0 <= x and h >= 1 and w >= 1
    assert y + h <= shape[0] and x + w <= shape[1]


def test_distorted_crops_respect_area_and_aspect_ranges():
  shape = tf.constant([375, 500, 3])
  fallbacks = 0
  for i in range(200):
    window = preprocessing.distorted_crop_window(shape, tf.constant([i, 0]))
    _, _, h, w = window.numpy()
    if (h, w) == (375, 500):
      fallbacks += 1
      continue
    # Rounding to whole pixels widens the ranges slightly.
    assert 0.08 * 0.9 <= h * w / (375 * 500) <= 1.0
    assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
  assert fallbacks < 20


def test_center_crop_window_follows_the_reference_formula():
  window = preprocessing.center_crop_window(
      tf.constant([375, 500, 3]), preprocessing.REFERENCE.eval_crop_share(224))
  size = int(224 / (224 + 32) * 375)
  np.testing.assert_array_equal(window, [(375 - size + 1) // 2,
                                         (500 - size + 1) // 2, size, size])


def test_failed_distorted_crop_falls_back_to_center_crop():
  # A 1x1000 image admits no crop with aspect ratio in [3/4, 4/3] covering
  # 10% of it, so every sample fails.
  shape = tf.constant([1, 1000, 3])
  np.testing.assert_array_equal(
      preprocessing.train_crop_window(shape, SIZE, tf.constant([0, 0])),
      preprocessing.center_crop_window(shape, SIZE / (SIZE + 32)))


def test_flat_image_stays_flat():
  flat = tf.fill([40, 60, 3], tf.constant(77, tf.uint8))
  jpeg = tf.io.encode_jpeg(flat, quality=100)
  for output in (preprocessing.preprocess_for_train(jpeg, SIZE, [5, 5]),
                 preprocessing.preprocess_for_eval(jpeg, SIZE)):
    np.testing.assert_allclose(output, 77.0, atol=1.5)


def test_eval_center_crop_keeps_the_centre():
  # Left half black, right half white: the eval crop is centred.
  pixels = np.zeros([40, 80, 3], np.uint8)
  pixels[:, 40:] = 255
  output = preprocessing.preprocess_for_eval(tf.constant(pixels), 32).numpy()
  np.testing.assert_allclose(output[:, :16].mean(), 0.0, atol=10)
  np.testing.assert_allclose(output[:, 16:].mean(), 255.0, atol=10)


def test_bad_image_dtype_or_shape_raises():
  with pytest.raises(ValueError, match="float32"):
    preprocessing.preprocess_for_eval(tf.zeros([8, 8, 3]), SIZE)
  with pytest.raises(ValueError, match="shape"):
    preprocessing.preprocess_for_eval(tf.zeros([8, 8, 4], tf.uint8), SIZE)


def test_corrupt_jpeg_raises():
  jpeg = _jpeg().numpy()
  with pytest.raises(tf.errors.InvalidArgumentError):
    preprocessing.preprocess_for_eval(tf.constant(b"not an image"), SIZE)
  with pytest.raises(tf.errors.InvalidArgumentError):
    preprocessing.preprocess_for_train(
        tf.constant(jpeg[:len(jpeg) // 3] + b"\0" * 20), SIZE, [0, 0])


# ---------------------------------------------------------------------------
# The Preprocessing knobs.
# ---------------------------------------------------------------------------

Preprocessing = preprocessing.Preprocessing


@pytest.mark.parametrize("method", ["tf1_bicubic", "bicubic", "bilinear"])
def test_resize_methods_same_eagerly_and_in_tf_data(method):
  options = Preprocessing(resize_method=method)
  images = tf.stack([_jpeg(seed=i) for i in range(3)])
  seeds = tf.constant([[i, 9] for i in range(3)], tf.int64)
  dataset = tf.data.Dataset.from_tensor_slices((images, seeds)).map(
      lambda image, seed:
      (preprocessing.preprocess_for_train(image, SIZE, seed, options),
       preprocessing.preprocess_for_eval(image, SIZE, options)),
      num_parallel_calls=2)
  for image, seed, (train, evaluation) in zip(images, seeds, dataset):
    np.testing.assert_array_equal(
        preprocessing.preprocess_for_train(image, SIZE, seed, options), train)
    np.testing.assert_array_equal(
        preprocessing.preprocess_for_eval(image, SIZE, options), evaluation)


def test_tf1_bicubic_is_not_clipped_and_differs_from_tf2():
  # A hard black/white edge: bicubic rings past both ends.
  pixels = np.zeros([30, 30, 3], np.uint8)
  pixels[:, 15:] = 255
  tf1 = preprocessing.resize(tf.constant(pixels), 64).numpy()
  assert tf1.min() < -1.0 and tf1.max() > 256.0
  tf2 = preprocessing.resize(tf.constant(pixels), 64, "bicubic").numpy()
  assert np.abs(tf1 - tf2).max() > 10.0


def test_resize_method_is_the_one_named():
  pixels = _pixels()
  square = pixels[:, 7:37]  # The centre crop of the 30x44 image.
  for method in ("bilinear", "area", "bicubic"):
    output = preprocessing.preprocess_for_eval(
        pixels, SIZE, Preprocessing(eval_crop_padding=0, resize_method=method))
    np.testing.assert_allclose(
        output, tf.image.resize(square, [SIZE, SIZE], method=method), atol=1e-4)
  nearest = preprocessing.preprocess_for_eval(
      pixels, SIZE, Preprocessing(eval_crop_padding=0, resize_method="nearest"))
  assert nearest.dtype == tf.float32
  np.testing.assert_array_equal(
      nearest,
      tf.cast(tf.image.resize(square, [SIZE, SIZE], "nearest"), tf.float32))


def test_eval_crop_padding_zero_keeps_the_whole_short_side():
  window = preprocessing.center_crop_window(
      tf.constant([30, 44, 3]),
      Preprocessing(eval_crop_padding=0).eval_crop_share(SIZE))
  np.testing.assert_array_equal(window, [0, 7, 30, 30])
  # At S equal to the short side the TF1 resize is the identity.
  pixels = _pixels(30, 30)
  np.testing.assert_array_equal(
      preprocessing.preprocess_for_eval(pixels, 30,
                                        Preprocessing(eval_crop_padding=0)),
      tf.cast(pixels, tf.float32))


def test_eval_crop_fraction_overrides_the_padding():
  # Padding 32 keeps S / (S + 32): half of the short side at 32 px.
  assert preprocessing.REFERENCE.eval_crop_share(32) == 0.5
  assert preprocessing.REFERENCE.eval_crop_share(224) == 0.875
  options = Preprocessing(eval_crop_fraction=0.9)
  for size in (32, 224, 600):
    assert options.eval_crop_share(size) == 0.9
  window = preprocessing.center_crop_window(tf.constant([100, 200, 3]), 0.9)
  np.testing.assert_array_equal(window, [5, 55, 90, 90])
  pixels = _pixels()
  np.testing.assert_array_equal(
      preprocessing.preprocess_for_eval(pixels, SIZE,
                                        Preprocessing(eval_crop_fraction=1.0)),
      preprocessing.preprocess_for_eval(pixels, SIZE,
                                        Preprocessing(eval_crop_padding=0)))


def _sampled_crops(options, shape=(375, 500), count=200):
  """(crops, fallbacks): the sampled (h, w) and how many samples failed."""
  crops, fallbacks = [], 0
  for i in range(count):
    _, _, h, w = preprocessing.distorted_crop_window(tf.constant([*shape, 3]),
                                                     tf.constant([i, 5]),
                                                     options).numpy()
    if (h, w) == shape:
      fallbacks += 1
    else:
      crops.append((h, w))
  return crops, fallbacks


def test_area_and_aspect_ranges_shape_the_training_crops():
  crops, _ = _sampled_crops(
      Preprocessing(area_range=(0.25, 0.3), aspect_ratio_range=(2.0, 2.5)))
  assert len(crops) > 100
  for h, w in crops:
    # Rounding to whole pixels widens the ranges slightly.
    assert 0.25 * 0.95 <= h * w / (375 * 500) <= 0.3 * 1.05
    assert 2.0 * 0.95 <= w / h <= 2.5 * 1.05
  default_crops, _ = _sampled_crops(preprocessing.REFERENCE)
  assert min(h * w for h, w in default_crops) < 0.2 * 375 * 500


def test_min_object_covered_and_max_attempts():
  # Covering the whole image allows only the whole image: every sample fails
  # and training falls back to the eval crop.
  shape = tf.constant([375, 500, 3])
  for i in range(5):
    np.testing.assert_array_equal(
        preprocessing.train_crop_window(shape, SIZE, tf.constant([i, 0]),
                                        Preprocessing(min_object_covered=1.0)),
        preprocessing.center_crop_window(shape, SIZE / (SIZE + 32)))
  # On a 1:10 strip few samples meet the aspect range: fewer attempts fail
  # more often.
  _, few = _sampled_crops(Preprocessing(max_attempts=1), shape=(100, 1000))
  _, many = _sampled_crops(Preprocessing(max_attempts=50), shape=(100, 1000))
  assert few > many + 20


@pytest.mark.parametrize("knob,value", [
    ("area_range", (0.0, 1.0)),
    ("area_range", (0.5, 0.2)),
    ("area_range", (0.1, 1.5)),
    ("area_range", 0.5),
    ("aspect_ratio_range", (0.0, 1.0)),
    ("aspect_ratio_range", (2.0, 1.0, 3.0)),
    ("min_object_covered", 1.5),
    ("min_object_covered", None),
    ("max_attempts", 0),
    ("max_attempts", 2.5),
    ("eval_crop_padding", -1),
    ("eval_crop_padding", 8.0),
    ("eval_crop_fraction", 0.0),
    ("eval_crop_fraction", 1.2),
    ("resize_method", "cubic"),
])
def test_bad_knob_values_raise_naming_the_knob(knob, value):
  with pytest.raises(ValueError, match=f"Preprocessing.{knob} must"):
    Preprocessing(**{knob: value})


def test_gin_binds_the_knobs():
  gin.parse_config("""
      effnet_gin.data.Preprocessing.area_range = [0.5, 1.0]
      effnet_gin.data.Preprocessing.eval_crop_padding = 0
  """)
  assert configurables.Preprocessing() == Preprocessing(area_range=(0.5, 1.0),
                                                        eval_crop_padding=0)
  # The library's class is plain Python: bindings do not reach it.
  assert Preprocessing() == preprocessing.REFERENCE
  assert preprocessing.REFERENCE == Preprocessing(area_range=(0.08, 1.0),
                                                  eval_crop_padding=32)
