"""Tests of build_dataset on real JPEG TFRecords written in tmp dirs."""
import collections
import itertools

import gin
import numpy as np
import pytest
import tensorflow as tf

from effnet_gin import configurables
from effnet_gin import data
from effnet_gin.data import pipeline
from effnet_gin.data import sources
import data_helpers

NUM_CLASSES = 5
SIZE = 16


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory):
  return data_helpers.write_imagenet_tfrecords(
      tmp_path_factory.mktemp("imagenet"), num_train=24, num_eval=12,
      num_classes=NUM_CLASSES, image_size=24, train_shards=4, eval_shards=2)


@pytest.fixture(scope="module")
def indexed_source(tmp_path_factory):
  """23 eval examples in 6 uneven files; index readable from the pixels."""
  directory = tmp_path_factory.mktemp("indexed")
  data_helpers.write_indexed_tfrecords(directory, num_examples=23, num_shards=6,
                                       num_classes=NUM_CLASSES)
  return data.TFRecordSource(str(directory))


def _context(num_pipelines, pipeline_id, replicas_per_pipeline=1):
  return tf.distribute.InputContext(
      num_input_pipelines=num_pipelines, input_pipeline_id=pipeline_id,
      num_replicas_in_sync=num_pipelines * replicas_per_pipeline)


def _build(source, split, context=None, global_batch_size=4, **kwargs):
  return data.build_dataset(context, split=split,
                            global_batch_size=global_batch_size,
                            image_size=SIZE, source=source,
                            num_classes=NUM_CLASSES, **kwargs)


def test_train_batches_have_static_shapes_and_valid_values(imagenet_dir):
  source = data.TFRecordSource(imagenet_dir["data_dir"])
  dataset = _build(source, "train", _context(2, 1, 2), global_batch_size=12)
  images_spec, labels_spec = dataset.element_spec
  assert images_spec.shape == (3, SIZE, SIZE, 3)
  assert images_spec.dtype == tf.float32
  assert labels_spec.shape == (3,) and labels_spec.dtype == tf.int32
  # Repeats forever: more batches than the split holds.
  for images, labels in dataset.take(10):
    _assert_on_0_255_scale(images)
    assert set(labels.numpy()) <= set(range(NUM_CLASSES))
  assert dataset.cardinality() == tf.data.INFINITE_CARDINALITY


def _assert_on_0_255_scale(images):
  """Pixels as the reference's: 0..255, bicubic overshoot not clipped."""
  assert 0.0 < float(tf.reduce_mean(images)) < 255.0
  assert -128.0 < float(tf.reduce_min(images))
  assert float(tf.reduce_max(images)) < 384.0


def test_train_labels_are_the_files_labels_zero_based(imagenet_dir):
  source = data.TFRecordSource(imagenet_dir["data_dir"])
  dataset = _build(source, "train", global_batch_size=24, shuffle_buffer=1)
  _, labels = next(iter(dataset))
  assert sorted(labels.numpy()) == sorted(imagenet_dir["train_labels"])


@pytest.mark.parametrize("augment,mixup_alpha", [("autoaugment", 0.0),
                                                 ("randaugment", 0.0),
                                                 (None, 0.2)])
def test_train_augmentations(imagenet_dir, augment, mixup_alpha):
  source = data.TFRecordSource(imagenet_dir["data_dir"])
  dataset = _build(source, "train", global_batch_size=6, augment=augment,
                   mixup_alpha=mixup_alpha, randaugment_magnitude=17)
  images, labels = next(iter(dataset))
  assert images.shape == (6, SIZE, SIZE, 3)
  if augment:
    # Augmentations work on uint8: the bicubic overshoot is clipped first.
    assert 0.0 <= float(tf.reduce_min(images))
    assert float(tf.reduce_max(images)) <= 255.0
  else:
    _assert_on_0_255_scale(images)
  if mixup_alpha:
    assert labels.shape == (6, NUM_CLASSES) and labels.dtype == tf.float32
    np.testing.assert_allclose(tf.reduce_sum(labels, -1), 1.0, rtol=1e-5)
  else:
    assert labels.shape == (6,) and labels.dtype == tf.int32


def test_seeded_training_is_reproducible(imagenet_dir):
  source = data.TFRecordSource(imagenet_dir["data_dir"])
  first, second = (next(
      iter(_build(source, "train", seed=3, augment="randaugment")))
                   for _ in range(2))
  np.testing.assert_array_equal(first[0], second[0])
  np.testing.assert_array_equal(first[1], second[1])


