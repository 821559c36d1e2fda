"""Tests of the sources: TFRecord files, generated, TFDS and image folders."""
import os

import gin
import numpy as np
import pytest
import tensorflow as tf

from effnet_gin import configurables
from effnet_gin import data
from effnet_gin.data import sources
from effnet_gin.data.sources import generated
from effnet_gin.data.sources import tfrecord
from effnet_gin.data.writers import fake_imagenet
from effnet_gin.data.writers import images_to_tfrecords
from effnet_gin.data.writers import tfrecord_shards
import data_helpers


def _labels(dataset):
  return [int(example["label"]) for example in dataset]


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("imagenet")
  return data_helpers.write_imagenet_tfrecords(directory, num_train=24,
                                               num_eval=12, num_classes=5,
                                               image_size=16, train_shards=6,
                                               eval_shards=3)


def test_tfrecord_source_shifts_labels_to_zero_based(imagenet_dir):
  source = data.TFRecordSource(imagenet_dir["data_dir"])
  examples = list(source.examples("eval", is_training=False))
  assert [int(e["label"]) for e in examples] == imagenet_dir["eval_labels"]
  assert examples[0]["image"].dtype == tf.string
  assert examples[0]["label"].dtype == tf.int32
  raw = tfrecord.TFRecordSource(imagenet_dir["data_dir"], label_offset=0)
  assert _labels(raw.examples("eval", is_training=False)) == [
      label + 1 for label in imagenet_dir["eval_labels"]
  ]


def test_parse_imagenet_example_round_trips():
  serialized = sources.serialize_imagenet_example(b"jpeg bytes", 1000)
  example = sources.parse_imagenet_example(tf.constant(serialized))
  assert example["image"].numpy() == b"jpeg bytes"
  assert int(example["label"]) == 999


def test_input_pipelines_read_disjoint_files_covering_the_split(imagenet_dir):
  source = data.TFRecordSource(imagenet_dir["data_dir"])
  for num_pipelines in (1, 2, 3, 6):
    contexts = [
        sources.pipeline_context(num_pipelines, i) for i in range(num_pipelines)
    ]
    files = [source.pipeline_files("train", ctx) for ctx in contexts]
    flat = [path for pipeline_files in files for path in pipeline_files]
    assert sorted(flat) == sorted(imagenet_dir["train_files"])
    assert len(set(flat)) == len(flat)
    images = [{
        e["image"].numpy()
        for e in source.examples("train", ctx, is_training=True, seed=1)
    }
              for ctx in contexts]
    assert sum(len(i) for i in images) == 24
    assert len(set.union(*images)) == 24


def test_training_reads_shuffle_file_order_but_eval_is_fixed(imagenet_dir):
  source = data.TFRecordSource(imagenet_dir["data_dir"])
  orders = {
      tuple(_labels(source.examples("train", is_training=True)))
      for _ in range(5)
  }
  assert len(orders) > 1
  eval_orders = {
      tuple(_labels(source.examples("eval", is_training=False)))
      for _ in range(3)
  }
  assert eval_orders == {tuple(imagenet_dir["eval_labels"])}


def test_example_counts(imagenet_dir):
  source = data.TFRecordSource(imagenet_dir["data_dir"])
  assert source.num_examples("eval") == 12
  assert source.num_examples("train") is None
  assert source.examples_per_pipeline("eval", 1) == [12]
  assert source.examples_per_pipeline("eval", 3) == [4, 4, 4]
  assert source.examples_per_pipeline("train", 4) == [8, 8, 4, 4]


def test_holdout_train_shards_become_the_eval_split(imagenet_dir):
  source = data.TFRecordSource(imagenet_dir["data_dir"], holdout_train_shards=2)
  assert source.files("eval") == tuple(imagenet_dir["train_files"][:2])
  assert source.files("train") == tuple(imagenet_dir["train_files"][2:])
  assert _labels(source.examples(
      "eval", is_training=False)) == (imagenet_dir["train_labels"][:8])
  with pytest.raises(ValueError, match="holdout_train_shards=6"):
    data.TFRecordSource(imagenet_dir["data_dir"],
                        holdout_train_shards=6).files("train")


