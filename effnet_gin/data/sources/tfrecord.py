"""Sharded ImageNet-format TFRecord files: `TFRecordSource` and a writer.

Files are sharded per input pipeline, so different hosts read different files
(pipeline i reads files i, i + k, ... of the sorted list). Training shuffles the
file order each epoch and interleaves parallel reads; eval reads its files in
sorted order, one after the other. All I/O goes through TensorFlow file ops,
so `gs://` paths work.
"""
import concurrent.futures
import contextlib
import functools
import os
import threading

import tensorflow as tf

from effnet_gin.data.sources import imagenet_example
from effnet_gin.data.sources import protocol


@contextlib.contextmanager
def naming_corrupt_file(path):
  """Re-raises a DataLossError of reading `path` with `path` in its message."""
  try:
    yield
  except tf.errors.DataLossError as e:
    raise tf.errors.DataLossError(
        None, None,
        f"corrupt or truncated TFRecord file {path}: {e.message}") from e


def _file_size(path):
  try:
    # One stat, no separate exists(): each is a round trip on `gs://`, and
    # this runs for every eval file whenever the eval split is counted.
    return tf.io.gfile.stat(path).length
  except tf.errors.NotFoundError as e:
    raise FileNotFoundError(f"TFRecord file not found: {path}") from e


def count_records(path):
  """Number of records in one TFRecord file, read whole (no cache).

  Args:
    path: a TFRecord file path (local or `gs://`).

  Returns:
    int, the number of records.

  Raises:
    FileNotFoundError: `path` does not exist.
    tf.errors.DataLossError: the file is truncated or corrupt (names `path`).
  """
  _file_size(path)  # Raises FileNotFoundError, naming it.
  return _read_count(path)


def _read_count(path):
  """Reads the whole file at `path`, known to exist, to count its records."""
  with naming_corrupt_file(path):
    return int(
        tf.data.TFRecordDataset(path).reduce(tf.constant(0, tf.int64),
                                             lambda n, _: n + 1))


class RecordCounts:
  """Per-file record counts, keyed by (path, size in bytes); thread-safe.

  Counting reads whole files, so a count is kept for as long as the file
  keeps its name and size. The eval pipeline needs the counts to give every
  input pipeline the same number of batches; the evaluator persists them in
  its model_dir (`evaluation.records.RecordCountCache`), so a restarted
  evaluator does not read the validation files again.
  """

  def __init__(self):
    self._counts = {}
    self._lock = threading.Lock()

  def count(self, path):
    """`count_records(path)`, from the kept counts when known."""
    key = (path, _file_size(path))
    with self._lock:
      if key in self._counts:
        return self._counts[key]
    # The stat above found the file: no second round trip to check it.
    count = _read_count(path)
    with self._lock:
      self._counts[key] = count
    return count

  def count_files(self, paths, max_workers=8):
    """`count` of many files, counted in parallel; returns a list."""
    with concurrent.futures.ThreadPoolExecutor(max_workers) as pool:
      return list(pool.map(self.count, paths))

  def entries(self):
    """The counts kept so far: sorted [(path, size, count), ...]."""
    with self._lock:
      return sorted(
          (path, size, count) for (path, size), count in self._counts.items())

  def remember(self, entries):
    """Takes (path, size, count) entries counted earlier (e.g. by another
    run of the evaluator); a file whose size changed since is counted
    afresh."""
    with self._lock:
      for path, size, count in entries:
        self._counts[(path, int(size))] = int(count)

  def clear(self):
    """Forgets every count."""
    with self._lock:
      self._counts.clear()


# The counts every TFRecordSource of this process shares unless it is given
# its own: gin builds a new source for each pipeline it builds, and the
# evaluator builds one per checkpoint.
PROCESS_RECORD_COUNTS = RecordCounts()


