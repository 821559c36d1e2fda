"""Helpers that write small real JPEG TFRecord datasets for tests.

Other test modules import these (trainer, evaluator, Bigtable tests):

    import data_helpers  # tests/ is on sys.path, as for every helper
    info = data_helpers.write_imagenet_tfrecords(str(tmp_path))
    source = TFRecordSource(info['data_dir'])

Files follow the ImageNet layout (`train-XXXXX-of-YYYYY`,
`validation-XXXXX-of-YYYYY`, features `image/encoded` and
`image/class/label` stored 1-based).
"""
import os

import numpy as np
import tensorflow as tf

from effnet_gin.data import sources
from effnet_gin.data.writers import fake_imagenet
from effnet_gin.data.writers import tfrecord_shards

# Grey levels of indexed images: example i is a flat image of level
# _GREY_BASE + _GREY_STEP * i, far enough apart to survive JPEG and resizing.
_GREY_BASE = 8
_GREY_STEP = 4
MAX_INDEXED_EXAMPLES = (255 - _GREY_BASE) // _GREY_STEP + 1


def write_imagenet_tfrecords(directory, num_train=64, num_eval=32,
                             num_classes=10, image_size=32, train_shards=4,
                             eval_shards=2, learnable=True, seed=0):
  """Writes a small ImageNet-format JPEG TFRecord dataset into `directory`.

  Args:
    directory: output directory (created if missing).
    num_train: training examples.
    num_eval: validation examples.
    num_classes: label range (<= 64 when learnable).
    image_size: square image side in pixels.
    train_shards: number of train-* files.
    eval_shards: number of validation-* files.
    learnable: coloured shapes per class (True) or random noise (False).
    seed: selects a different generated dataset.

  Returns:
    dict with 'data_dir', 'train_files', 'eval_files', 'num_train',
    'num_eval', 'num_classes', 'train_labels', 'eval_labels' (0-based labels
    in file order).
  """
  return fake_imagenet.write_fake_imagenet(
      str(directory), num_train=num_train, num_eval=num_eval,
      num_classes=num_classes, image_size=image_size, train_shards=train_shards,
      eval_shards=eval_shards, kind="learnable" if learnable else "random",
      seed=seed)


def indexed_grey_level(index):
  """The grey level of indexed example `index`."""
  return _GREY_BASE + _GREY_STEP * index


def index_of_image(image):
  """Recovers the index of an indexed example from any crop/resize of it.

  Args:
    image: array-like [H, W, 3] pixels of an indexed example.

  Returns:
    int, the example index.
  """
  return int(round((float(np.mean(image)) - _GREY_BASE) / _GREY_STEP))


def write_indexed_tfrecords(directory, num_examples, num_shards, num_classes,
                            prefix="validation", image_size=(20, 28)):
  """Writes examples whose index can be read back from their pixels.

  Example i is a flat grey JPEG of level `indexed_grey_level(i)` with stored
  label (i % num_classes) + 1, so tests can check that every example arrives
  exactly once, with its 0-based label i % num_classes.

  Args:
    directory: output directory.
    num_examples: at most MAX_INDEXED_EXAMPLES.
    num_shards: number of files.
    num_classes: label range.
    prefix: file name prefix.
    image_size: (height, width) of the images.

  Returns:
    list of written file paths.
  """
  if num_examples > MAX_INDEXED_EXAMPLES:
    raise ValueError(f"at most {MAX_INDEXED_EXAMPLES} indexed examples")
  height, width = image_size

  def examples():
    for index in range(num_examples):
      image = tf.fill([height, width, 3],
                      tf.constant(indexed_grey_level(index), tf.uint8))
      yield sources.serialize_imagenet_example(
          tf.io.encode_jpeg(image, quality=95).numpy(), index % num_classes + 1)

  return tfrecord_shards.write_tfrecord_shards(str(directory), prefix,
                                               examples(), num_examples,
                                               num_shards)


def write_records(path, records):
  """Writes raw serialized records to one TFRecord file; returns `path`."""
  tf.io.gfile.makedirs(os.path.dirname(str(path)))
  with tf.io.TFRecordWriter(str(path)) as writer:
    for record in records:
      writer.write(record)
  return str(path)


def read_records(data_dir, pattern):
  """The raw records of the files matching `pattern` in `data_dir`, in order.

  Files are read in sorted order, as the sources and the loader read them.
  """
  paths = sorted(tf.io.gfile.glob(os.path.join(str(data_dir), pattern)))
  return [record.numpy() for record in tf.data.TFRecordDataset(paths)]
