"""Writes serialized examples as `prefix-XXXXX-of-YYYYY` TFRecord shards.

The file naming is the one `TFRecordSource` globs for (`train-*`,
`validation-*`); the other writers here use it.
"""
import os

import tensorflow as tf


def write_tfrecord_shards(output_dir, prefix, examples, num_examples,
                          num_shards):
  """Writes serialized examples to `prefix-XXXXX-of-YYYYY` shards.

  Shards hold contiguous blocks of the example stream whose sizes differ by
  at most one.

  Args:
    output_dir: directory to write into (created if missing).
    prefix: file name prefix, e.g. 'train' or 'validation'.
    examples: iterable of serialized tf.Example bytes, `num_examples` long.
    num_examples: int, how many examples `examples` yields.
    num_shards: int, number of files, 1 <= num_shards <= num_examples.

  Returns:
    The list of written file paths, in shard order.

  Raises:
    ValueError: `num_shards` is out of range, or `examples` ran short.
  """
  if not 1 <= num_shards <= num_examples:
    raise ValueError(
        f'{prefix}: num_shards must be in [1, num_examples={num_examples}], '
        f'got {num_shards}')
  tf.io.gfile.makedirs(output_dir)
  iterator = iter(examples)
  paths = []
  for shard in range(num_shards):
    path = os.path.join(output_dir,
                        f'{prefix}-{shard:05d}-of-{num_shards:05d}')
    begin = shard * num_examples // num_shards
    end = (shard + 1) * num_examples // num_shards
    with tf.io.TFRecordWriter(path) as writer:
      for _ in range(begin, end):
        try:
          writer.write(next(iterator))
        except StopIteration:
          raise ValueError(f'{prefix}: examples ended before '
                           f'num_examples={num_examples}') from None
    paths.append(path)
  return paths