def _eval_contents(source, num_pipelines, replicas_per_pipeline,
                   global_batch_size, **kwargs):
  """Runs every pipeline; returns (indices seen, labels, batch counts)."""
  seen, labels, batch_counts = [], {}, []
  for pipeline_id in range(num_pipelines):
    context = _context(num_pipelines, pipeline_id, replicas_per_pipeline)
    dataset = _build(source, "eval", context,
                     global_batch_size=global_batch_size, **kwargs)
    batches = list(dataset)
    assert dataset.cardinality() == len(batches)
    batch_counts.append(len(batches))
    for images, batch_labels, weights in batches:
      assert images.shape[0] == context.get_per_replica_batch_size(
          global_batch_size)
      for image, label, weight in zip(images.numpy(), batch_labels.numpy(),
                                      weights.numpy()):
        if weight:
          index = data_helpers.index_of_image(image)
          seen.append(index)
          labels[index] = label
        else:
          assert not image.any() and label == 0
  return seen, labels, batch_counts


@pytest.mark.parametrize(
    "num_pipelines,replicas_per_pipeline,per_replica_batch",
    list(itertools.product([1, 2, 3], [1, 2], [1, 3, 8])))
def test_eval_sees_every_example_once_with_equal_batch_counts(
    indexed_source, num_pipelines, replicas_per_pipeline, per_replica_batch):
  global_batch_size = per_replica_batch * num_pipelines * replicas_per_pipeline
  seen, labels, batch_counts = _eval_contents(indexed_source, num_pipelines,
                                              replicas_per_pipeline,
                                              global_batch_size)
  assert sorted(seen) == list(range(23))
  assert labels == {i: i % NUM_CLASSES for i in range(23)}
  steps = pipeline.num_eval_steps(
      indexed_source, global_batch_size=global_batch_size,
      input_context=_context(num_pipelines, 0, replicas_per_pipeline))
  assert batch_counts == [steps * replicas_per_pipeline] * num_pipelines
  # No step is wholly padding.
  assert (steps - 1) * global_batch_size < 23


def test_eval_with_num_eval_examples_takes_that_many_once(indexed_source):
  seen, _, batch_counts = _eval_contents(indexed_source, 3, 1, 6,
                                         num_eval_examples=10)
  assert len(seen) == len(set(seen)) == 10
  assert len(set(batch_counts)) == 1
  with pytest.raises(ValueError, match="num_eval_examples.*24"):
    _build(indexed_source, "eval", num_eval_examples=24)


@pytest.mark.parametrize("counts,limit", [([4, 4, 4, 4, 4, 3], 10),
                                          ([0, 9, 2], 7), ([5, 5], 10),
                                          ([1, 8, 8], 16)])
def test_eval_quotas_spread_the_limit(counts, limit):
  quotas = pipeline.eval_quotas(counts, limit)
  assert sum(quotas) == limit
  assert all(0 <= q <= c for q, c in zip(quotas, counts))


def test_eval_element_structure(imagenet_dir):
  source = data.TFRecordSource(imagenet_dir["data_dir"])
  dataset = _build(source, "eval", global_batch_size=5)
  images, labels, weights = dataset.element_spec
  assert images.shape == (5, SIZE, SIZE, 3) and images.dtype == tf.float32
  assert labels.shape == (5,) and labels.dtype == tf.int32
  assert weights.shape == (5,) and weights.dtype == tf.float32
  batches = list(dataset)
  assert len(batches) == 3
  np.testing.assert_array_equal(batches[-1][2], [1, 1, 0, 0, 0])
  labels = np.concatenate([b[1] for b in batches])[:12]
  assert list(labels) == imagenet_dir["eval_labels"]


def _write_records(directory, prefix, labels, corrupt_index=None):
  image = tf.io.encode_jpeg(tf.zeros([12, 12, 3], tf.uint8)).numpy()
  records = [
      sources.serialize_imagenet_example(
          image[:40] if i == corrupt_index else image, label)
      for i, label in enumerate(labels)
  ]
  data_helpers.write_records(directory / f"{prefix}-00000-of-00001", records)


@pytest.mark.parametrize("stored_label,shown", [(NUM_CLASSES + 8, "12"),
                                                (0, "-1")])
@pytest.mark.parametrize("split", ["train", "eval"])
def test_out_of_range_label_names_the_label(tmp_path, stored_label, shown,
                                            split):
  for prefix in ("train", "validation"):
    _write_records(tmp_path, prefix, [1, 2, stored_label, 3])
  source = data.TFRecordSource(str(tmp_path))
  for skip_corrupt in (False, True):
    # shuffle_buffer=1 keeps the file order, so the first batch holds the bad
    # label: with the default buffer, 16 random draws miss it about 1% of runs.
    dataset = _build(source, split, global_batch_size=4,
                     skip_corrupt=skip_corrupt, shuffle_buffer=1)
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=rf"label out of range \[0, 5\)(.|\n)*\[{shown}[ \]]"):
      list(dataset.take(4))