def test_missing_or_empty_data_dir_names_it(tmp_path, imagenet_dir):
  missing = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="nowhere"):
    data.TFRecordSource(missing)
  source = data.TFRecordSource(str(tmp_path))
  with pytest.raises(FileNotFoundError, match=r"'train-\*'.*" + str(tmp_path)):
    source.examples("train", is_training=True)
  source = data.TFRecordSource(imagenet_dir["data_dir"], eval_pattern="val-*")
  with pytest.raises(FileNotFoundError, match=r"'val-\*'"):
    source.examples("eval", is_training=False)


def test_fewer_files_than_pipelines_is_an_error(imagenet_dir):
  source = data.TFRecordSource(imagenet_dir["data_dir"])
  with pytest.raises(ValueError, match="has 3 files, fewer than the 4"):
    source.examples("eval", sources.pipeline_context(4, 0), is_training=False)


def test_bad_split_is_an_error(imagenet_dir):
  with pytest.raises(ValueError, match="'test'"):
    data.TFRecordSource(imagenet_dir["data_dir"]).examples(
        "test", is_training=False)


def test_truncated_tfrecord_count_names_the_file(tmp_path, imagenet_dir):
  with open(imagenet_dir["eval_files"][0], "rb") as f:
    content = f.read()
  path = data_helpers.write_records(tmp_path / "validation-00000-of-00001", [])
  with open(path, "wb") as f:
    f.write(content[:-30])
  with pytest.raises(tf.errors.DataLossError, match="validation-00000-of"):
    tfrecord.count_records(path)


def test_count_records_of_a_missing_file_names_it(tmp_path):
  path = str(tmp_path / "validation-00000-of-00001")
  with pytest.raises(FileNotFoundError, match="validation-00000-of-00001"):
    tfrecord.count_records(path)


def test_write_tfrecord_shards_checks_shard_count(tmp_path):
  with pytest.raises(ValueError, match="num_shards"):
    tfrecord_shards.write_tfrecord_shards(str(tmp_path), "train", [b"x"], 1, 2)


@pytest.mark.parametrize("source_class",
                         [data.RandomNoiseSource, data.LearnableShapesSource])
def test_generated_sources(source_class):
  source = source_class(num_train=10, num_eval=7, num_classes=5, image_size=12)
  assert source.num_examples("eval") == 7
  assert source.examples_per_pipeline("eval", 2) == [4, 3]
  pipelines = [
      list(
          source.examples("eval", sources.pipeline_context(2, i),
                          is_training=False)) for i in range(2)
  ]
  assert [len(p) for p in pipelines] == [4, 3]
  example = pipelines[0][0]
  assert example["image"].dtype == tf.uint8
  assert example["image"].shape == (12, 12, 3)
  assert example["label"].dtype == tf.int32
  labels = [int(e["label"]) for p in pipelines for e in p]
  assert all(0 <= label < 5 for label in labels)
  again = list(
      source.examples("eval", sources.pipeline_context(2, 0),
                      is_training=False))
  np.testing.assert_array_equal(again[0]["image"], example["image"])


@pytest.mark.parametrize(
    "old_name, new_class",
    [("FakeSource", data.RandomNoiseSource),
     ("effnet_gin.data.FakeSource", data.RandomNoiseSource),
     ("SyntheticSource", data.LearnableShapesSource),
     ("effnet_gin.data.SyntheticSource", data.LearnableShapesSource)])
