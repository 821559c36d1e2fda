"""Cloud Bigtable as a source of ImageNet examples (`BigtableSource`).

The table layout is the reference one: one serialized ImageNet tf.Example per
row, in column family `tfexample`, qualifier `example`, under row keys made of
a split prefix and a zero-filled index (`train_0000003892`,
`validation_0000000017`); `writers.tfrecords_to_bigtable` writes such tables.

Reading. Every input pipeline cuts the split's key range into the same list of
index ranges (the first and last keys of the prefix are looked up, so every
host computes identical boundaries), takes ranges i, i + n, ... of them, and
streams `num_parallel_scans` ranges at a time with the google-cloud-bigtable
data client, each scan a `tf.data.Dataset.from_generator` under a parallel
`interleave`. Training shuffles the range order each epoch; eval reads each
row of the prefix exactly once across all pipelines.

A scan that loses its connection resumes just after the last row it yielded
(`bigtable_rows.read_range`). Clients are created inside each generator call
(gRPC channels must not cross a fork) and closed when the scan ends.
"""
import functools

import tensorflow as tf

from effnet_gin.data.sources import bigtable_rows
from effnet_gin.data.sources import imagenet_example
from effnet_gin.data.sources import protocol


class BigtableSource(protocol.Source):
  """ImageNet tf.Examples stored one per row in a Cloud Bigtable table."""

  def __init__(self, project, instance, *, table="imagenet",
               train_prefix="train_", eval_prefix="validation_",
               column_family="tfexample", column_qualifier="example",
               label_offset=1, num_parallel_scans=8, ranges_per_scan=4,
               app_profile_id=None, connect_timeout=20.0,
               scan_attempt_timeout=600.0, max_scan_retries=5):
    """Stores the table coordinates; nothing is contacted until a read.

    Args:
      project: GCP project of the Bigtable instance (`--bigtable_project`).
      instance: Bigtable instance id (`--bigtable_instance`).
      table: table id (`--bigtable_table`).
      train_prefix: row key prefix of the 'train' split.
      eval_prefix: row key prefix of the 'eval' split.
      column_family: column family holding the serialized examples.
      column_qualifier: column qualifier holding the serialized examples.
      label_offset: subtracted from stored labels (1 for ImageNet).
      num_parallel_scans: key ranges each input pipeline streams at once.
      ranges_per_scan: key ranges per scan and pipeline; more ranges give a
        finer shuffle of the training order.
      app_profile_id: Bigtable app profile for the reads, or None.
      connect_timeout: seconds allowed to locate the split's rows; an
        unreachable instance fails after this long.
      scan_attempt_timeout: seconds one streaming read may stay open before
        it is resumed on a new stream.
      max_scan_retries: consecutive failed attempts of a scan before the
        pipeline fails.

    Raises:
      ValueError: an empty id or prefix, or a non-positive count.
    """
    for name, value in (("project", project), ("instance", instance),
                        ("table", table), ("train_prefix", train_prefix),
                        ("eval_prefix", eval_prefix)):
      if not isinstance(value, str) or not value:
        raise ValueError(f"BigtableSource {name} must be a non-empty string, "
                         f"got {value!r}")
    for name, value in (("num_parallel_scans", num_parallel_scans),
                        ("ranges_per_scan", ranges_per_scan)):
      if value < 1:
        raise ValueError(f"BigtableSource {name} must be >= 1, got {value}")
    self.table_ref = bigtable_rows.TableRef(project, instance, table,
                                            app_profile_id)
    self.prefixes = {"train": train_prefix, "eval": eval_prefix}
    self.column_family = column_family
    self.column_qualifier = column_qualifier.encode()
    self.label_offset = label_offset
    self.num_parallel_scans = num_parallel_scans
    self.ranges_per_scan = ranges_per_scan
    self.connect_timeout = connect_timeout
    self.scan_attempt_timeout = scan_attempt_timeout
    self.max_scan_retries = max_scan_retries

  # Planning: identical key ranges on every input pipeline.

  @functools.lru_cache(maxsize=None)
  def key_ranges(self, split, num_input_pipelines=1):
    """All key ranges of `split`, as every pipeline computes them.

    Args:
      split: 'train' or 'eval'.
      num_input_pipelines: how many pipelines will share the ranges.

    Returns:
      A tuple of (start_key, end_key) bytes pairs covering the split's prefix.

    Raises:
      ConnectionError: the instance cannot be reached in `connect_timeout`.
      ValueError: the table does not exist, the prefix has no rows, or keys
        are not prefix + zero-filled index while several pipelines read.
    """
    protocol.check_split(split)
    prefix = self.prefixes[split]
    start, end = prefix.encode(), bigtable_rows.prefix_end(prefix.encode())
    wanted = (num_input_pipelines * self.num_parallel_scans *
              self.ranges_per_scan)
    with self.table_ref.clear_errors(f"looking up {prefix!r} rows"), \
        self.table_ref.open() as table:
      first = bigtable_rows.first_key(table, start, end, self.connect_timeout)
      if first is None:
        raise ValueError(f"No rows with prefix {prefix!r} (the {split!r} split)"
                         f" in {self.table_ref.describe()}")
      digits = len(first) - len(start)
      first_index = bigtable_rows.parse_row_index(first, start, digits)
      if first_index is not None:
        last = bigtable_rows.last_index(table, prefix, first_index, digits,
                                        self.connect_timeout)
        if last is not None:
          return tuple(
              bigtable_rows.split_index_range(start, first_index, last, wanted,
                                              digits))
      if num_input_pipelines > 1:
        raise ValueError(
            f"Row keys of {self.table_ref.describe()} such as {first!r} are "
            f"not {prefix!r} + a zero-filled index, so "
            f"{num_input_pipelines} input pipelines cannot agree on disjoint "
            "key ranges; rewrite the table with bin/tfrecords_to_bigtable")
      # One pipeline may split on the table's sample keys; they vary between
      # calls, so pipelines could not share them.
      samples = sorted({
          key for key, _ in table.sample_row_keys(
              operation_timeout=self.connect_timeout) if start < key < end
      })
      bounds = [start] + samples + [end]
      return tuple(zip(bounds[:-1], bounds[1:]))

  def pipeline_ranges(self, split, input_context=None):
    """The key ranges this input pipeline reads (round-robin assignment)."""
    num_pipelines, pipeline_id = protocol.pipeline_shard(input_context)
    return self.key_ranges(split, num_pipelines)[pipeline_id::num_pipelines]

  # Reading.

  def examples(self, split, input_context=None, *, is_training, seed=None):
    """See `Source.examples`.

    Raises:
      ConnectionError, ValueError: as `key_ranges`, or when training and this
        pipeline has no rows (fewer rows than input pipelines).
    """
    ranges = self.pipeline_ranges(split, input_context)
    if not ranges and is_training:
      num_pipelines, pipeline_id = protocol.pipeline_shard(input_context)
      raise ValueError(
          f"Input pipeline {pipeline_id} of {num_pipelines} has no "
          f"{split!r} rows in {self.table_ref.describe()}: fewer rows than "
          "input pipelines")
    starts, ends = zip(*ranges) if ranges else ((), ())
    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.constant(starts, tf.string), tf.constant(ends, tf.string)))
    if is_training:
      dataset = dataset.shuffle(len(ranges), seed=seed,
                                reshuffle_each_iteration=True)
    dataset = dataset.interleave(self._scan_dataset,
                                 cycle_length=self.num_parallel_scans,
                                 num_parallel_calls=self.num_parallel_scans,
                                 deterministic=not is_training)
    return dataset.map(
        functools.partial(imagenet_example.parse_imagenet_example,
                          label_offset=self.label_offset),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=not is_training)

  def _scan_dataset(self, start, end):
    return tf.data.Dataset.from_generator(
        self.serialized_examples, args=(start, end),
        output_signature=tf.TensorSpec([], tf.string))

  def serialized_examples(self, start, end):
    """Yields the serialized tf.Examples of rows [start, end), in key order.

    Raises:
      ValueError: a row lacks the family:qualifier column (names the row).
      ConnectionError: as `bigtable_rows.read_range`.
    """
    with self.table_ref.open() as table:
      for row in bigtable_rows.read_range(
          table, start, end, row_filter=bigtable_rows.LATEST_CELLS,
          attempt_timeout=self.scan_attempt_timeout,
          max_retries=self.max_scan_retries, describe=self.table_ref.describe):
        cells = [
            cell for cell in row.cells if cell.family == self.column_family and
            cell.qualifier == self.column_qualifier
        ]
        if not cells:
          columns = sorted({
              f'{c.family}:{c.qualifier.decode(errors="replace")}'
              for c in row.cells
          })
          raise ValueError(
              f"Row {row.row_key!r} of {self.table_ref.describe()} has no "
              f"{self.column_family}:{self.column_qualifier.decode()} cell "
              f"(columns: {columns})")
        yield cells[0].value

  # Counting.

  def num_examples(self, split):
    """Rows of the eval split (keys-only scan, cached); None for 'train'.

    Like `TFRecordSource`, the training split is not counted: a keys-only
    scan of ImageNet's 1.28M training rows is not cheap.
    """
    protocol.check_split(split)
    if split == "train":
      return None
    return sum(self.examples_per_pipeline(split, 1))

  @functools.lru_cache(maxsize=None)
  def _count_range(self, start, end):
    with self.table_ref.clear_errors(f"counting rows [{start!r}, {end!r})"), \
        self.table_ref.open() as table:
      return sum(1 for _ in bigtable_rows.read_range(
          table, start, end, row_filter=bigtable_rows.KEYS_ONLY,
          attempt_timeout=self.scan_attempt_timeout,
          max_retries=self.max_scan_retries, describe=self.table_ref.describe))

  def examples_per_pipeline(self, split, num_input_pipelines):
    """Keys-only row counts of each pipeline's key ranges (cached)."""
    ranges = self.key_ranges(split, num_input_pipelines)
    return [
        sum(
            self._count_range(*key_range)
            for key_range in ranges[pipeline::num_input_pipelines])
        for pipeline in range(num_input_pipelines)
    ]
