"""The ImageNet tf.Example format: one labelled image per record.

It is the format the public `imagenet_to_gcs` script writes: features
`image/encoded` (JPEG bytes) and `image/class/label` (int64, 1..1000, label 0
reserved for "background"). TFRecord and Bigtable sources parse it; the
writers in `effnet_gin/data/writers/` serialize it.
"""
import tensorflow as tf

_IMAGENET_FEATURES = {
    'image/encoded': tf.io.FixedLenFeature([], tf.string),
    'image/class/label': tf.io.FixedLenFeature([], tf.int64),
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
  label = tf.cast(features['image/class/label'], tf.int32) - label_offset
  return {'image': features['image/encoded'], 'label': label}


def serialize_imagenet_example(encoded_image, label):
  """Serializes one ImageNet-format tf.Example (the inverse of the parser).

  Args:
    encoded_image: bytes of an encoded JPEG (or PNG) image.
    label: int, the label as stored (1-based for ImageNet files).

  Returns:
    bytes, the serialized `tf.train.Example`.
  """
  feature = {
      'image/encoded': tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[encoded_image])),
      'image/class/label': tf.train.Feature(
          int64_list=tf.train.Int64List(value=[int(label)])),
  }
  example = tf.train.Example(features=tf.train.Features(feature=feature))
  return example.SerializeToString()