class TFRecordSource(protocol.Source):
  """ImageNet-format TFRecord shards in `data_dir` (local or `gs://`)."""

  def __init__(self, data_dir, *, train_pattern="train-*",
               eval_pattern="validation-*", label_offset=1,
               holdout_train_shards=0, cycle_length=16,
               read_buffer_bytes=8 * 1024 * 1024, record_counts=None):
    """Checks `data_dir`; files are listed when a split is first read.

    Args:
      data_dir: directory holding the TFRecord shards.
      train_pattern: glob pattern of training files inside `data_dir`.
      eval_pattern: glob pattern of eval files inside `data_dir`.
      label_offset: subtracted from stored labels (1 for ImageNet's 1-based
        labels, 0 for 0-based files).
      holdout_train_shards: if > 0, the first N (sorted) training shards are
        the eval split (a "minival" held out of training, the reference
        recommends 20) and are removed from the training split.
      cycle_length: files read concurrently per pipeline when training.
      read_buffer_bytes: read buffer per open file.
      record_counts: the `RecordCounts` eval files are counted with; None
        takes the process's `PROCESS_RECORD_COUNTS`.

    Raises:
      FileNotFoundError: `data_dir` does not exist.
      ValueError: `holdout_train_shards` is negative.
    """
    if not data_dir or not tf.io.gfile.isdir(data_dir):
      raise FileNotFoundError(f"data_dir does not exist: {data_dir!r}")
    if holdout_train_shards < 0:
      raise ValueError("holdout_train_shards must be >= 0, got "
                       f"{holdout_train_shards}")
    self.data_dir = data_dir
    self.record_counts = (PROCESS_RECORD_COUNTS
                          if record_counts is None else record_counts)
    self.train_pattern = train_pattern
    self.eval_pattern = eval_pattern
    self.label_offset = label_offset
    self.holdout_train_shards = holdout_train_shards
    self.cycle_length = cycle_length
    self.read_buffer_bytes = read_buffer_bytes
    self._files = {}

  def _glob(self, pattern):
    files = sorted(tf.io.gfile.glob(os.path.join(self.data_dir, pattern)))
    if not files:
      raise FileNotFoundError(
          f"no files match pattern {pattern!r} in data_dir {self.data_dir!r}")
    return files

  def files(self, split):
    """The sorted files of `split` (holdout applied), as a tuple.

    Listed once per source: globbing `gs://` is slow.

    Raises:
      FileNotFoundError: no file matches the split's pattern.
      ValueError: bad split, or the holdout leaves no training file.
    """
    protocol.check_split(split)
    if split not in self._files:
      self._files[split] = self._list_files(split)
    return self._files[split]

  def _list_files(self, split):
    if not self.holdout_train_shards:
      return tuple(
          self._glob(self.train_pattern if split ==
                     "train" else self.eval_pattern))
    train_files = self._glob(self.train_pattern)
    if self.holdout_train_shards >= len(train_files):
      raise ValueError(
          f"holdout_train_shards={self.holdout_train_shards} leaves no "
          f"training file: only {len(train_files)} match "
          f"{self.train_pattern!r} in {self.data_dir!r}")
    if split == "eval":
      return tuple(train_files[:self.holdout_train_shards])
    return tuple(train_files[self.holdout_train_shards:])

  def pipeline_files(self, split, input_context=None):
    """The files input pipeline `input_context.input_pipeline_id` reads.

    Raises:
      ValueError: fewer files than input pipelines.
    """
    files = self.files(split)
    num_pipelines, pipeline_id = protocol.pipeline_shard(input_context)
    if len(files) < num_pipelines:
      raise ValueError(
          f"{split} split of {self.data_dir!r} has {len(files)} files, fewer "
          f"than the {num_pipelines} input pipelines that must each read "
          "their own files; write more shards")
    return list(files[pipeline_id::num_pipelines])

  def examples(self, split, input_context=None, *, is_training, seed=None):
    """See `Source.examples`; raises FileNotFoundError/ValueError as `files`."""
    files = self.pipeline_files(split, input_context)
    if is_training:
      dataset = tf.data.Dataset.from_tensor_slices(files).shuffle(
          len(files), seed=seed, reshuffle_each_iteration=True)
      # Each record keeps its file's name, for the count of skipped ones.
      dataset = dataset.interleave(
          lambda path: tf.data.TFRecordDataset(
              path, buffer_size=self.read_buffer_bytes).map(lambda record:
                                                            (record, path)),
          cycle_length=min(self.cycle_length,
                           len(files)), num_parallel_calls=tf.data.AUTOTUNE)
      return dataset.map(self._parse_with_file,
                         num_parallel_calls=tf.data.AUTOTUNE)
    # Eval reads the files one after the other, in order.
    dataset = tf.data.TFRecordDataset(files, buffer_size=self.read_buffer_bytes)
    return dataset.map(
        functools.partial(imagenet_example.parse_imagenet_example,
                          label_offset=self.label_offset),
        num_parallel_calls=tf.data.AUTOTUNE)

  def _parse_with_file(self, record, path):
    example = imagenet_example.parse_imagenet_example(
        record, label_offset=self.label_offset)
    return dict(example, file=path)

  def num_examples(self, split):
    """Record count of the eval split (counted once); None for 'train'.

    Training splits are not counted: reading all of ImageNet's training
    shards to count them is not cheap.
    """
    protocol.check_split(split)
    if split == "train":
      return None
    return sum(self.record_counts.count_files(self.files(split)))

  def examples_per_pipeline(self, split, num_input_pipelines):
    """Sums per-file record counts (cached) over each pipeline's files."""
    counts = dict(
        zip(self.files(split),
            self.record_counts.count_files(self.files(split))))
    return [
        sum(counts[path]
            for path in self.pipeline_files(
                split, protocol.pipeline_context(num_input_pipelines, i)))
        for i in range(num_input_pipelines)
    ]
