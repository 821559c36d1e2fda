"""Image preprocessing for training and eval, as in the reference EfficientNet.

Pure tensor functions (no randomness outside the `seed` argument), so a
result is the same eagerly and inside tf.data. Their settings come as a
`Preprocessing` (bound in gin as `effnet_gin.data.Preprocessing`; the top
hands one instance to both `build_dataset` and the exporter). They accept an image as
  * tf.string scalar: encoded bytes. JPEGs are decoded and cropped in one fused
    op (`decode_and_crop_jpeg`), which decodes only the needed region; other
    formats (PNG, GIF, BMP, WebP) are decoded fully, then cropped, giving the
    same pixels (the reference reads JPEG only).
  * uint8 [H, W, 3] (or [H, W, 1], repeated to RGB): already decoded pixels.
Encoded images are first checked against the decode budget
(`Preprocessing.max_image_pixels`, 40 megapixels by default) from their
header (`image_header`), so a decompression bomb fails before it is decoded.

Train: `sample_distorted_bounding_box` crop (by default min object covered
0.1, aspect 3/4..4/3, area 0.08..1, 10 attempts), falling back to the eval
center crop when no acceptable crop was sampled; resize; random horizontal
flip. Eval: center crop of int(S / (S + 32) * min(h, w)) pixels, resize.
The default resize is the reference's TF1 `resize_bicubic`; with it, eval
outputs equal the reference's to float rounding.
Outputs are float32 [S, S, 3] on the 0..255 scale, not clipped: bicubic
overshoots a little past 0 and 255, as in the reference.
Mean/std normalisation is the model's first layer (the per-variant table
`effnet_gin.model.specs.INPUT_NORMALIZATIONS`).
"""
import dataclasses
import numbers

import tensorflow as tf

from effnet_gin.data import image_header

# The reference's resize: TF1 `resize_bicubic` with align_corners=False and
# half_pixel_centers=False. TF2's 'bicubic' samples at half-pixel centres
# with another kernel: 1-5 levels apart on average on photographs.
TF1_BICUBIC = "tf1_bicubic"
# The reference's resize for EfficientNet-Lite and -EdgeTPU ("for easier
# post-quantization"): TF1 `resize_bilinear`, likewise without half-pixel
# centres.
TF1_BILINEAR = "tf1_bilinear"
RESIZE_METHODS = (TF1_BICUBIC, TF1_BILINEAR, "bicubic", "bilinear", "area",
                  "lanczos3", "lanczos5", "gaussian", "mitchellcubic",
                  "nearest")


def _check_range(name, value, low, high, *, open_low):
  """A (min, max) pair with low < or <= min <= max <= high, as a tuple."""
  try:
    pair = tuple(float(v) for v in value)
  except (TypeError, ValueError):
    pair = ()
  in_bounds = len(pair) == 2 and pair[0] <= pair[1] <= high and (
      pair[0] > low if open_low else pair[0] >= low)
  if not in_bounds:
    bound = "<" if open_low else "<="
    raise ValueError(f"Preprocessing.{name} must be a pair (min, max) with "
                     f"{low} {bound} min <= max <= {high}, got {value!r}")
  return pair


