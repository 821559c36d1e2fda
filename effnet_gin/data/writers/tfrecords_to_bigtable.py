"""Loads ImageNet-format TFRecord files into a Cloud Bigtable table.

Each record becomes one row: key = split prefix + zero-filled running index of
the record over the split's sorted files (`train_0000003892`), value = the
serialized tf.Example, unchanged, in column `tfexample:example`. This is the
layout `BigtableSource` reads and the reference TPU trainer used.

Resuming. Before writing a split, the loader scans the prefix's row keys (a
keys-only scan) and starts at the first index with no row, skipping that
many records; rows written after the gap by an interrupted run are written
again with the same key, value and timestamp. The writes are idempotent, so a
rerun never duplicates a row or a cell.
"""
import dataclasses
import datetime
import os
import time

from absl import logging
from google.api_core import exceptions as api_exceptions
from google.api_core import retry as api_retry
from google.cloud import bigtable as bigtable_admin
from google.cloud.bigtable import column_family as column_family_lib
from google.cloud.bigtable_admin_v2.types import Table
import tensorflow as tf

from effnet_gin.data.sources import bigtable_rows
from effnet_gin.data.sources import tfrecord

_MAX_MUTATIONS_PER_REQUEST = 100_000
# Every run writes the same cell timestamp, so rewriting a row replaces its
# cell instead of adding a version: loads are idempotent.
_CELL_TIMESTAMP = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


@dataclasses.dataclass(frozen=True)
class SplitLoad:
  """What loading one split did.

  Attributes:
    prefix: the split's row key prefix.
    num_files: TFRecord files read.
    num_rows: rows of the split in the table afterwards.
    num_written: rows written by this run (the rest were already there).
  """
  prefix: str
  num_files: int
  num_rows: int
  num_written: int


def load_tfrecords_to_bigtable(
    *, data_dir, project, instance, table="imagenet", train_pattern="train-*",
    eval_pattern="validation-*", train_prefix="train_",
    eval_prefix="validation_", column_family="tfexample",
    column_qualifier="example", batch_size=256,
    max_batch_bytes=32 * 1024 * 1024, max_write_retries=5, connect_timeout=20.0,
    log_every_seconds=10.0):
  """Writes the train and eval TFRecords of `data_dir` into a Bigtable table.

  Creates the table and the column family when missing and resumes an
  earlier, interrupted load (see the module docstring).

  Args:
    data_dir: directory (local or `gs://`) with the TFRecord files.
    project: GCP project of the Bigtable instance.
    instance: Bigtable instance id.
    table: table id; created if missing.
    train_pattern: glob of the training files inside `data_dir`.
    eval_pattern: glob of the eval files inside `data_dir`.
    train_prefix: row key prefix of training rows.
    eval_prefix: row key prefix of eval rows.
    column_family: column family for the examples; created if missing.
    column_qualifier: column qualifier for the examples.
    batch_size: rows per `mutate_rows` request.
    max_batch_bytes: a request is sent early once its values reach this size.
    max_write_retries: attempts to rewrite rows whose mutation failed.
    connect_timeout: seconds allowed to reach the instance's admin API.
    log_every_seconds: interval of the progress log lines.

  Returns:
    A dict from row prefix to `SplitLoad`, for the splits that had files.

  Raises:
    FileNotFoundError: neither pattern matches a file in `data_dir`.
    ValueError: bad batch sizes, or the instance does not exist.
    ConnectionError: the instance cannot be reached.
    RuntimeError: rows still failed after `max_write_retries` attempts.
    tf.errors.DataLossError: a TFRecord file is corrupt (rows before it are
      written; fix the file and rerun to resume).
  """
  if not 1 <= batch_size <= _MAX_MUTATIONS_PER_REQUEST:
    raise ValueError(f"batch_size must be in [1, {_MAX_MUTATIONS_PER_REQUEST}]"
                     f", got {batch_size}")
  if max_batch_bytes < 1:
    raise ValueError(f"max_batch_bytes must be >= 1, got {max_batch_bytes}")
  files = {
      prefix: sorted(tf.io.gfile.glob(os.path.join(data_dir, pattern)))
      for prefix, pattern in ((train_prefix, train_pattern), (eval_prefix,
                                                              eval_pattern))
  }
  if not any(files.values()):
    raise FileNotFoundError(
        f"No TFRecord files match {train_pattern!r} or {eval_pattern!r} in "
        f"data_dir {data_dir!r}")
  table_ref = bigtable_rows.TableRef(project, instance, table)
  client = bigtable_admin.Client(project=project, admin=True)
  admin_table = client.instance(instance).table(table)
  with table_ref.clear_errors("creating the table"):
    _ensure_table(client.table_admin_client, admin_table, column_family,
                  connect_timeout)
  writer = _RowWriter(admin_table, table_ref, column_family,
                      column_qualifier.encode(), max_write_retries)
  loads = {}
  for prefix, paths in files.items():
    if not paths:
      logging.warning("No files for row prefix %r in %s; skipped.", prefix,
                      data_dir)
      continue
    with table_ref.clear_errors(f"finding where {prefix!r} rows end"), \
        table_ref.open() as data_table:
      resume_index = _first_missing_index(data_table, prefix, connect_timeout)
    logging.info("%s: %d rows already in %s; writing from index %d.", prefix,
                 resume_index, table_ref.describe(), resume_index)
    written = writer.write(prefix, resume_index,
                           _records_after(paths, resume_index), batch_size,
                           max_batch_bytes, log_every_seconds)
    loads[prefix] = SplitLoad(prefix, len(paths), resume_index + written,
                              written)
    logging.info("%s: %d rows in the table, %d written now.", prefix,
                 resume_index + written, written)
  return loads


