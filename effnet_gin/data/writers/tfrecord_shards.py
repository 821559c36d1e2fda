"""Writes serialized examples as `prefix-XXXXX-of-YYYYY` TFRecord shards.

The file naming is the one `TFRecordSource` globs for (`train-*`,
`validation-*`); the other writers here use it. A shard is written under a
temporary name (`.partial-<name>`, which those globs do not match) and
renamed when complete, so a killed writer never leaves a truncated file under
a shard's name: an existing shard is a finished one.
"""
import os

import tensorflow as tf

PARTIAL_PREFIX = ".partial-"


def shard_path(output_dir, prefix, shard, num_shards):
  """The path of shard `shard` of `num_shards`: `prefix-XXXXX-of-YYYYY`."""
  return os.path.join(output_dir, f"{prefix}-{shard:05d}-of-{num_shards:05d}")


def check_num_shards(prefix, num_shards, num_examples):
  """Raises ValueError unless 1 <= num_shards <= num_examples."""
  if not 1 <= num_shards <= num_examples:
    raise ValueError(
        f"{prefix}: num_shards must be in [1, num_examples={num_examples}], "
        f"got {num_shards}")


def shard_bounds(shard, num_examples, num_shards):
  """[begin, end) of shard `shard`'s block of a stream of `num_examples`.

  Blocks are contiguous, in order, and differ in size by at most one.

  Args:
    shard: int, 0 <= shard < num_shards.
    num_examples: int, length of the whole stream.
    num_shards: int, number of blocks.

  Returns:
    (begin, end) indices into the stream.
  """
  return (shard * num_examples // num_shards,
          (shard + 1) * num_examples // num_shards)


def write_shard(path, examples):
  """Writes serialized examples to `path` atomically (temp name + rename).

  The records go to `.partial-<name>` next to `path` (overwriting one a
  killed run left), which is renamed to `path` once closed. Two writers of
  the same shard at once are not supported.

  Args:
    path: the shard's final path (local or `gs://`).
    examples: iterable of serialized tf.Example bytes.

  Returns:
    int, the number of records written.
  """
  directory, name = os.path.split(path)
  partial = os.path.join(directory, PARTIAL_PREFIX + name)
  count = 0
  with tf.io.TFRecordWriter(partial) as writer:
    for example in examples:
      writer.write(example)
      count += 1
  tf.io.gfile.rename(partial, path, overwrite=True)
  return count


def write_tfrecord_shards(output_dir, prefix, examples, num_examples,
                          num_shards):
  """Writes serialized examples to `prefix-XXXXX-of-YYYYY` shards.

  Shards hold contiguous blocks of the example stream whose sizes differ by
  at most one (`shard_bounds`); each is written by `write_shard`.

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
  check_num_shards(prefix, num_shards, num_examples)
  tf.io.gfile.makedirs(output_dir)
  iterator = iter(examples)

  def block(size):
    for _ in range(size):
      try:
        yield next(iterator)
      except StopIteration:
        raise ValueError(f"{prefix}: examples ended before "
                         f"num_examples={num_examples}") from None

  paths = []
  for shard in range(num_shards):
    path = shard_path(output_dir, prefix, shard, num_shards)
    begin, end = shard_bounds(shard, num_examples, num_shards)
    write_shard(path, block(end - begin))
    paths.append(path)
  return paths
