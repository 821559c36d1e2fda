"""Writes a folder of images (one sub-folder per class) as TFRecord shards.

The shards are ImageNet-format tf.Examples that `TFRecordSource` reads; the
class indices are `ImageFolderSource`'s (sorted sub-folder names), listed in
`labels.txt`. `bin/images_to_tfrecords` runs it.
"""
import os
import random

import tensorflow as tf

from effnet_gin.data.sources import image_folder
from effnet_gin.data.sources import imagenet_example
from effnet_gin.data.writers import tfrecord_shards

LABELS_FILE = "labels.txt"


def _read_bytes(path):
  with tf.io.gfile.GFile(path, "rb") as f:
    return f.read()


def convert_image_folder(input_dir, output_dir, *, num_shards, prefix="train",
                         seed=0):
  """Writes an image folder as shuffled ImageNet-format TFRecord shards.

  Image bytes are stored as they are (the pipeline decodes JPEG and other
  formats); labels are stored 1-based as in ImageNet. `labels.txt` in
  `output_dir` lists the class names, line i+1 for label i; converting the
  eval folder next to the train folder checks it against the same list.

  Args:
    input_dir: folder with one sub-folder per class.
    output_dir: where `prefix-XXXXX-of-YYYYY` and labels.txt are written.
    num_shards: number of files.
    prefix: file name prefix ('train' or 'validation').
    seed: seed of the shuffle that mixes classes across shards.

  Returns:
    The list of written shard paths.

  Raises:
    FileNotFoundError: `input_dir` is missing or holds no images.
    ValueError: an existing labels.txt lacks one of the classes, or
      `num_shards` exceeds the image count.
  """
  labels_path = os.path.join(output_dir, LABELS_FILE)
  names = image_folder.class_names(input_dir)
  if tf.io.gfile.exists(labels_path):
    with tf.io.gfile.GFile(labels_path) as f:
      known = f.read().split("\n")[:-1]
    if not set(names) <= set(known):
      raise ValueError(
          f"classes {sorted(set(names) - set(known))} of {input_dir!r} are "
          f"missing from {labels_path!r}")
    names = known
  else:
    tf.io.gfile.makedirs(output_dir)
    with tf.io.gfile.GFile(labels_path, "w") as f:
      f.write("".join(name + "\n" for name in names))
  images = image_folder.list_images(input_dir, names)
  random.Random(seed).shuffle(images)
  serialized = (imagenet_example.serialize_imagenet_example(
      _read_bytes(path), label + 1) for path, label in images)
  return tfrecord_shards.write_tfrecord_shards(output_dir, prefix, serialized,
                                               len(images), num_shards)