def test_old_gin_names_build_the_renamed_sources_and_warn(
    old_name, new_class, monkeypatch, caplog):
  monkeypatch.setattr(generated, "_WARNED_ALIASES", set())
  gin.clear_config()
  try:
    gin.parse_config(f"""
        {old_name}.num_train = 6
        {old_name}.num_eval = 3
        {old_name}.num_classes = 4
        {old_name}.image_size = 10
        effnet_gin.data.build_dataset.source = @{old_name}()
    """)
    build_source = gin.query_parameter(
        "effnet_gin.data.build_dataset.source").scoped_configurable_fn
    with caplog.at_level("WARNING"):
      source = build_source()
      build_source()
  finally:
    gin.clear_config()
  assert isinstance(source, new_class)
  assert source.kind == new_class.kind
  short_name = old_name.rsplit(".", 1)[-1]
  warnings = [
      r.getMessage() for r in caplog.records if short_name in r.getMessage()
  ]
  assert len(warnings) == 1, warnings
  assert "deprecated" in warnings[0] and new_class.__name__ in warnings[0]
  examples = list(source.examples("train", is_training=False))
  assert len(examples) == 6
  assert examples[0]["image"].shape == (10, 10, 3)
  assert all(0 <= int(e["label"]) < 4 for e in examples)


def test_old_gin_names_still_reject_unknown_parameters():
  gin.clear_config()
  try:
    with pytest.raises(ValueError, match="num_trian"):
      gin.parse_config("effnet_gin.data.FakeSource.num_trian = 6")
  finally:
    gin.clear_config()


def test_learnable_kind_is_limited_to_64_classes():
  with pytest.raises(ValueError, match="num_classes=65"):
    data.LearnableShapesSource(num_classes=65)


def test_write_fake_imagenet_writes_real_jpegs(tmp_path):
  info = fake_imagenet.write_fake_imagenet(str(tmp_path), num_train=6,
                                           num_eval=4, num_classes=3,
                                           image_size=20, image_width=30,
                                           train_shards=2, eval_shards=1,
                                           kind="random")
  assert [os.path.basename(p) for p in info["eval_files"]
         ] == ["validation-00000-of-00001"]
  assert [os.path.basename(p) for p in info["train_files"]
         ] == ["train-00000-of-00002", "train-00001-of-00002"]
  examples = list(
      data.TFRecordSource(str(tmp_path)).examples("train", is_training=False))
  assert [int(e["label"]) for e in examples] == info["train_labels"]
  image = tf.io.decode_jpeg(examples[0]["image"])
  assert image.shape == (20, 30, 3)


def _write_image_folder(root, classes, per_class, extension="jpg"):
  for label, name in enumerate(classes):
    os.makedirs(root / name)
    for i in range(per_class):
      pixels = tf.fill([10, 12, 3], tf.constant(20 * label + i, tf.uint8))
      encoded = (tf.io.encode_png(pixels)
                 if extension == "png" else tf.io.encode_jpeg(pixels))
      (root / name / f"{i}.{extension}").write_bytes(encoded.numpy())