def _is_number(value):
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How images are cropped and resized; the defaults are the reference's.

  One instance configures the training crop, the eval crop and the serving
  signature alike; `configurables.Preprocessing()` is the gin-bound one.

  Attributes:
    area_range: (min, max) fraction of the image's area a training crop
      covers, 0 < min <= max <= 1.
    aspect_ratio_range: (min, max) width / height of a training crop, > 0.
    min_object_covered: fraction of the whole image a training crop must
      cover, in [0, 1].
    max_attempts: training crops sampled before falling back to the eval
      center crop, >= 1.
    eval_crop_padding: the eval crop keeps S / (S + padding) of the short side
      (S the output size); 0 keeps all of it. Pixels, >= 0. The reference's
      32 keeps 87.5% at 224 px but only 50% at 32 px. (A later revision of
      the reference derives the padding as round(S / 7), equal at 224 px.)
    eval_crop_fraction: if set, the eval crop keeps this fraction of the short
      side instead, in (0, 1], whatever S is.
    resize_method: 'tf1_bicubic' (the reference's for most variants),
      'tf1_bilinear' (the reference's for Lite and EdgeTPU; the configs
      bind each variant's own, `effnet_gin.model.variant_resize_method`), or
      a `tf.image.resize` method ('bicubic', 'bilinear', 'area', ...).
    max_image_pixels: the decode budget: an encoded image whose header
      declares more pixels (width x height) is refused before decoding, with
      an InvalidArgumentError naming its size and this budget
      (`image_header`). None decodes any size TensorFlow accepts. Applies
      to the input pipeline, the serving signature and `bin/predict`.
    max_batch_pixels: the budget of one batch the serving signature decodes
      (the pixels its images declare in all); None bounds only each image.

  Raises:
    ValueError: naming the first attribute out of range.
  """
  area_range: tuple = (0.08, 1.0)
  aspect_ratio_range: tuple = (3 / 4, 4 / 3)
  min_object_covered: float = 0.1
  max_attempts: int = 10
  eval_crop_padding: int = 32
  eval_crop_fraction: float | None = None
  resize_method: str = TF1_BICUBIC
  max_image_pixels: int | None = image_header.DEFAULT_MAX_IMAGE_PIXELS
  max_batch_pixels: int | None = image_header.DEFAULT_MAX_BATCH_PIXELS

  def __post_init__(self):
    # Gin gives lists; tuples keep instances hashable and comparable.
    object.__setattr__(
        self, "area_range",
        _check_range("area_range", self.area_range, 0.0, 1.0, open_low=True))
    object.__setattr__(
        self, "aspect_ratio_range",
        _check_range("aspect_ratio_range", self.aspect_ratio_range, 0.0,
                     float("inf"), open_low=True))
    if not (_is_number(self.min_object_covered) and
            0 <= self.min_object_covered <= 1):
      raise ValueError("Preprocessing.min_object_covered must be in [0, 1], "
                       f"got {self.min_object_covered!r}")
    for name in ("max_attempts", "eval_crop_padding"):
      value, minimum = getattr(self, name), int(name == "max_attempts")
      if not (isinstance(value, numbers.Integral) and
              not isinstance(value, bool) and value >= minimum):
        raise ValueError(f"Preprocessing.{name} must be an integer >= "
                         f"{minimum}, got {value!r}")
    fraction = self.eval_crop_fraction
    if fraction is not None and not (_is_number(fraction) and
                                     0 < fraction <= 1):
      raise ValueError("Preprocessing.eval_crop_fraction must be None or in "
                       f"(0, 1], got {fraction!r}")
    for name in ("max_image_pixels", "max_batch_pixels"):
      value = getattr(self, name)
      if value is not None and not (isinstance(value, numbers.Integral) and
                                    not isinstance(value, bool) and value > 0):
        raise ValueError(f"Preprocessing.{name} must be None or an integer "
                         f">= 1 (pixels), got {value!r}")
    if self.resize_method not in RESIZE_METHODS:
      raise ValueError(f"Preprocessing.resize_method must be one of "
                       f"{RESIZE_METHODS}, got {self.resize_method!r}")

  def eval_crop_share(self, image_size):
    """The fraction of the short side the eval crop keeps at size S."""
    if self.eval_crop_fraction is not None:
      return float(self.eval_crop_fraction)
    return image_size / (image_size + self.eval_crop_padding)


# The reference's settings, for callers that pass none.
REFERENCE = Preprocessing()


def center_crop_window(shape, crop_share):
  """The eval crop window of an image.

  Args:
    shape: int32 [>=2] tensor, the image's (height, width, ...).
    crop_share: float in (0, 1], the fraction of the short side kept
      (`Preprocessing.eval_crop_share`).

  Returns:
    int32 [4] (offset_y, offset_x, size, size) with
    size = max(1, int(crop_share * min(height, width))) in float32, as the
    reference computes it, and offsets ((height|width) - size + 1) // 2.
  """
  height_width = tf.cast(shape[:2], tf.int32)
  crop_size = tf.cast(
      tf.constant(crop_share, tf.float32) *
      tf.cast(tf.reduce_min(height_width), tf.float32), tf.int32)
  # Images of a few pixels would otherwise get an empty crop.
  crop_size = tf.maximum(crop_size, 1)
  offsets = (height_width - crop_size + 1) // 2
  return tf.concat([offsets, tf.fill([2], crop_size)], axis=0)


def distorted_crop_window(shape, seed, options=REFERENCE):
  """Samples the Inception-style random crop window of an image.

  Args:
    shape: int32 [3] tensor, the image's (height, width, channels).
    seed: int32/int64 [2] tensor, the stateless random seed.
    options: a `Preprocessing`: its area, aspect, coverage and attempts.

  Returns:
    int32 [4] (offset_y, offset_x, height, width). When every attempt failed
    this is the whole image, which `train_crop_window` replaces.
  """
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.cast(shape,
              tf.int32), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
      seed=seed, min_object_covered=options.min_object_covered,
      aspect_ratio_range=options.aspect_ratio_range,
      area_range=options.area_range, max_attempts=options.max_attempts,
      use_image_if_no_bounding_boxes=True)
  return tf.stack([begin[0], begin[1], size[0], size[1]])


def train_crop_window(shape, image_size, seed, options=REFERENCE):
  """The training crop window: a distorted crop, else the eval center crop.

  The reference treats a sampled crop that equals the whole image as a failed
  sample (that is what `sample_distorted_bounding_box` returns after
  `max_attempts` misses) and center-crops instead.

  Args:
    shape: int32 [3] tensor, the image's (height, width, channels).
    image_size: int, the output resolution S.
    seed: [2] stateless random seed.
    options: a `Preprocessing`.

  Returns:
    int32 [4] (offset_y, offset_x, height, width) inside the image.
  """
  window = distorted_crop_window(shape, seed, options)
  whole_image = tf.reduce_all(tf.equal(window[2:], shape[:2]))
  center_crop = center_crop_window(shape, options.eval_crop_share(image_size))
  return tf.where(whole_image, center_crop, window)


def _to_rgb(image):
  """uint8 [H, W, 1 or 3] -> uint8 [H, W, 3]."""
  if image.shape.rank != 3 or image.shape[-1] not in (1, 3):
    raise ValueError("decoded images must be uint8 [H, W, 1 or 3], got shape "
                     f"{image.shape}")
  if image.shape[-1] == 1:
    image = tf.image.grayscale_to_rgb(image)
  return image


def resize(image, image_size, method=TF1_BICUBIC):
  """Resizes an image to [S, S, 3] float32, not clipped.

  Args:
    image: [H, W, 3] uint8 or float.
    image_size: int, output resolution S.
    method: one of RESIZE_METHODS.

  Returns:
    float32 [S, S, 3].
  """
  size = [image_size, image_size]
  if method == TF1_BICUBIC:
    # The raw op is what tf.compat.v1.image.resize_bicubic runs, without its
    # deprecation warning; it reads uint8 and returns float32.
    resized = tf.raw_ops.ResizeBicubic(images=image[tf.newaxis], size=size,
                                       align_corners=False,
                                       half_pixel_centers=False)
  elif method == TF1_BILINEAR:
    resized = tf.raw_ops.ResizeBilinear(images=image[tf.newaxis], size=size,
                                        align_corners=False,
                                        half_pixel_centers=False)
  else:
    resized = tf.image.resize(image[tf.newaxis], size, method=method)
  # 'nearest' keeps the input dtype.
  return tf.cast(resized[0], tf.float32)


def _crop_and_resize(image, image_size, crop_window_fn, options):
  """Crops `image` at `crop_window_fn(shape)` and resizes it to S.

  Encoded images are checked against `options.max_image_pixels` from their
  header before they are decoded.

  Args:
    image: tf.string scalar (encoded) or uint8 [H, W, 1 or 3].
    image_size: int, output resolution S.
    crop_window_fn: maps an int32 [3] image shape to an int32 [4] window.
    options: a `Preprocessing`: its resize method and decode budget.

  Returns:
    float32 [S, S, 3].

  Raises:
    InvalidArgumentError: for an encoded image over the decode budget.
  """

  def crop_pixels(pixels):
    pixels = _to_rgb(pixels)
    window = crop_window_fn(tf.shape(pixels))
    return tf.slice(pixels, tf.stack([window[0], window[1], 0]),
                    tf.stack([window[2], window[3], 3]))

  def crop_jpeg():
    window = crop_window_fn(tf.image.extract_jpeg_shape(image))
    return tf.image.decode_and_crop_jpeg(image, window, channels=3)

  def crop_other_format():
    return crop_pixels(
        tf.io.decode_image(image, channels=3, expand_animations=False))

  if image.dtype == tf.string:
    checked = image_header.check_image_budget(image, options.max_image_pixels)
    with tf.control_dependencies([checked]):
      image = tf.identity(image)
    cropped = tf.cond(tf.io.is_jpeg(image), crop_jpeg, crop_other_format)
  elif image.dtype == tf.uint8:
    cropped = crop_pixels(image)
  else:
    raise ValueError(f"images must be tf.string or tf.uint8, got {image.dtype}")
  return resize(cropped, image_size, options.resize_method)


def preprocess_for_train(image, image_size, seed, options=REFERENCE):
  """Random crop, resize and random horizontal flip.

  Args:
    image: tf.string scalar (encoded) or uint8 [H, W, 1 or 3].
    image_size: int, output resolution S.
    seed: int32/int64 [2] stateless random seed; equal seeds give equal
      outputs.
    options: a `Preprocessing`.

  Returns:
    float32 [S, S, 3] on the 0..255 scale.
  """
  # Stateless splits depend on the seed dtype: fix it so a Python list
  # seed (int32) and a tf.data seed (int64) give the same crops.
  crop_seed, flip_seed = tf.unstack(
      tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=2))
  image = _crop_and_resize(
      image, image_size,
      lambda shape: train_crop_window(shape, image_size, crop_seed, options),
      options)
  return tf.image.stateless_random_flip_left_right(image, flip_seed)


def preprocess_for_eval(image, image_size, options=REFERENCE):
  """Center crop and resize.

  Args:
    image: tf.string scalar (encoded) or uint8 [H, W, 1 or 3].
    image_size: int, output resolution S.
    options: a `Preprocessing`.

  Returns:
    float32 [S, S, 3] on the 0..255 scale.
  """
  crop_share = options.eval_crop_share(image_size)
  return _crop_and_resize(image, image_size,
                          lambda shape: center_crop_window(shape, crop_share),
                          options)
