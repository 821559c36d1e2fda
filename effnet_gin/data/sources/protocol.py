"""The `Source` protocol every reader of labelled images implements.

A source yields raw labelled examples for one input pipeline; `build_dataset`
(pipeline.py) turns them into batches. Every source implements:

    source.examples(split, input_context=None, *, is_training, seed=None)
        -> tf.data.Dataset of {'image': tf.string scalar (encoded JPEG/PNG/...)
                                        or uint8 [H, W, 3],
                               'label': tf.int32 scalar, 0-based}
    source.num_examples(split) -> int | None
    source.examples_per_pipeline(split, num_input_pipelines) -> list[int]

`examples` is one finite, unbatched, unrepeated pass over *this* input
pipeline's shard (`input_context.input_pipeline_id` of
`input_context.num_input_pipelines`); the shards of all pipelines partition the
split. `split` is 'train' or 'eval'.

`examples_per_pipeline` lets the eval pipeline pad every pipeline to the same
number of batches. The base class counts by iterating (cached per source);
sources that know their sizes override it.

A new reader is a module of `effnet_gin/data/sources/` with one `Source`
subclass, exported from `effnet_gin/data/__init__.py`; a tool that writes the
files it reads goes in `effnet_gin/data/writers/`.
"""
import abc
import threading

import tensorflow as tf

SPLITS = ("train", "eval")


def check_split(split):
  """Raises ValueError unless `split` is 'train' or 'eval'."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def pipeline_shard(input_context):
  """Returns (num_input_pipelines, input_pipeline_id) of an InputContext.

  Args:
    input_context: a `tf.distribute.InputContext` or None (one pipeline).
  """
  if input_context is None:
    return 1, 0
  return input_context.num_input_pipelines, input_context.input_pipeline_id


def pipeline_context(num_input_pipelines, input_pipeline_id):
  """The InputContext of pipeline `input_pipeline_id` of `num_input_pipelines`.

  For code that walks all pipelines' shards (counting, tests); one replica
  per pipeline.
  """
  return tf.distribute.InputContext(num_input_pipelines=num_input_pipelines,
                                    input_pipeline_id=input_pipeline_id,
                                    num_replicas_in_sync=num_input_pipelines)


def shard_sizes(total, num_shards):
  """Sizes of `range(total)` sharded round-robin into `num_shards` shards.

  Shard i holds indices i, i + num_shards, ... as `Dataset.shard` does.

  Args:
    total: int, number of items.
    num_shards: int, number of shards.

  Returns:
    list of `num_shards` ints summing to `total`.
  """
  return [len(range(i, total, num_shards)) for i in range(num_shards)]


# Guards the per-source count caches; counting is rare, so one lock will do.
_COUNT_LOCK = threading.Lock()


class Source(abc.ABC):
  """Yields labelled raw examples of one split for one input pipeline."""

  @abc.abstractmethod
  def examples(self, split, input_context=None, *, is_training, seed=None):
    """One finite pass over this input pipeline's shard of `split`.

    Args:
      split: 'train' or 'eval'.
      input_context: a `tf.distribute.InputContext`, or None for a single
        input pipeline reading the whole split.
      is_training: whether to shuffle the file order and interleave parallel
        reads. Element order follows the dataset's `deterministic` option,
        which `build_dataset` turns off for training unless seeded.
      seed: optional int seed for any shuffling the source does.

    Returns:
      An unbatched, unrepeated `tf.data.Dataset` of dicts
      {'image': tf.string scalar or uint8 [H, W, 3], 'label': tf.int32 scalar}
      with 0-based labels.
    """

  def num_examples(self, split):
    """Number of examples in the whole `split`, or None if not cheaply known."""
    check_split(split)
    return None

  def examples_per_pipeline(self, split, num_input_pipelines):
    """Number of examples each input pipeline's shard of `split` holds.

    This default counts by iterating `examples` once per pipeline (raw,
    undecoded examples) and caches the result on the source; subclasses that
    know their shard sizes override it.

    Args:
      split: 'train' or 'eval'.
      num_input_pipelines: int, how many pipelines share the split.

    Returns:
      A list of `num_input_pipelines` ints, entry i for pipeline i.
    """
    check_split(split)
    key = (split, num_input_pipelines)
    with _COUNT_LOCK:
      # Kept in the instance dict so subclasses need not call __init__.
      counts = self.__dict__.setdefault("_examples_per_pipeline", {})
      if key not in counts:
        counts[key] = [
            _count_elements(
                self.examples(split, pipeline_context(num_input_pipelines, i),
                              is_training=False))
            for i in range(num_input_pipelines)
        ]
      return list(counts[key])


def _count_elements(dataset):
  """Counts the elements of a finite dataset, iterating it if need be."""
  cardinality = int(dataset.cardinality())
  if cardinality >= 0:
    return cardinality
  return int(dataset.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
