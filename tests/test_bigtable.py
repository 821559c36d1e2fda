"""BigtableSource against the real Cloud Bigtable emulator.

A small JPEG dataset is written as TFRecords, loaded into the emulator once per
module, and read back through `BigtableSource`; the TFRecord source is the
reference for what must come out.
"""
import collections
import os
import re
import time

from bigtable_emulator import bigtable_emulator  # noqa: F401 (fixture)
from bigtable_emulator import CuttingProxy
from bigtable_emulator import EMULATOR_ENV
from bigtable_emulator import free_port
from bigtable_emulator import load_dataset_into_emulator
import data_helpers
import gin
from google.cloud import bigtable as bigtable_admin
import pytest
import tensorflow as tf

from effnet_gin import configurables
from effnet_gin.data import pipeline
from effnet_gin.data import sources
from effnet_gin.data.sources import bigtable
from effnet_gin.data.sources import bigtable_rows
from effnet_gin.data.sources import tfrecord

# The client announces the emulator once per client it creates.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Connecting to Bigtable emulator:RuntimeWarning")

NUM_TRAIN = 60
NUM_EVAL = 45


def write_jpeg_tfrecords(directory):
  """Writes distinct random 16x16 JPEGs with 1-based labels as TFRecords."""
  data_helpers.write_imagenet_tfrecords(directory, num_train=NUM_TRAIN,
                                        num_eval=NUM_EVAL, image_size=16,
                                        train_shards=3, eval_shards=2,
                                        learnable=False)


def as_multiset(dataset):
  """(image bytes, label) pairs of a dataset of example dicts, sorted."""
  return sorted(
      (bytes(e["image"]), int(e["label"])) for e in dataset.as_numpy_iterator())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("imagenet")
  write_jpeg_tfrecords(str(directory))
  return str(directory)


@pytest.fixture(scope="module")
def loaded(bigtable_emulator, data_dir):  # noqa: F811
  """The emulator, with the dataset loaded into table 'imagenet'."""
  load_dataset_into_emulator(bigtable_emulator, data_dir, table="imagenet")
  bigtable_emulator.data_dir = data_dir
  return bigtable_emulator


@pytest.fixture(scope="module")
def tfrecord_examples(data_dir):
  source = tfrecord.TFRecordSource(data_dir)
  return {
      split: as_multiset(source.examples(split, is_training=False))
      for split in ("train", "eval")
  }


# Key arithmetic.


def test_row_keys_are_the_reference_ones():
  assert bigtable_rows.row_key("train_", 3892) == b"train_0000003892"
  assert bigtable_rows.parse_row_index(b"train_0000003892", b"train_",
                                       10) == 3892
  assert bigtable_rows.parse_row_index(b"train_00003892", b"train_", 10) is None
  assert bigtable_rows.parse_row_index(b"validation_0000000001", b"train_",
                                       10) is None
  assert bigtable_rows.prefix_end(b"train_") == b"train`"
  assert bigtable_rows.prefix_end(b"a\xff\xff") == b"b"
  assert bigtable_rows.prefix_end(b"\xff") == b""


def test_split_index_range_covers_the_prefix_contiguously():
  ranges = bigtable_rows.split_index_range(b"train_", 0, 99, 8, 10)
  assert len(ranges) == 8
  assert ranges[0][0] == b"train_" and ranges[-1][1] == b"train`"
  assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
  assert bigtable_rows.split_index_range(b"v_", 5, 6, 8,
                                         10) == [(b"v_", b"v_0000000006"),
                                                 (b"v_0000000006", b"v`")]


# Reading.


@pytest.mark.parametrize("num_pipelines", [1, 3])
def test_eval_reads_every_row_once_across_pipelines(loaded, tfrecord_examples,
                                                    num_pipelines):
  source = loaded.source(table="imagenet", num_parallel_scans=2)
  shards = [
      as_multiset(
          source.examples("eval", sources.pipeline_context(num_pipelines, i),
                          is_training=False)) for i in range(num_pipelines)
  ]
  assert all(shards)
  assert sorted(sum(shards, [])) == tfrecord_examples["eval"]
  assert source.examples_per_pipeline(
      "eval", num_pipelines) == [len(shard) for shard in shards]
  assert source.num_examples("eval") == NUM_EVAL


def test_eval_order_is_deterministic(loaded):
  source = loaded.source(table="imagenet", num_parallel_scans=3)
  first = [
      bytes(e["image"])
      for e in source.examples("eval", is_training=False).as_numpy_iterator()
  ]
  second = [
      bytes(e["image"])
      for e in source.examples("eval", is_training=False).as_numpy_iterator()
  ]
  assert first == second


