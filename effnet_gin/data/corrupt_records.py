"""Skipping undecodable training records, counted, up to a threshold.

With `build_dataset(skip_corrupt=True)` a training record whose image fails
to decode (a corrupt or truncated JPEG) is dropped rather than stopping the
run, and counted: every training pipeline of the process notes into one
`SkipTally` (`PROCESS_TALLY`) how many records it read, how many it skipped
and from which shard (sources that name their files, TFRecordSource). The
trainer logs the running count after each loop and writes it to
TensorBoard (`progress.LoopProgress`), and stops once more than
`max_skipped_fraction` of the records read were skipped (at least one is
always tolerated): `TooManyCorruptRecords` names the count, the fraction and
the shards.

How a failure is caught without failing the pipeline: each record is
decoded in a one-element dataset with `ignore_errors`, concatenated with a
flagged placeholder and cut to its first element, so a record comes out
either decoded or as the placeholder naming its shard; the placeholders are
counted (one `py_function` call per skipped record) and filtered out, and
each batch adds its size to the records read (one call per batch). The
counts cross the tf.data boundary through those calls, whatever strategy
distributes the pipelines; under MultiWorkerMirrored each worker counts its
own pipelines. A file that fails to read (truncated) is cut short with a
logged warning, as before, and not counted: its records never reached a
decoder.
"""
import collections
import threading

from absl import logging
import tensorflow as tf

DEFAULT_MAX_SKIPPED_FRACTION = 0.001


class TooManyCorruptRecords(ValueError):
  """More than the tolerated fraction of training records did not decode."""


class SkipTally:
  """Records read and skipped by the training pipelines; thread-safe."""

  def __init__(self):
    self._lock = threading.Lock()
    self.reset()

  def reset(self, max_skipped_fraction=DEFAULT_MAX_SKIPPED_FRACTION):
    """Forgets the counts; sets the threshold."""
    with self._lock:
      self.active = False
      self.read = 0
      self.skipped = 0
      self.shards = collections.Counter()
      self.max_skipped_fraction = max_skipped_fraction

  def activate(self, max_skipped_fraction):
    """Called by each training pipeline that skips corrupt records."""
    with self._lock:
      self.active = True
      self.max_skipped_fraction = max_skipped_fraction

  def _note_skipped(self, shard):
    shard = shard.numpy().decode(errors="replace") or "an unnamed shard"
    with self._lock:
      self.skipped += 1
      self.read += 1
      self.shards[shard] += 1
    logging.warning("Skipped an undecodable training record of %s", shard)
    return 0

  def _note_read(self, count):
    with self._lock:
      self.read += int(count)
    return 0

  def fraction(self):
    with self._lock:
      return self.skipped / self.read if self.read else 0.0

  def check(self):
    """Raises TooManyCorruptRecords past the threshold."""
    with self._lock:
      read, skipped = self.read, self.skipped
      tolerated = max(1, int(self.max_skipped_fraction * read))
      shards = ", ".join(
          f"{name} ({count})" for name, count in self.shards.most_common(5))
      more = len(self.shards) - 5
    if skipped > tolerated:
      raise TooManyCorruptRecords(
          f"{skipped} of {read} training records ({skipped / read:.2%}) did "
          "not decode, over build_dataset.max_skipped_fraction = "
          f"{self.max_skipped_fraction}; in {shards}"
          f"{f' and {more} more shards' if more > 0 else ''}: repair or "
          "remove those shards, or raise the fraction")


# The tally of this process's training pipelines.
PROCESS_TALLY = SkipTally()


def decode_or_skip(dataset, preprocess, *, image_size, tally=PROCESS_TALLY):
  """Maps `preprocess` over (index, example) elements, skipping failures.

  Args:
    dataset: (index, example dict) elements; the example may hold 'file'.
    preprocess: (index, example) -> (image [S, S, 3] float32, label int32).
    image_size: S.
    tally: the `SkipTally` the skipped records are counted in.

  Returns:
    The (image, label) of the records that decoded; the skipped ones are
    counted and logged.
  """

  def one(index, example):
    decoded = tf.data.Dataset.from_tensors(
        (index, example)).map(lambda i, e: (*preprocess(i, e), True,
                                            tf.constant(""))).ignore_errors()
    flagged = tf.data.Dataset.from_tensors(
        (tf.zeros([image_size, image_size, 3]), tf.constant(0, tf.int32), False,
         example.get("file", tf.constant(""))))
    return decoded.concatenate(flagged).take(1)

  def note(image, label, ok, shard):
    noted = tf.cond(
        ok, lambda: tf.constant(0, tf.int64),
        lambda: tf.py_function(tally._note_skipped, [shard], tf.int64))  # pylint: disable=protected-access
    with tf.control_dependencies([noted]):
      return tf.identity(image), label, tf.identity(ok)

  dataset = dataset.interleave(one, cycle_length=tf.data.AUTOTUNE,
                               num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.map(note).filter(lambda image, label, ok: ok)
  return dataset.map(lambda image, label, ok: (image, label))


def count_batches(dataset, tally=PROCESS_TALLY):
  """Adds each (images, labels) batch's size to the records read."""

  def note(images, labels):
    noted = tf.py_function(
        tally._note_read,  # pylint: disable=protected-access
        [tf.shape(labels, out_type=tf.int64)[0]],
        tf.int64)
    with tf.control_dependencies([noted]):
      return tf.identity(images), labels

  return dataset.map(note)