def test_image_folder_source(tmp_path):
  _write_image_folder(tmp_path / "train", ["cat", "ant", "bee"], 3)
  _write_image_folder(tmp_path / "val", ["bee", "cat"], 2, extension="png")
  (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
  source = data.ImageFolderSource(str(tmp_path / "train"),
                                  eval_root=str(tmp_path / "val"))
  assert source.class_names == ["ant", "bee", "cat"]
  assert source.num_examples("train") == 9
  assert source.examples_per_pipeline("train", 2) == [5, 4]
  assert sorted(_labels(source.examples(
      "train", is_training=True))) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
  assert _labels(source.examples("eval", is_training=False)) == [1, 1, 2, 2]
  first = next(iter(source.examples("eval", is_training=False)))
  assert tf.io.decode_png(first["image"]).shape == (10, 12, 3)
  with pytest.raises(ValueError, match="eval_root"):
    data.ImageFolderSource(str(tmp_path / "train")).examples(
        "eval", is_training=False)
  with pytest.raises(FileNotFoundError, match="missing"):
    data.ImageFolderSource(str(tmp_path / "missing"))


def test_convert_image_folder(tmp_path):
  _write_image_folder(tmp_path / "train", ["b", "a"], 4)
  _write_image_folder(tmp_path / "val", ["a"], 2)
  out = tmp_path / "records"
  images_to_tfrecords.convert_image_folder(str(tmp_path / "train"), str(out),
                                           num_shards=2)
  images_to_tfrecords.convert_image_folder(str(tmp_path / "val"), str(out),
                                           num_shards=1, prefix="validation")
  assert (out / "labels.txt").read_text() == "a\nb\n"
  source = data.TFRecordSource(str(out))
  assert sorted(_labels(source.examples(
      "train", is_training=False))) == [0, 0, 0, 0, 1, 1, 1, 1]
  assert _labels(source.examples("eval", is_training=False)) == [0, 0]
  _write_image_folder(tmp_path / "other", ["c"], 1)
  with pytest.raises(ValueError, match=r"\['c'\]"):
    images_to_tfrecords.convert_image_folder(str(tmp_path / "other"), str(out),
                                             num_shards=1, prefix="validation")


def test_tfds_source_reads_a_prepared_dataset(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class TinyShapes(tfds.core.GeneratorBasedBuilder):
    """Six tiny images, prepared locally without any download."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=(8, 8, 3)),
              "label": tfds.features.ClassLabel(num_classes=3)
          }))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {
          "train": self._generate_examples(6),
          "validation": self._generate_examples(3)
      }

    def _generate_examples(self, count):
      for i in range(count):
        yield i, {"image": np.full([8, 8, 3], 10 * i, np.uint8), "label": i % 3}

  TinyShapes(data_dir=str(tmp_path)).download_and_prepare()
  source = data.TFDSSource("tiny_shapes", str(tmp_path))
  assert source.num_examples("train") == 6
  assert source.examples_per_pipeline("train", 4) == [2, 2, 1, 1]
  examples = list(source.examples("eval", is_training=False))
  assert sorted(int(e["label"]) for e in examples) == [0, 1, 2]
  assert examples[0]["image"].dtype == tf.string
  pipelines = [
      _labels(
          source.examples("train", sources.pipeline_context(2, i),
                          is_training=True)) for i in range(2)
  ]
  assert sorted(pipelines[0] + pipelines[1]) == [0, 0, 1, 1, 2, 2]
  with pytest.raises(FileNotFoundError, match="not prepared"):
    data.TFDSSource("tiny_shapes", str(tmp_path / "empty"))
  with pytest.raises(FileNotFoundError, match="no_such_dataset"):
    data.TFDSSource("no_such_dataset", str(tmp_path))


def test_sources_are_gin_configurable(imagenet_dir):
  gin.parse_config([
      f"effnet_gin.data.TFRecordSource.data_dir = '{imagenet_dir['data_dir']}'",
      "effnet_gin.data.TFRecordSource.holdout_train_shards = 1",
  ])
  source = configurables.TFRecordSource()
  assert source.holdout_train_shards == 1
  gin.clear_config()
  with pytest.raises(Exception, match="data_dir"):
    configurables.TFRecordSource()


class _ListSource(sources.Source):
  """A minimal source that relies on the base class to count its shards."""

  def __init__(self, labels):
    self.labels = labels
    self.calls = 0

  def examples(self, split, input_context=None, *, is_training, seed=None):
    self.calls += 1
    num_pipelines, pipeline_id = sources.pipeline_shard(input_context)
    labels = tf.data.Dataset.from_tensor_slices(self.labels).filter(
        lambda label: label >= 0)  # Unknown cardinality: counting iterates.
    return labels.shard(num_pipelines, pipeline_id).map(lambda label: {
        "image": tf.zeros([4, 4, 3], tf.uint8),
        "label": label
    })


def test_base_source_counts_each_pipeline_once():
  source = _ListSource(list(range(7)))
  assert source.num_examples("eval") is None
  assert source.examples_per_pipeline("eval", 3) == [3, 2, 2]
  assert source.examples_per_pipeline("eval", 3) == [3, 2, 2]
  assert source.calls == 3
  batches = list(
      data.build_dataset(sources.pipeline_context(3, 2), split="eval",
                         global_batch_size=6, image_size=8, source=source,
                         num_classes=7))
  assert len(batches) == 2
  assert float(sum(tf.reduce_sum(b[2]) for b in batches)) == 2