def test_corrupt_jpeg_fails_or_is_skipped(tmp_path):
  for prefix in ("train", "validation"):
    _write_records(tmp_path, prefix, [1, 2, 3, 4, 5], corrupt_index=2)
  source = data.TFRecordSource(str(tmp_path))
  for split in ("train", "eval"):
    with pytest.raises(tf.errors.InvalidArgumentError, match="JPEG"):
      list(_build(source, split, global_batch_size=5))
  _, labels = next(
      iter(
          _build(source, "train", global_batch_size=8, skip_corrupt=True,
                 shuffle_buffer=1)))
  assert collections.Counter(labels.numpy()) == {0: 2, 1: 2, 3: 2, 4: 2}
  batches = list(_build(source, "eval", global_batch_size=3, skip_corrupt=True))
  assert len(batches) == 2
  weights = np.concatenate([b[2] for b in batches])
  labels = np.concatenate([b[1] for b in batches])
  np.testing.assert_array_equal(weights, [1, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(labels[:4], [0, 1, 3, 4])


def test_bad_arguments(imagenet_dir):
  source = data.TFRecordSource(imagenet_dir["data_dir"])
  with pytest.raises(ValueError, match="'cutmix'"):
    _build(source, "train", augment="cutmix")
  with pytest.raises(ValueError, match="'test'"):
    _build(source, "test")
  with pytest.raises(ValueError, match="global_batch_size.*0"):
    _build(source, "train", global_batch_size=0)


def test_generated_uint8_source_through_the_pipeline():
  source = data.RandomNoiseSource(num_train=8, num_eval=5,
                                  num_classes=NUM_CLASSES, image_size=20)
  images, labels = next(iter(_build(source, "train", augment="autoaugment")))
  assert images.shape == (4, SIZE, SIZE, 3) and labels.shape == (4,)
  batches = list(_build(source, "eval", global_batch_size=4))
  assert sum(float(tf.reduce_sum(b[2])) for b in batches) == 5


def test_gin_configured_build_dataset_under_mirrored_strategy(
    imagenet_dir, mirrored_strategy):
  gin.parse_config([
      "import effnet_gin.data",
      "build_dataset.source = @effnet_gin.data.TFRecordSource()",
      f"TFRecordSource.data_dir = '{imagenet_dir['data_dir']}'",
      f"build_dataset.num_classes = {NUM_CLASSES}",
      'build_dataset.augment = "randaugment"',
  ])
  strategy = mirrored_strategy
  train = strategy.distribute_datasets_from_function(
      lambda ctx: configurables.build_dataset(
          ctx, split="train", global_batch_size=8, image_size=SIZE))
  images, _ = next(iter(train))
  assert [t.shape for t in strategy.experimental_local_results(images)
         ] == [(4, SIZE, SIZE, 3)] * 2
  evaluation = strategy.distribute_datasets_from_function(
      lambda ctx: configurables.build_dataset(
          ctx, split="eval", global_batch_size=10, image_size=SIZE))
  total_weight, steps = 0.0, 0
  for _, _, weights in evaluation:
    total_weight += sum(
        float(tf.reduce_sum(w))
        for w in strategy.experimental_local_results(weights))
    steps += 1
  assert total_weight == 12 and steps == 2


def test_truncated_tfrecord_fails_or_is_skipped(tmp_path):
  _write_records(tmp_path, "train", [1, 2, 3, 4, 5])
  path = tmp_path / "train-00000-of-00001"
  path.write_bytes(path.read_bytes()[:-30])
  _write_records(tmp_path, "validation", [1, 2])
  source = data.TFRecordSource(str(tmp_path))
  with pytest.raises(tf.errors.DataLossError, match="truncated"):
    list(_build(source, "train").take(3))
  _, labels = next(
      iter(
          _build(source, "train", global_batch_size=8, skip_corrupt=True,
                 shuffle_buffer=1)))
  assert set(labels.numpy()) == {0, 1, 2, 3}
  # Eval counts its records first; a truncated eval file is named.
  path = tmp_path / "validation-00000-of-00001"
  path.write_bytes(path.read_bytes()[:-30])
  with pytest.raises(tf.errors.DataLossError, match="validation-00000-of"):
    _build(source, "eval")
