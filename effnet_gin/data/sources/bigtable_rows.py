"""Rows of the reference Bigtable layout, shared by the source and the loader.

`BigtableSource` (sources/bigtable.py) reads and
`writers.tfrecords_to_bigtable` writes tables of one serialized ImageNet
tf.Example per row under keys of a split prefix and a zero-filled index
(`train_0000003892`). This module holds what both need: the row-key codec,
key ranges, the table's coordinates (`TableRef`, with clear errors),
keys-only lookups and resumable range scans.

A scan that loses its connection (UNAVAILABLE, ABORTED, DEADLINE_EXCEEDED)
starts again just after the last row key it yielded, so no row is lost or
repeated; the client library's own silent retries are turned off so that this
one resume path is the only one. With BIGTABLE_EMULATOR_HOST set, the client
talks to that emulator with anonymous credentials.
"""
import contextlib
import dataclasses
import os
import time

from absl import logging
from google.api_core import exceptions as api_exceptions
from google.cloud.bigtable import data as bigtable_data
from google.cloud.bigtable.data import row_filters

EMULATOR_ENV = "BIGTABLE_EMULATOR_HOST"
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
  return f"{prefix}{index:0{digits}d}".encode()


def parse_row_index(key, prefix, digits):
  """The index in `key` (bytes) if it is prefix + `digits` digits, else None."""
  suffix = key[len(prefix):]
  if (not key.startswith(prefix) or len(suffix) != digits or
      not suffix.isdigit()):
    return None
  return int(suffix)


def prefix_end(prefix):
  """The smallest key after every key starting with `prefix` (b'' = no end)."""
  stripped = prefix.rstrip(b"\xff")
  if not stripped:
    return b""
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
  inner = [
      row_key(prefix.decode(), first_index + span * i // num_ranges, digits)
      for i in range(1, num_ranges)
  ]
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
    host = (f"{emulator} ({EMULATOR_ENV})"
            if emulator else "bigtable.googleapis.com")
    return (f"table {self.table!r} of Bigtable instance {self.instance!r} in "
            f"project {self.project!r} at {host}")

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
      raise ValueError(f"Not found while {action}: {self.describe()} does not "
                       f"exist ({e.message})") from e
    except api_exceptions.PermissionDenied as e:
      raise PermissionError(f"Permission denied while {action} on "
                            f"{self.describe()}: {e.message}") from e
    except (*TRANSIENT_ERRORS, api_exceptions.RetryError) as e:
      raise ConnectionError(f"Cannot reach {self.describe()} while {action}: "
                            f"{_last_error(e)}") from e


def _last_error(error):
  """The most telling message of a (possibly retried) client error."""
  group = error.__cause__
  attempts = getattr(group, "exceptions", None)
  return f"{error}; last attempt: {attempts[-1]}" if attempts else str(error)


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
  end = f"{prefix}:".encode()  # ':' follows '9': keys with a digit first.
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
        row_ranges=bigtable_data.RowRange(start_key=last_key or start,
                                          end_key=end,
                                          start_is_inclusive=last_key is None),
        row_filter=row_filter)
    stream = table.read_rows_stream(query, operation_timeout=attempt_timeout,
                                    attempt_timeout=attempt_timeout,
                                    retryable_errors=())
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
            f"Reading rows [{start!r}, {end!r}) of {describe()} failed "
            f"{failures} times in a row; last row read: {last_key!r}: "
            f"{e}") from e
      logging.warning(
          "Bigtable scan of [%r, %r) interrupted after row %r "
          "(%s); resuming.", start, end, last_key, e)
      time.sleep(min(0.1 * 2**failures, 5.0))
    finally:
      stream.close()
