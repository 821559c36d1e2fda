"""Image preprocessing for training and eval, as in the reference EfficientNet.

Pure tensor functions (no gin, no randomness outside the `seed` argument), so
a result is the same eagerly and inside tf.data. They accept an image as
  * tf.string scalar: encoded bytes. JPEGs are decoded and cropped in one fused
    op (`decode_and_crop_jpeg`), which decodes only the needed region; other
    formats (PNG, GIF, BMP, WebP) are decoded fully, then cropped.
  * uint8 [H, W, 3] (or [H, W, 1], repeated to RGB): already decoded pixels.

Train: `sample_distorted_bounding_box` crop (min object covered 0.1, aspect
3/4..4/3, area 0.08..1, 10 attempts), falling back to the eval center crop
when no acceptable crop was sampled; bicubic resize; random horizontal flip.
Eval: center crop of int(S / (S + 32) * min(h, w)) pixels, bicubic resize.
Outputs are float32 [S, S, 3] in [0, 255] (clipped after bicubic overshoot).
Mean/std normalisation (`normalize`) is left to the model.
"""
import tensorflow as tf

CROP_PADDING = 32
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def center_crop_window(shape, image_size):
  """The eval crop window of an image.

  Args:
    shape: int32 [>=2] tensor, the image's (height, width, ...).
    image_size: int, the output resolution S.

  Returns:
    int32 [4] (offset_y, offset_x, size, size) with
    size = max(1, int(S / (S + 32) * min(height, width))).
  """
  # Integer arithmetic: exact, and fewer ops than the reference's float
  # product (this runs for every training image too, see train_crop_window).
  height_width = tf.cast(shape[:2], tf.int32)
  crop_size = tf.reduce_min(height_width) * image_size // (
      image_size + CROP_PADDING)
  # Images of a few pixels would otherwise get an empty crop.
  crop_size = tf.maximum(crop_size, 1)
  offsets = (height_width - crop_size + 1) // 2
  return tf.concat([offsets, tf.fill([2], crop_size)], axis=0)


def distorted_crop_window(shape, seed, *, min_object_covered=0.1,
                          aspect_ratio_range=(3 / 4, 4 / 3),
                          area_range=(0.08, 1.0), max_attempts=10):
  """Samples the Inception-style random crop window of an image.

  Args:
    shape: int32 [3] tensor, the image's (height, width, channels).
    seed: int32/int64 [2] tensor, the stateless random seed.
    min_object_covered: fraction of the whole image the crop must cover.
    aspect_ratio_range: (min, max) width/height ratio of the crop.
    area_range: (min, max) fraction of the image area the crop may cover.
    max_attempts: samples tried before giving up.

  Returns:
    int32 [4] (offset_y, offset_x, height, width). When every attempt failed
    this is the whole image, which `train_crop_window` replaces.
  """
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.cast(shape, tf.int32),
      bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
      seed=seed,
      min_object_covered=min_object_covered,
      aspect_ratio_range=aspect_ratio_range,
      area_range=area_range,
      max_attempts=max_attempts,
      use_image_if_no_bounding_boxes=True)
  return tf.stack([begin[0], begin[1], size[0], size[1]])


def train_crop_window(shape, image_size, seed):
  """The training crop window: a distorted crop, else the eval center crop.

  The reference treats a sampled crop that equals the whole image as a failed
  sample (that is what `sample_distorted_bounding_box` returns after
  `max_attempts` misses) and center-crops instead.

  Args:
    shape: int32 [3] tensor, the image's (height, width, channels).
    image_size: int, the output resolution S.
    seed: [2] stateless random seed.

  Returns:
    int32 [4] (offset_y, offset_x, height, width) inside the image.
  """
  window = distorted_crop_window(shape, seed)
  whole_image = tf.reduce_all(tf.equal(window[2:], shape[:2]))
  return tf.where(whole_image, center_crop_window(shape, image_size), window)


def _to_rgb(image):
  """uint8 [H, W, 1 or 3] -> uint8 [H, W, 3]."""
  if image.shape.rank != 3 or image.shape[-1] not in (1, 3):
    raise ValueError('decoded images must be uint8 [H, W, 1 or 3], got shape '
                     f'{image.shape}')
  if image.shape[-1] == 1:
    image = tf.image.grayscale_to_rgb(image)
  return image


def _resize(image, image_size):
  """Bicubic resize to [S, S, 3] float32, clipped to [0, 255]."""
  image = tf.image.resize(image[tf.newaxis], [image_size, image_size],
                          method=tf.image.ResizeMethod.BICUBIC)[0]
  return tf.clip_by_value(image, 0.0, 255.0)


def _crop_and_resize(image, image_size, crop_window_fn):
  """Crops `image` at `crop_window_fn(shape)` and resizes it to S.

  Args:
    image: tf.string scalar (encoded) or uint8 [H, W, 1 or 3].
    image_size: int, output resolution S.
    crop_window_fn: maps an int32 [3] image shape to an int32 [4] window.

  Returns:
    float32 [S, S, 3] in [0, 255].
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
    return crop_pixels(tf.io.decode_image(image, channels=3,
                                          expand_animations=False))

  if image.dtype == tf.string:
    cropped = tf.cond(tf.io.is_jpeg(image), crop_jpeg, crop_other_format)
  elif image.dtype == tf.uint8:
    cropped = crop_pixels(image)
  else:
    raise ValueError(f'images must be tf.string or tf.uint8, got {image.dtype}')
  return _resize(cropped, image_size)


def preprocess_for_train(image, image_size, seed):
  """Random crop, bicubic resize and random horizontal flip.

  Args:
    image: tf.string scalar (encoded) or uint8 [H, W, 1 or 3].
    image_size: int, output resolution S.
    seed: int32/int64 [2] stateless random seed; equal seeds give equal
      outputs.

  Returns:
    float32 [S, S, 3] in [0, 255].
  """
  # Stateless splits depend on the seed dtype: fix it so a Python list
  # seed (int32) and a tf.data seed (int64) give the same crops.
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(
      tf.cast(seed, tf.int64), num=2))
  image = _crop_and_resize(
      image, image_size,
      lambda shape: train_crop_window(shape, image_size, crop_seed))
  return tf.image.stateless_random_flip_left_right(image, flip_seed)


def preprocess_for_eval(image, image_size):
  """Center crop and bicubic resize.

  Args:
    image: tf.string scalar (encoded) or uint8 [H, W, 1 or 3].
    image_size: int, output resolution S.

  Returns:
    float32 [S, S, 3] in [0, 255].
  """
  return _crop_and_resize(
      image, image_size, lambda shape: center_crop_window(shape, image_size))


def normalize(images):
  """Subtracts the ImageNet mean and divides by the std, per RGB channel.

  Args:
    images: float [..., 3] in [0, 255].

  Returns:
    float32 tensor of the same shape.
  """
  images = tf.cast(images, tf.float32)
  return (images - tf.constant(MEAN_RGB)) / tf.constant(STDDEV_RGB)
