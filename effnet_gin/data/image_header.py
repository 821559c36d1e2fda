"""Image sizes read from the encoded header, before anything is decoded.

A small, highly compressible file can declare an enormous image: a 2.5 MB
JPEG of 13,000 x 13,000 pixels decodes to about 500 MB. The decoders of the
input pipeline (`preprocessing`), the exported serving signature and
`bin/predict` all read the size here first and refuse an image over a pixel
budget (`Preprocessing.max_image_pixels`, and `max_batch_pixels` for one
served batch) before decoding it.

The size comes from the header alone: `tf.image.extract_jpeg_shape` for JPEG
(libjpeg reads the frame header, not the scan), and the IHDR chunk of a PNG,
whose width and height are big-endian 32-bit integers at bytes 16 and 20 (the
PNG specification requires IHDR to come first). Other formats (GIF, BMP,
WebP) are not read: their size counts as unknown (-1) and they pass the
budget unchecked.

Everything here is a TensorFlow op, so it runs eagerly, in tf.data and inside
a saved signature alike; an image over budget raises InvalidArgumentError
naming its size and the budget.
"""
import tensorflow as tf

# The default per-image budget: 40 megapixels (120 MB once decoded to RGB),
# above the largest photographs in ImageNet and common cameras.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
# The default budget of one served batch: 8 images at the per-image budget.
DEFAULT_MAX_BATCH_PIXELS = 320_000_000

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Signature (8), IHDR length (4), "IHDR" (4), width (4), height (4).
_PNG_HEADER_BYTES = 24


def _png_shape(encoded):
  """(height, width) int64 from a PNG's IHDR chunk, or (-1, -1) if short."""

  def read_ihdr():
    width_height = tf.io.decode_raw(tf.strings.substr(encoded, 16, 8), tf.int32,
                                    little_endian=False)
    return tf.cast(tf.reverse(width_height, [0]), tf.int64)

  long_enough = tf.strings.length(encoded) >= _PNG_HEADER_BYTES
  return tf.cond(long_enough, read_ihdr,
                 lambda: tf.constant([-1, -1], tf.int64))


def header_shape(encoded):
  """The (height, width) an encoded image declares, without decoding it.

  Args:
    encoded: tf.string scalar, the bytes of an image file.

  Returns:
    int64 [2] (height, width); (-1, -1) for a format whose header is not
    read here (GIF, BMP, WebP) or a PNG too short to hold its IHDR.

  Raises:
    InvalidArgumentError: for bytes that start as a JPEG but whose header
      is corrupt (libjpeg cannot find the frame size).
  """
  encoded = tf.convert_to_tensor(encoded, tf.string)

  def jpeg_shape():
    return tf.cast(tf.image.extract_jpeg_shape(encoded)[:2], tf.int64)

  def png_or_unknown():
    is_png = tf.equal(tf.strings.substr(encoded, 0, 8), _PNG_SIGNATURE)
    return tf.cond(is_png, lambda: _png_shape(encoded),
                   lambda: tf.constant([-1, -1], tf.int64))

  return tf.cond(tf.io.is_jpeg(encoded), jpeg_shape, png_or_unknown)


def _text(*parts):
  """Joins strings and int or float tensors into one tf.string scalar."""
  pieces = []
  for part in parts:
    if isinstance(part, (str, bytes)) or part.dtype == tf.string:
      pieces.append(part)
    elif part.dtype.is_floating:
      pieces.append(tf.strings.as_string(part, precision=1))
    else:
      pieces.append(tf.strings.as_string(part))
  return tf.strings.join(pieces)


def _size_text(shape):
  """'W x H pixels (M megapixels)' of an int64 [2] (height, width)."""
  megapixels = tf.cast(shape[0] * shape[1], tf.float64) / 1e6
  return _text(shape[1], " x ", shape[0], " pixels (", megapixels,
               " megapixels)")


def _over_budget(budget, per, attribute):
  return (f", over the decode budget of {budget:,} pixels {per} "
          f"(Preprocessing.{attribute}_pixels); refused before decoding")


def check_image_budget(encoded, max_image_pixels, what="image"):
  """Asserts that an encoded image declares at most `max_image_pixels`.

  Args:
    encoded: tf.string scalar, the bytes of an image file.
    max_image_pixels: int, the budget; None checks nothing.
    what: how the error names the image (e.g. a file name).

  Returns:
    int64 [2] (height, width) from the header (see `header_shape`), to
    decode under `tf.control_dependencies` on it.

  Raises:
    InvalidArgumentError: naming the image's size and the budget, when it
      declares more pixels (eagerly at once; in a graph when run).
  """
  shape = header_shape(encoded)
  if max_image_pixels is None:
    return shape
  message = _text(what, " declares ", _size_text(shape),
                  _over_budget(max_image_pixels, "per image", "max_image"))
  check = tf.debugging.Assert(shape[0] * shape[1] <= max_image_pixels,
                              [message])
  with tf.control_dependencies([check]):
    return tf.identity(shape)


def check_batch_budget(image_bytes, max_image_pixels, max_batch_pixels):
  """Asserts every image of a batch, and their total, are within budget.

  Args:
    image_bytes: tf.string [N], encoded images.
    max_image_pixels: int, the per-image budget; None checks none.
    max_batch_pixels: int, the budget of the N images together; None
      checks no total.

  Returns:
    int64 [N, 2], each image's (height, width) from its header, to decode
    under `tf.control_dependencies` on it.

  Raises:
    InvalidArgumentError: naming the largest image (its index) or the total
      and the budget it exceeds.
  """
  shapes = tf.map_fn(header_shape, image_bytes,
                     fn_output_signature=tf.TensorSpec([2], tf.int64))
  # A zero row keeps argmax and gather defined for an empty batch.
  padded = tf.concat([shapes, tf.zeros([1, 2], tf.int64)], 0)
  pixels = tf.maximum(padded[:, 0] * padded[:, 1], 0)
  checks = []
  if max_image_pixels is not None:
    largest = tf.argmax(pixels)
    checks.append(
        tf.debugging.Assert(
            tf.reduce_max(pixels) <= max_image_pixels, [
                _text("image ", largest, " of the batch declares ",
                      _size_text(padded[largest]),
                      _over_budget(max_image_pixels, "per image", "max_image"))
            ]))
  if max_batch_pixels is not None:
    total = tf.reduce_sum(pixels)
    checks.append(
        tf.debugging.Assert(total <= max_batch_pixels, [
            _text("a batch of ",
                  tf.shape(shapes)[0], " images declares ", total,
                  " pixels in all",
                  _over_budget(max_batch_pixels, "per batch", "max_batch"))
        ]))
  with tf.control_dependencies(checks):
    return tf.identity(shapes)