def test_training_pass_is_one_epoch_and_repeats(loaded, tfrecord_examples):
  source = loaded.source(table="imagenet", num_parallel_scans=2)
  dataset = source.examples("train", is_training=True, seed=3).repeat(2)
  images = [bytes(e["image"]) for e in dataset.as_numpy_iterator()]
  assert len(images) == 2 * NUM_TRAIN
  assert sorted(images[:NUM_TRAIN]) == sorted(
      image for image, _ in tfrecord_examples["train"])
  assert set(collections.Counter(images).values()) == {2}


def test_build_dataset_batches_bigtable_examples(loaded):
  source = loaded.source(table="imagenet", num_parallel_scans=2)
  eval_batches = list(
      pipeline.build_dataset(split="eval", global_batch_size=8, image_size=16,
                             source=source, num_classes=10))
  assert sum(float(weights.numpy().sum())
             for _, _, weights in eval_batches) == NUM_EVAL
  images, labels = next(
      iter(
          pipeline.build_dataset(split="train", global_batch_size=8,
                                 image_size=16, source=source, num_classes=10,
                                 seed=1)))
  assert images.shape == (8, 16, 16, 3) and labels.shape == (8,)


def test_distributed_eval_batches_cover_the_split(loaded, mirrored_strategy):
  strategy = mirrored_strategy
  source = loaded.source(table="imagenet", num_parallel_scans=2)
  dataset = strategy.distribute_datasets_from_function(
      lambda ctx: pipeline.build_dataset(ctx, split="eval", global_batch_size=8,
                                         image_size=16, source=source,
                                         num_classes=10))
  total_weight = 0.0
  for _, _, weights in dataset:
    total_weight += float(tf.reduce_sum(strategy.gather(weights, axis=0)))
  assert total_weight == NUM_EVAL


def test_source_is_gin_configurable(loaded):
  gin.parse_config([
      f"effnet_gin.data.BigtableSource.project = '{loaded.project}'",
      f"effnet_gin.data.BigtableSource.instance = '{loaded.instance}'",
      "effnet_gin.data.BigtableSource.table = 'imagenet'",
      "effnet_gin.data.BigtableSource.num_parallel_scans = 2",
  ])
  source = configurables.BigtableSource()
  assert source.num_examples("eval") == NUM_EVAL
  assert source.num_examples("train") is None  # Not cheap for ImageNet.
  assert sum(source.examples_per_pipeline("train", 2)) == NUM_TRAIN


def test_more_pipelines_than_rows(loaded):
  source = loaded.source(table="imagenet", num_parallel_scans=1)
  counts = source.examples_per_pipeline("eval", 50)
  assert counts == [1] * NUM_EVAL + [0] * (50 - NUM_EVAL)
  assert not list(
      source.examples("eval", sources.pipeline_context(50, 49),
                      is_training=False))
  with pytest.raises(ValueError, match="pipeline 49 of 50 has no"):
    source.examples("eval", sources.pipeline_context(50, 49), is_training=True)


def test_keys_without_index_split_on_sample_keys_for_one_pipeline(loaded):
  admin = bigtable_admin.Client(project=loaded.project, admin=True)
  table = admin.instance(loaded.instance).table("named")
  table.create(column_families={"tfexample": None})
  records = data_helpers.read_records(loaded.data_dir, "validation-*")
  rows = []
  for i, record in enumerate(records):
    row = table.direct_row(f"validation_img{i:03d}".encode())
    row.set_cell("tfexample", b"example", record)
    rows.append(row)
  assert all(status.code == 0 for status in table.mutate_rows(rows))
  source = loaded.source(table="named")
  assert len(as_multiset(source.examples("eval",
                                         is_training=False))) == (NUM_EVAL)
  with pytest.raises(ValueError, match="not .*zero-filled index"):
    source.examples("eval", sources.pipeline_context(2, 0), is_training=False)


# Errors.


def test_unreachable_emulator_fails_fast_naming_host(monkeypatch):
  address = f"127.0.0.1:{free_port()}"
  monkeypatch.setenv(EMULATOR_ENV, address)
  source = bigtable.BigtableSource("my-project", "my-instance",
                                   connect_timeout=2.0)
  started = time.monotonic()
  with pytest.raises(ConnectionError) as error:
    source.examples("eval", is_training=False)
  assert time.monotonic() - started < 20
  for name in (address, "'my-project'", "'my-instance'", "'imagenet'"):
    assert name in str(error.value)


