"""The ImageNet tf.Example format: one labelled image per record.

It is the format the public `imagenet_to_gcs` script writes: features
`image/encoded` (JPEG bytes) and `image/class/label` (int64, 1..1000, label 0
reserved for "background"), which the TFRecord and Bigtable sources parse,
and the descriptive features that script adds (`image/class/synset`,
`image/filename`, `image/height`, `image/width`, `image/channels`,
`image/colorspace`, `image/format`), which nothing here reads. The writers in
`effnet_gin/data/writers/` serialize it.
"""
import tensorflow as tf

_IMAGENET_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
}


def parse_imagenet_example(serialized, *, label_offset=1):
  """Parses one serialized ImageNet-format tf.Example.

  Args:
    serialized: tf.string scalar, a serialized `tf.train.Example` with
      features `image/encoded` and `image/class/label`.
    label_offset: subtracted from the stored label; 1 for the ImageNet
      convention of 1-based labels, 0 for 0-based files.

  Returns:
    {'image': tf.string scalar of encoded image bytes,
     'label': tf.int32 scalar}.
  """
  features = tf.io.parse_single_example(serialized, _IMAGENET_FEATURES)
  label = tf.cast(features["image/class/label"], tf.int32) - label_offset
  return {"image": features["image/encoded"], "label": label}


def _bytes(value):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64(value):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def serialize_imagenet_example(encoded_image, label, *, synset=None,
                               filename=None, height=None, width=None):
  """Serializes one ImageNet-format tf.Example (the inverse of the parser).

  With `synset`, `filename`, `height` and `width` (all four or none) the
  example carries every feature `imagenet_to_gcs` writes: those four as
  `image/class/synset`, `image/filename`, `image/height`, `image/width`,
  and `image/channels` = 3, `image/colorspace` = b'RGB', `image/format` =
  b'JPEG', which then describe `encoded_image`: it must be an RGB JPEG.

  Args:
    encoded_image: bytes of an encoded JPEG (or PNG) image.
    label: int, the label as stored (1-based for ImageNet files).
    synset: str, the class's WordNet id, e.g. 'n01440764'.
    filename: str, the source file's base name.
    height: int, image height in pixels.
    width: int, image width in pixels.

  Returns:
    bytes, the serialized `tf.train.Example`, the same in every process.

  Raises:
    ValueError: some but not all of the four descriptive arguments given.
  """
  feature = {
      "image/encoded": _bytes(encoded_image),
      "image/class/label": _int64(label)
  }
  described = (synset, filename, height, width)
  if any(value is not None for value in described):
    if any(value is None for value in described):
      raise ValueError("give all of synset, filename, height and width, or "
                       f"none; got {described}")
    feature.update({
        "image/class/synset": _bytes(synset.encode()),
        "image/filename": _bytes(filename.encode()),
        "image/height": _int64(height),
        "image/width": _int64(width),
        "image/channels": _int64(3),
        "image/colorspace": _bytes(b"RGB"),
        "image/format": _bytes(b"JPEG"),
    })
  example = tf.train.Example(features=tf.train.Features(feature=feature))
  # Keys in sorted order: the default map order differs between processes,
  # and a resumed conversion must write the bytes an uninterrupted one does.
  return example.SerializeToString(deterministic=True)
