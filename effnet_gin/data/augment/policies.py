"""AutoAugment (policy v0) and RandAugment, per image, in TensorFlow ops.

Follows the reference EfficientNet `autoaugment.py` (Cubuk et al. 2019,
"AutoAugment"; Cubuk et al. 2020, "RandAugment") on uint8 [H, W, 3] images,
so every op keeps values in 0..255. Randomness comes only from the `seed`
arguments (stateless ops), so results are reproducible eagerly and in tf.data.

Deviations from the reference, on purpose:
  * `contrast` blends towards the mean grey level; the reference's histogram
    arithmetic gives pixel_count / 256 instead of the mean.
  * Magnitudes above 10 (B5 uses 17, B7 28) are allowed; posterize bits are
    clamped to [0, 8] where the reference would shift by a negative amount.
  * Geometric ops fill uncovered pixels with grey 128 directly through the
    projective transform's fill value instead of the reference's extra
    "wrap" channel (same result with nearest interpolation).
"""
import math

import tensorflow as tf

_MAX_LEVEL = 10.0
_FILL_VALUE = 128

# Policy v0 of the reference: 25 sub-policies of two (op, probability, level).
POLICY_V0 = (
    (("Equalize", 0.8, 1), ("ShearY", 0.8, 4)),
    (("Color", 0.4, 9), ("Equalize", 0.6, 3)),
    (("Color", 0.4, 1), ("Rotate", 0.6, 8)),
    (("Solarize", 0.8, 3), ("Equalize", 0.4, 7)),
    (("Solarize", 0.4, 2), ("Solarize", 0.6, 2)),
    (("Color", 0.2, 0), ("Equalize", 0.8, 8)),
    (("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)),
    (("ShearX", 0.2, 9), ("Rotate", 0.6, 8)),
    (("Color", 0.6, 1), ("Equalize", 1.0, 2)),
    (("Invert", 0.4, 9), ("Rotate", 0.6, 0)),
    (("Equalize", 1.0, 9), ("ShearY", 0.6, 3)),
    (("Color", 0.4, 7), ("Equalize", 0.6, 0)),
    (("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)),
    (("Solarize", 0.6, 8), ("Color", 0.6, 9)),
    (("Solarize", 0.2, 4), ("Rotate", 0.8, 9)),
    (("Rotate", 1.0, 7), ("TranslateY", 0.8, 9)),
    (("ShearX", 0.0, 0), ("Solarize", 0.8, 4)),
    (("ShearY", 0.8, 0), ("Color", 0.6, 4)),
    (("Color", 1.0, 0), ("Rotate", 0.6, 2)),
    (("Equalize", 0.8, 4), ("Equalize", 0.0, 8)),
    (("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)),
    (("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)),
    (("Posterize", 0.8, 2), ("Solarize", 0.6, 10)),
    (("Solarize", 0.6, 8), ("Equalize", 0.6, 1)),
    (("Color", 0.8, 6), ("Rotate", 0.4, 5)),
)

RANDAUGMENT_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize",
                   "Solarize", "Color", "Contrast", "Brightness", "Sharpness",
                   "ShearX", "ShearY", "TranslateX", "TranslateY", "Cutout",
                   "SolarizeAdd")

# --- Pixel ops: uint8 [H, W, 3] -> uint8 [H, W, 3] ---------------------------


def blend(image1, image2, factor):
  """image1 + factor * (image2 - image1) as uint8; factor may exceed 1.

  `image1` may be a scalar or broadcastable grey level.
  """
  image1 = tf.cast(image1, tf.float32)
  image2 = tf.cast(image2, tf.float32)
  blended = image1 + factor * (image2 - image1)
  return tf.cast(tf.clip_by_value(blended, 0.0, 255.0), tf.uint8)


def invert(image):
  return 255 - image


def solarize(image, threshold=128):
  """Inverts pixels at or above the int `threshold` (which may exceed 255)."""
  if threshold > 255:
    return image
  return tf.where(image < threshold, image, 255 - image)


def solarize_add(image, addition=0, threshold=128):
  """Adds the int `addition` >= 0 to pixels below `threshold`, saturating."""
  addition = min(max(addition, 0), 255)
  added = tf.minimum(image, 255 - addition) + addition  # No uint8 overflow.
  return tf.where(image < min(threshold, 255), added, image)


def color(image, factor):
  """Blends with the greyscale image: 0 grey, 1 unchanged."""
  grey = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))
  return blend(grey, image, factor)


def contrast(image, factor):
  """Blends with the mean grey level: 0 flat grey, 1 unchanged."""
  mean = tf.reduce_mean(tf.cast(tf.image.rgb_to_grayscale(image), tf.float32))
  return blend(mean, image, factor)


def brightness(image, factor):
  """Blends with black: 0 black, 1 unchanged."""
  return blend(0.0, image, factor)


def posterize(image, bits):
  """Keeps the `bits` most significant bits of each pixel."""
  shift = tf.cast(8 - tf.clip_by_value(bits, 0, 8), tf.uint8)
  return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def autocontrast(image):
  """Stretches each channel to the full 0..255 range (if not constant)."""
  low = tf.cast(tf.reduce_min(image, axis=[0, 1]), tf.float32)
  high = tf.cast(tf.reduce_max(image, axis=[0, 1]), tf.float32)
  # Constant channels keep their value: scale 1, offset 0.
  constant = high <= low
  scale = tf.where(constant, 1.0, 255.0 / tf.maximum(high - low, 1.0))
  low = tf.where(constant, 0.0, low)
  stretched = (tf.cast(image, tf.float32) - low) * scale
  return tf.cast(tf.clip_by_value(stretched, 0.0, 255.0), tf.uint8)


def sharpness(image, factor):
  """Blends with a smoothed image; border pixels keep their value."""
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, tf.newaxis, tf.newaxis], [1, 1, 3, 1])
  smooth = tf.nn.depthwise_conv2d(
      tf.cast(image, tf.float32)[tf.newaxis], kernel, [1, 1, 1, 1],
      padding="VALID")[0]
  smooth = tf.cast(tf.clip_by_value(tf.round(smooth), 0.0, 255.0), tf.uint8)
  # Put the unsmoothed 1-pixel border back around the VALID convolution.
  padded = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
  interior = tf.pad(tf.ones_like(smooth, tf.bool), [[1, 1], [1, 1], [0, 0]])
  return blend(tf.where(interior, padded, image), image, factor)


def equalize(image):
  """Histogram-equalizes each channel as PIL's ImageOps.equalize does."""

  def equalize_channel(channel):
    channel = tf.cast(channel, tf.int32)
    histogram = tf.math.bincount(channel, minlength=256, maxlength=256)
    nonzero = tf.boolean_mask(histogram, histogram > 0)
    # PIL's step: pixels not in the last non-empty bin, over 255 levels.
    step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255
    lut = (tf.cumsum(histogram) + step // 2) // tf.maximum(step, 1)
    lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
    equalized = tf.gather(lut, channel)
    # One dominant level (step 0): PIL leaves the channel unchanged.
    return tf.cast(tf.where(step > 0, equalized, channel), tf.uint8)

  return tf.stack([equalize_channel(image[..., c]) for c in range(3)], axis=-1)


def cutout(image, pad_size, seed, replace=_FILL_VALUE):
  """Fills a (2 * pad_size)^2 square at a random centre with `replace`."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  centre = tf.random.stateless_uniform([2], seed, minval=0, maxval=tf.int32.max,
                                       dtype=tf.int32) % tf.stack(
                                           [height, width])
  y = tf.range(height)[:, tf.newaxis]
  x = tf.range(width)[tf.newaxis, :]
  inside = ((tf.abs(y - centre[0]) < pad_size) &
            (tf.abs(x - centre[1]) < pad_size))
  return tf.where(inside[..., tf.newaxis], tf.cast(replace, image.dtype), image)


def _transform(image, transform):
  """Applies a projective transform [a0..a7] (output -> input coordinates)."""
  transformed = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[tf.newaxis],
      transforms=tf.cast(tf.reshape(transform, [1, 8]),
                         tf.float32), output_shape=tf.shape(image)[:2],
      fill_value=tf.constant(_FILL_VALUE, tf.float32), interpolation="NEAREST",
      fill_mode="CONSTANT")
  return transformed[0]


def rotate(image, degrees):
  """Rotates counter-clockwise by `degrees` about the image centre."""
  radians = tf.cast(degrees, tf.float32) * math.pi / 180.0
  height = tf.cast(tf.shape(image)[0], tf.float32)
  width = tf.cast(tf.shape(image)[1], tf.float32)
  cos, sin = tf.cos(radians), tf.sin(radians)
  offset_x = ((width - 1) - (cos * (width - 1) - sin * (height - 1))) / 2.0
  offset_y = ((height - 1) - (sin * (width - 1) + cos * (height - 1))) / 2.0
  return _transform(
      image, tf.stack([cos, -sin, offset_x, sin, cos, offset_y, 0.0, 0.0]))


def translate_x(image, pixels):
  return _transform(
      image,
      tf.stack(
          [1.0, 0.0, -tf.cast(pixels, tf.float32), 0.0, 1.0, 0.0, 0.0, 0.0]))


def translate_y(image, pixels):
  return _transform(
      image,
      tf.stack(
          [1.0, 0.0, 0.0, 0.0, 1.0, -tf.cast(pixels, tf.float32), 0.0, 0.0]))


def shear_x(image, level):
  return _transform(
      image,
      tf.stack([1.0,
                tf.cast(level, tf.float32), 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]))


def shear_y(image, level):
  return _transform(
      image,
      tf.stack([1.0, 0.0, 0.0,
                tf.cast(level, tf.float32), 1.0, 0.0, 0.0, 0.0]))


# --- Levels to op arguments, as the reference maps them --------------------


def _random_sign(value, seed):
  """`value` negated with probability 1/2."""
  negate = tf.random.stateless_uniform([], seed) < 0.5
  return tf.where(negate, -value, value)


def _apply_op(image, name, level, seed, *, cutout_const, translate_const):
  """Applies op `name` at `level` (0..10, may exceed 10) to a uint8 image.

  Args:
    image: uint8 [H, W, 3].
    name: one of RANDAUGMENT_OPS.
    level: float magnitude on the reference's 0..10 scale.
    seed: [2] stateless seed for sign flips and cutout positions.
    cutout_const: cutout half-size at level 10.
    translate_const: translation in pixels at level 10.

  Returns:
    uint8 [H, W, 3].
  """
  fraction = level / _MAX_LEVEL
  enhance = fraction * 1.8 + 0.1
  ops = {
      "AutoContrast":
          lambda: autocontrast(image),
      "Equalize":
          lambda: equalize(image),
      "Invert":
          lambda: invert(image),
      "Rotate":
          lambda: rotate(image, _random_sign(fraction * 30.0, seed)),
      "Posterize":
          lambda: posterize(image, int(fraction * 4)),
      "Solarize":
          lambda: solarize(image, int(fraction * 256)),
      "SolarizeAdd":
          lambda: solarize_add(image, int(fraction * 110)),
      "Color":
          lambda: color(image, enhance),
      "Contrast":
          lambda: contrast(image, enhance),
      "Brightness":
          lambda: brightness(image, enhance),
      "Sharpness":
          lambda: sharpness(image, enhance),
      "ShearX":
          lambda: shear_x(image, _random_sign(fraction * 0.3, seed)),
      "ShearY":
          lambda: shear_y(image, _random_sign(fraction * 0.3, seed)),
      "TranslateX":
          lambda: translate_x(image,
                              _random_sign(fraction * translate_const, seed)),
      "TranslateY":
          lambda: translate_y(image,
                              _random_sign(fraction * translate_const, seed)),
      "Cutout":
          lambda: cutout(image, int(fraction * cutout_const), seed),
  }
  if name not in ops:
    raise ValueError(f"unknown augmentation op {name!r}")
  return tf.ensure_shape(ops[name](), image.shape)


def _as_seed(seed):
  # Stateless splits depend on the seed dtype; int64 everywhere makes a
  # Python-list seed and a tf.data seed give the same result.
  return tf.cast(seed, tf.int64)


def _check_uint8(image):
  if image.dtype != tf.uint8 or image.shape.rank != 3:
    raise ValueError("augmentations take uint8 [H, W, 3] images, got "
                     f"{image.dtype.name} {image.shape}")


def autoaugment(image, seed, policy=POLICY_V0):
  """Applies one uniformly chosen sub-policy of AutoAugment `policy`.

  Each op of the sub-policy is applied with its probability.

  Args:
    image: uint8 [H, W, 3].
    seed: [2] stateless random seed.
    policy: sequence of sub-policies, each a sequence of
      (op name, probability, level); defaults to policy v0.

  Returns:
    uint8 [H, W, 3].
  """
  _check_uint8(image)
  seeds = tf.random.experimental.stateless_split(_as_seed(seed), num=2)
  chosen = tf.random.stateless_uniform([], seeds[0], maxval=len(policy),
                                       dtype=tf.int32)

  def sub_policy_fn(sub_policy):

    def apply_sub_policy():
      result = image
      op_seeds = tf.random.experimental.stateless_split(seeds[1],
                                                        num=2 * len(sub_policy))
      for i, (name, probability, level) in enumerate(sub_policy):
        apply = tf.random.stateless_uniform([], op_seeds[2 * i]) < probability
        # Bind the current image; lambdas would otherwise see the last one.
        result = tf.cond(
            apply,
            lambda r=result, n=name, l=level, s=op_seeds[2 * i + 1]: _apply_op(
                r, n, float(l), s, cutout_const=100, translate_const=250),
            lambda r=result: r)
      return result

    return apply_sub_policy

  return tf.switch_case(chosen, [sub_policy_fn(p) for p in policy])


def randaugment(image, seed, num_layers=2, magnitude=10):
  """Applies `num_layers` uniformly chosen ops, each at `magnitude`.

  Args:
    image: uint8 [H, W, 3].
    seed: [2] stateless random seed.
    num_layers: number of ops applied in sequence.
    magnitude: op strength on the reference's 0..10 scale (may exceed 10).

  Returns:
    uint8 [H, W, 3].
  """
  _check_uint8(image)
  layer_seeds = tf.random.experimental.stateless_split(_as_seed(seed),
                                                       num=num_layers)
  for layer in range(num_layers):
    choice_seed, op_seed = tf.unstack(
        tf.random.experimental.stateless_split(layer_seeds[layer], num=2))
    chosen = tf.random.stateless_uniform([], choice_seed,
                                         maxval=len(RANDAUGMENT_OPS),
                                         dtype=tf.int32)
    image = tf.switch_case(chosen, [
        lambda r=image, n=name: _apply_op(r, n, float(magnitude), op_seed,
                                          cutout_const=40, translate_const=100)
        for name in RANDAUGMENT_OPS
    ])
  return image
