"""Writes the generated datasets as ImageNet-format JPEG TFRecords.

The images are those `RandomNoiseSource` (kind='random') and
`LearnableShapesSource` (kind='learnable') generate in-graph
(sources/generated.py), JPEG-encoded, so `TFRecordSource` reads them like
ImageNet files. `bin/make_fake_imagenet` runs it.
"""
import tensorflow as tf

from effnet_gin.data.sources import generated
from effnet_gin.data.sources import imagenet_example
from effnet_gin.data.writers import tfrecord_shards


def _encoded_examples(split, num_examples, *, kind, num_classes, height, width,
                      seed, jpeg_quality):
  """Yields (serialized ImageNet tf.Example, 0-based label) of a split."""

  def encode(index):
    example = generated.generated_example(index, split=split, kind=kind,
                                          num_classes=num_classes,
                                          height=height, width=width, seed=seed)
    return tf.io.encode_jpeg(example["image"], quality=jpeg_quality), \
        example["label"]

  dataset = tf.data.Dataset.range(num_examples).map(
      encode, num_parallel_calls=tf.data.AUTOTUNE).prefetch(8)
  for encoded, label in dataset.as_numpy_iterator():
    serialized = imagenet_example.serialize_imagenet_example(encoded, label + 1)
    yield serialized, int(label)


def write_fake_imagenet(output_dir, *, num_train, num_eval, num_classes,
                        image_size, image_width=None, train_shards, eval_shards,
                        kind="random", seed=0, jpeg_quality=90):
  """Writes generated JPEG TFRecords in the ImageNet format.

  Files are `train-XXXXX-of-YYYYY` and `validation-XXXXX-of-YYYYY`; labels
  are stored 1-based as in ImageNet.

  Args:
    output_dir: directory to write into (created if missing).
    num_train: number of training images.
    num_eval: number of validation images.
    num_classes: number of classes (<= 64 for 'learnable').
    image_size: image height in pixels (and width unless `image_width`).
    image_width: optional image width, e.g. 500 with image_size=375 for
      ImageNet-sized images.
    train_shards: number of training files.
    eval_shards: number of validation files.
    kind: 'random' (noise, random labels) or 'learnable' (coloured shapes).
    seed: int, selects a different generated dataset.
    jpeg_quality: JPEG quality, 0-100.

  Returns:
    dict with 'data_dir', 'train_files', 'eval_files', 'num_train',
    'num_eval', 'num_classes', and 'train_labels' / 'eval_labels': lists of
    0-based labels in file order (shard 0 first).

  Raises:
    ValueError: bad kind, class count or shard count.
  """
  generated.check_kind(kind, num_classes)
  result = {
      "data_dir": output_dir,
      "num_train": num_train,
      "num_eval": num_eval,
      "num_classes": num_classes
  }
  for split, prefix, count, shards in (("train", "train", num_train,
                                        train_shards), ("eval", "validation",
                                                        num_eval, eval_shards)):
    labels = []

    def serialized(split=split, count=count, labels=labels):
      for example, label in _encoded_examples(split, count, kind=kind,
                                              num_classes=num_classes,
                                              height=image_size,
                                              width=image_width or image_size,
                                              seed=seed,
                                              jpeg_quality=jpeg_quality):
        labels.append(label)
        yield example

    result[f"{split}_files"] = tfrecord_shards.write_tfrecord_shards(
        output_dir, prefix, serialized(), count, shards)
    result[f"{split}_labels"] = labels
  return result
