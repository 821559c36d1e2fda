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

A scan that loses its connection (UNAVAILABLE, ABORTED, DEADLINE_EXCEEDED)
starts again just after the last row key it yielded, so no row is lost or
repeated; the client library's own silent retries are turned off so that this
one resume path is the only one. Clients are created inside each generator
call (gRPC channels must not cross a fork) and closed when the scan ends.
With BIGTABLE_EMULATOR_HOST set, the client talks to that emulator with
anonymous credentials.
"""
import contextlib
import dataclasses
import functools
import os
import time

from absl import logging
from google.api_core import exceptions as api_exceptions
from google.cloud.bigtable import data as bigtable_data
from google.cloud.bigtable.data import row_filters
import gin
import tensorflow as tf

from effnet_gin.data.sources import imagenet_example
from effnet_gin.data.sources import protocol

EMULATOR_ENV = 'BIGTABLE_EMULATOR_HOST'
INDEX_DIGITS = 10

# Errors after which a scan is resumed; anything else fails the scan.
TRANSIENT_ERRORS = (api_exceptions.ServiceUnavailable,
                    api_exceptions.DeadlineExceeded, api_exceptions.Aborted)

# Row filters: only the newest cell of each column (a rewritten row is read
# once), and row keys without values.
LATEST_CELLS = row_filters.CellsColumnLimitFilter(1)
KEYS_ONLY = row_filters.RowFilterChain(filters=[
    row_filters.CellsRowLimitFilter(1),
    row_filters.StripValueTransformerFilter(True),
])


def row_key(prefix, index, digits=INDEX_DIGITS):
  """The reference row key: `row_key('train_', 3892)` is b'train_0000003892'."""
  return f'{prefix}{index:0{digits}d}'.encode()


def parse_row_index(key, prefix, digits):
  """The index in `key` (bytes) if it is prefix + `digits` digits, else None."""
  suffix = key[len(prefix):]
  if (not key.startswith(prefix) or len(suffix) != digits
      or not suffix.isdigit()):
    return None
  return int(suffix)


def prefix_end(prefix):
  """The smallest key after every key starting with `prefix` (b'' = no end)."""
  stripped = prefix.rstrip(b'\xff')
  if not stripped:
    return b''
  return stripped[:-1] + bytes([stripped[-1] + 1])


def split_index_range(prefix, first_index, last_index, num_ranges, digits):
  """Cuts the keys of `prefix` into contiguous ranges of equal index spans.

  The first range starts at the prefix itself and the last one ends at
  `prefix_end(prefix)`, so together they cover every key of the prefix, even
  ones outside [first_index, last_index].

  Args:
    prefix: bytes, the row key prefix.
    first_index: int, index of the first row.
    last_index: int, index of the last row.
    num_ranges: int >= 1; fewer ranges are returned when the span is smaller.
    digits: int, zero-filled width of the index in row keys.

  Returns:
    A list of (start_key, end_key) bytes pairs, start inclusive, end exclusive.
  """
  span = last_index - first_index + 1
  num_ranges = max(1, min(num_ranges, span))
  inner = [row_key(prefix.decode(), first_index + span * i // num_ranges,
                   digits) for i in range(1, num_ranges)]
  bounds = [prefix] + inner + [prefix_end(prefix)]
  return list(zip(bounds[:-1], bounds[1:]))


@dataclasses.dataclass(frozen=True)
class TableRef:
  """Where a Bigtable table lives, and how to talk to it with clear errors."""
  project: str
  instance: str
  table: str
  app_profile_id: str | None = None

  def describe(self):
    """E.g. "table 'imagenet' of instance 'i' in project 'p' at HOST"."""
    emulator = os.environ.get(EMULATOR_ENV)
    host = (f'{emulator} ({EMULATOR_ENV})' if emulator
            else 'bigtable.googleapis.com')
    return (f'table {self.table!r} of Bigtable instance {self.instance!r} in '
            f'project {self.project!r} at {host}')

  @contextlib.contextmanager
  def open(self):
    """Yields a data-client table; the client is closed afterwards."""
    client = bigtable_data.BigtableDataClient(project=self.project)
    try:
      yield client.get_table(self.instance, self.table,
                             app_profile_id=self.app_profile_id)
    finally:
      client.close()

  @contextlib.contextmanager
  def clear_errors(self, action):
    """Re-raises client errors as ValueError/PermissionError/ConnectionError.

    Args:
      action: what was being done, for the message ("reading rows ...").
    """
    try:
      yield
    except api_exceptions.NotFound as e:
      raise ValueError(f'Not found while {action}: {self.describe()} does not '
                       f'exist ({e.message})') from e
    except api_exceptions.PermissionDenied as e:
      raise PermissionError(f'Permission denied while {action} on '
                            f'{self.describe()}: {e.message}') from e
    except (*TRANSIENT_ERRORS, api_exceptions.RetryError) as e:
      raise ConnectionError(f'Cannot reach {self.describe()} while {action}: '
                            f'{_last_error(e)}') from e


def _last_error(error):
  """The most telling message of a (possibly retried) client error."""
  group = error.__cause__
  attempts = getattr(group, 'exceptions', None)
  return f'{error}; last attempt: {attempts[-1]}' if attempts else str(error)


def first_key(table, start, end, timeout):
  """The first row key in [start, end), or None; a keys-only lookup."""
  query = bigtable_data.ReadRowsQuery(
      row_ranges=bigtable_data.RowRange(start_key=start, end_key=end),
      row_filter=KEYS_ONLY, limit=1)
  rows = table.read_rows(query, operation_timeout=timeout)
  return rows[0].row_key if rows else None


def last_index(table, prefix, first_index, digits, timeout):
  """The largest index of a prefix + index key, found by binary search.

  Args:
    table: a data-client table.
    prefix: str, the row key prefix.
    first_index: int, the index of an existing key.
    digits: int, zero-filled index width.
    timeout: seconds per lookup.

  Returns:
    The index, or None if a key at or above some index is not prefix + digits.
  """
  end = f'{prefix}:'.encode()  # ':' follows '9': keys with a digit first.
  low, high = first_index, 10**digits - 1  # Key `low` exists, none above high.
  while low < high:
    middle = (low + high + 1) // 2
    key = first_key(table, row_key(prefix, middle, digits), end, timeout)
    if key is None:
      high = middle - 1
      continue
    low = parse_row_index(key, prefix.encode(), digits)
    if low is None:
      return None
  return low


def read_range(table, start, end, *, row_filter, attempt_timeout, max_retries,
               describe=str):
  """Yields the rows of [start, end), resuming after dropped connections.

  A transient error restarts the read just after the last row yielded, so
  each row is yielded exactly once. `max_retries` bounds the consecutive
  failed attempts (a reconnection that yields rows resets the count).

  Args:
    table: a data-client table.
    start: bytes, first key (inclusive).
    end: bytes, end key (exclusive), b'' for no end.
    row_filter: a `row_filters.RowFilter` or None.
    attempt_timeout: seconds one streaming attempt may take.
    max_retries: int, consecutive failed attempts allowed before giving up.
    describe: callable naming the table, for error messages.

  Yields:
    Data-client `Row`s in key order.

  Raises:
    ConnectionError: the scan failed `max_retries` + 1 times in a row.
  """
  last_key, failures = None, 0
  while True:
    query = bigtable_data.ReadRowsQuery(
        row_ranges=bigtable_data.RowRange(
            start_key=last_key or start, end_key=end,
            start_is_inclusive=last_key is None),
        row_filter=row_filter)
    stream = table.read_rows_stream(
        query, operation_timeout=attempt_timeout,
        attempt_timeout=attempt_timeout, retryable_errors=())
    try:
      for row in stream:
        failures = 0
        last_key = row.row_key
        yield row
      return
    except TRANSIENT_ERRORS as e:
      failures += 1
      if failures > max_retries:
        raise ConnectionError(
            f'Reading rows [{start!r}, {end!r}) of {describe()} failed '
            f'{failures} times in a row; last row read: {last_key!r}: '
            f'{e}') from e
      logging.warning('Bigtable scan of [%r, %r) interrupted after row %r '
                      '(%s); resuming.', start, end, last_key, e)
      time.sleep(min(0.1 * 2**failures, 5.0))
    finally:
      stream.close()


@gin.configurable(module='effnet_gin.data')
class BigtableSource(protocol.Source):
  """ImageNet tf.Examples stored one per row in a Cloud Bigtable table."""

  def __init__(self, project=gin.REQUIRED, instance=gin.REQUIRED, *,
               table='imagenet', train_prefix='train_',
               eval_prefix='validation_', column_family='tfexample',
               column_qualifier='example', label_offset=1,
               num_parallel_scans=8, ranges_per_scan=4, app_profile_id=None,
               connect_timeout=20.0, scan_attempt_timeout=600.0,
               max_scan_retries=5):
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
    for name, value in (('project', project), ('instance', instance),
                        ('table', table), ('train_prefix', train_prefix),
                        ('eval_prefix', eval_prefix)):
      if not isinstance(value, str) or not value:
        raise ValueError(f'BigtableSource {name} must be a non-empty string, '
                         f'got {value!r}')
    for name, value in (('num_parallel_scans', num_parallel_scans),
                        ('ranges_per_scan', ranges_per_scan)):
      if value < 1:
        raise ValueError(f'BigtableSource {name} must be >= 1, got {value}')
    self.table_ref = TableRef(project, instance, table, app_profile_id)
    self.prefixes = {'train': train_prefix, 'eval': eval_prefix}
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
    start, end = prefix.encode(), prefix_end(prefix.encode())
    wanted = (num_input_pipelines * self.num_parallel_scans
              * self.ranges_per_scan)
    with self.table_ref.clear_errors(f'looking up {prefix!r} rows'), \
        self.table_ref.open() as table:
      first = first_key(table, start, end, self.connect_timeout)
      if first is None:
        raise ValueError(f'No rows with prefix {prefix!r} (the {split!r} split)'
                         f' in {self.table_ref.describe()}')
      digits = len(first) - len(start)
      first_index = parse_row_index(first, start, digits)
      if first_index is not None:
        last = last_index(table, prefix, first_index, digits,
                          self.connect_timeout)
        if last is not None:
          return tuple(split_index_range(start, first_index, last, wanted,
                                         digits))
      if num_input_pipelines > 1:
        raise ValueError(
            f'Row keys of {self.table_ref.describe()} such as {first!r} are '
            f'not {prefix!r} + a zero-filled index, so '
            f'{num_input_pipelines} input pipelines cannot agree on disjoint '
            'key ranges; rewrite the table with bin/tfrecords_to_bigtable')
      # One pipeline may split on the table's sample keys; they vary between
      # calls, so pipelines could not share them.
      samples = sorted({key for key, _ in table.sample_row_keys(
          operation_timeout=self.connect_timeout) if start < key < end})
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
          f'Input pipeline {pipeline_id} of {num_pipelines} has no '
          f'{split!r} rows in {self.table_ref.describe()}: fewer rows than '
          'input pipelines')
    starts, ends = zip(*ranges) if ranges else ((), ())
    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.constant(starts, tf.string), tf.constant(ends, tf.string)))
    if is_training:
      dataset = dataset.shuffle(len(ranges), seed=seed,
                                reshuffle_each_iteration=True)
    dataset = dataset.interleave(
        self._scan_dataset, cycle_length=self.num_parallel_scans,
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
      ConnectionError: as `read_range`.
    """
    with self.table_ref.open() as table:
      for row in read_range(table, start, end, row_filter=LATEST_CELLS,
                            attempt_timeout=self.scan_attempt_timeout,
                            max_retries=self.max_scan_retries,
                            describe=self.table_ref.describe):
        cells = [cell for cell in row.cells
                 if cell.family == self.column_family
                 and cell.qualifier == self.column_qualifier]
        if not cells:
          columns = sorted({f'{c.family}:{c.qualifier.decode(errors="replace")}'
                            for c in row.cells})
          raise ValueError(
              f'Row {row.row_key!r} of {self.table_ref.describe()} has no '
              f'{self.column_family}:{self.column_qualifier.decode()} cell '
              f'(columns: {columns})')
        yield cells[0].value

  # Counting.

  def num_examples(self, split):
    """Rows of the eval split (keys-only scan, cached); None for 'train'.

    Like `TFRecordSource`, the training split is not counted: a keys-only
    scan of ImageNet's 1.28M training rows is not cheap.
    """
    protocol.check_split(split)
    if split == 'train':
      return None
    return sum(self.examples_per_pipeline(split, 1))

  @functools.lru_cache(maxsize=None)
  def _count_range(self, start, end):
    with self.table_ref.clear_errors(f'counting rows [{start!r}, {end!r})'), \
        self.table_ref.open() as table:
      return sum(1 for _ in read_range(
          table, start, end, row_filter=KEYS_ONLY,
          attempt_timeout=self.scan_attempt_timeout,
          max_retries=self.max_scan_retries,
          describe=self.table_ref.describe))

  def examples_per_pipeline(self, split, num_input_pipelines):
    """Keys-only row counts of each pipeline's key ranges (cached)."""
    ranges = self.key_ranges(split, num_input_pipelines)
    return [sum(self._count_range(*key_range)
                for key_range in ranges[pipeline::num_input_pipelines])
            for pipeline in range(num_input_pipelines)]