def _records_after(paths, skip):
  """Yields the records of `paths` in order, after the first `skip` ones.

  Raises:
    tf.errors.DataLossError: a file is corrupt (names the file).
  """
  for path in paths:
    if skip:
      # Whole files already loaded are counted in C++, not read in Python.
      num_records = tfrecord.count_records(path)
      if skip >= num_records:
        skip -= num_records
        continue
    records = tf.data.TFRecordDataset(path).skip(skip)
    skip = 0
    with tfrecord.naming_corrupt_file(path):
      yield from records.as_numpy_iterator()


def _ensure_table(admin, admin_table, column_family, timeout):
  """Creates `admin_table` and/or its column family if missing.

  Args:
    admin: the client's table admin API (called with explicit deadlines).
    admin_table: a `google.cloud.bigtable.table.Table`.
    column_family: the column family id the rows need.
    timeout: seconds for the schema lookup, retries included.
  """
  retry = api_retry.Retry(
      predicate=api_retry.if_exception_type(api_exceptions.ServiceUnavailable),
      timeout=timeout)
  gc_rule = column_family_lib.MaxVersionsGCRule(1)

  def get_schema():
    return admin.get_table(
        request={
            "name": admin_table.name,
            "view": Table.View.SCHEMA_VIEW
        }, retry=retry, timeout=timeout)

  try:
    schema = get_schema()
  except api_exceptions.NotFound:
    logging.info("Creating Bigtable table %s.", admin_table.name)
    try:
      admin_table.create(column_families={column_family: gc_rule})
      return
    except api_exceptions.AlreadyExists:  # Created concurrently.
      schema = get_schema()
  if column_family not in schema.column_families:
    logging.info("Creating column family %r in %s.", column_family,
                 admin_table.name)
    admin_table.column_family(column_family, gc_rule).create()


def _first_missing_index(table, prefix, timeout):
  """The smallest index with no `prefix` + index row (keys-only scan)."""
  start = prefix.encode()
  expected = 0
  rows = bigtable_rows.read_range(table, start, bigtable_rows.prefix_end(start),
                                  row_filter=bigtable_rows.KEYS_ONLY,
                                  attempt_timeout=max(timeout,
                                                      600.0), max_retries=5)
  for row in rows:
    index = bigtable_rows.parse_row_index(row.row_key, start,
                                          bigtable_rows.INDEX_DIGITS)
    if index is None:
      logging.warning("Ignoring row %r: not %r + a %d-digit index.",
                      row.row_key, prefix, bigtable_rows.INDEX_DIGITS)
    elif index == expected:
      expected += 1
    else:
      rows.close()
      break
  return expected


class _RowWriter:
  """Writes numbered rows in `mutate_rows` batches, checking every status."""

  def __init__(self, admin_table, table_ref, column_family, column_qualifier,
               max_retries):
    self._table = admin_table
    self._table_ref = table_ref
    self._column_family = column_family
    self._column_qualifier = column_qualifier
    self._max_retries = max_retries

  def write(self, prefix, first_index, values, batch_size, max_batch_bytes,
            log_every_seconds):
    """Writes `values` as rows prefix + first_index, ...; returns the count."""
    index, batch, batch_bytes = first_index, [], 0
    started = last_log = time.monotonic()
    for value in values:
      row = self._table.direct_row(bigtable_rows.row_key(prefix, index))
      row.set_cell(self._column_family, self._column_qualifier, value,
                   timestamp=_CELL_TIMESTAMP)
      batch.append(row)
      batch_bytes += len(value)
      index += 1
      if len(batch) >= batch_size or batch_bytes >= max_batch_bytes:
        self._mutate(batch)
        batch, batch_bytes = [], 0
      if time.monotonic() - last_log >= log_every_seconds:
        last_log = time.monotonic()
        logging.info("%s: %d rows written (up to %r), %.0f rows/s.", prefix,
                     index - first_index,
                     bigtable_rows.row_key(prefix, index - 1),
                     (index - first_index) / (last_log - started))
    if batch:
      self._mutate(batch)
    return index - first_index

  def _mutate(self, rows):
    """Sends `rows`, resending failed ones; raises if some keep failing."""
    for attempt in range(self._max_retries + 1):
      with self._table_ref.clear_errors("writing rows"):
        statuses = self._table.mutate_rows(rows)
      failed = [(row, status)
                for row, status in zip(rows, statuses)
                if status.code != 0]
      if not failed:
        return
      rows = [row for row, _ in failed]
      logging.warning("%d rows failed to write (first %r: %s); attempt %d.",
                      len(failed), failed[0][0].row_key, failed[0][1].message,
                      attempt + 1)
      time.sleep(min(0.5 * 2**attempt, 10.0))
    details = ", ".join(
        f"{row.row_key!r}: {status.message}" for row, status in failed[:5])
    raise RuntimeError(
        f"{len(failed)} rows could not be written to "
        f"{self._table_ref.describe()} after {self._max_retries + 1} "
        f"attempts: {details}")