def test_missing_table_is_named(loaded):
  source = loaded.source(table="no_such_table")
  with pytest.raises(ValueError, match="'no_such_table'.*does not exist"):
    source.examples("train", is_training=True)


def test_empty_prefix_is_named(loaded):
  source = loaded.source(table="imagenet", eval_prefix="minival_")
  with pytest.raises(ValueError,
                     match="No rows with prefix 'minival_'.*'imagenet'"):
    source.examples("eval", is_training=False)


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="instance"):
    bigtable.BigtableSource("p", "")
  with pytest.raises(ValueError, match="num_parallel_scans"):
    bigtable.BigtableSource("p", "i", num_parallel_scans=0)


def test_row_without_the_example_column_is_named(loaded, data_dir):
  load_dataset_into_emulator(loaded, data_dir, table="holey")
  admin = bigtable_admin.Client(project=loaded.project, admin=True)
  table = admin.instance(loaded.instance).table("holey")
  table.column_family("other").create()
  row = table.direct_row(b"validation_0000000007")
  row.delete_cell("tfexample", b"example")
  row.set_cell("other", b"note", b"x")
  assert table.mutate_rows([row])[0].code == 0
  source = loaded.source(table="holey", num_parallel_scans=1)
  with pytest.raises(tf.errors.OpError,
                     match=r"validation_0000000007.*tfexample:example"):
    list(source.examples("eval", is_training=False).as_numpy_iterator())


# A connection that drops in the middle of a scan.


def test_scan_resumes_after_dropped_connection(loaded, tfrecord_examples,
                                               monkeypatch, caplog):
  with CuttingProxy(loaded.port) as proxy:
    monkeypatch.setenv(EMULATOR_ENV, proxy.address)
    source = loaded.source(table="imagenet", num_parallel_scans=1,
                           ranges_per_scan=1)
    assert len(source.key_ranges("eval")) == 1  # One stream, cut once.
    proxy.arm(cut_after_bytes=20_000)  # About half of the eval rows.
    examples = as_multiset(source.examples("eval", is_training=False))
    assert proxy.cuts == 1
  assert examples == tfrecord_examples["eval"]
  assert "resuming" in caplog.text


def test_read_range_resumes_after_the_last_row_read(loaded, monkeypatch,
                                                    caplog):
  # 16 MB of rows: more than gRPC buffers, so the stream is mid-flight when
  # the connection drops.
  num_rows = 256
  admin = bigtable_admin.Client(project=loaded.project, admin=True)
  table = admin.instance(loaded.instance).table("wide")
  table.create(column_families={"tfexample": None})
  rows = []
  for i in range(num_rows):
    row = table.direct_row(bigtable_rows.row_key("train_", i))
    row.set_cell("tfexample", b"example", os.urandom(64 * 1024))
    rows.append(row)
  assert all(status.code == 0 for status in table.mutate_rows(rows))
  with CuttingProxy(loaded.port) as proxy:
    monkeypatch.setenv(EMULATOR_ENV, proxy.address)
    with loaded.source(table="wide").table_ref.open() as data_table:
      rows = bigtable_rows.read_range(data_table, b"train_", b"train`",
                                      row_filter=None, attempt_timeout=30,
                                      max_retries=2)
      keys = [next(rows).row_key for _ in range(5)]
      proxy.cut_now()
      keys += [row.row_key for row in rows]
  assert keys == [bigtable_rows.row_key("train_", i) for i in range(num_rows)]
  # Rows the client had buffered still arrive; the resume starts after them.
  resumed_after = re.search(r"interrupted after row b'train_(\d+)'",
                            caplog.text)
  assert resumed_after and 4 <= int(resumed_after.group(1)) < num_rows - 1


def test_scan_gives_up_after_bounded_retries(loaded, monkeypatch):
  with CuttingProxy(loaded.port) as proxy:
    monkeypatch.setenv(EMULATOR_ENV, proxy.address)
    source = loaded.source(table="imagenet", max_scan_retries=0)
    ((start, end),) = bigtable_rows.split_index_range(b"validation_", 0, 0, 1,
                                                      10)
    proxy.arm(cut_after_bytes=20_000)
    with pytest.raises(ConnectionError,
                       match=r"'imagenet'.*failed 1 times in a row"):
      list(source.serialized_examples(start, end))


def test_loader_roundtrip_keeps_bytes(loaded, data_dir):
  source = loaded.source(table="imagenet")
  records = data_helpers.read_records(data_dir, "validation-*")
  ((start, end),) = bigtable_rows.split_index_range(b"validation_", 0, 0, 1, 10)
  assert list(source.serialized_examples(start, end)) == records
