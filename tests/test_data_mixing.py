"""CutMix and random erasing: ranges, labels, eager equals tf.data."""
import numpy as np
import pytest
import tensorflow as tf

from effnet_gin.data import build_dataset
from effnet_gin.data import RandomNoiseSource
from effnet_gin.data.augment import mixing


def _batch(size=6, pixels=16):
  """Each example a constant image of its own value, so pastes are visible."""
  values = np.linspace(0.0, 250.0, size).astype(np.float32)
  images = np.broadcast_to(values[:, None, None, None],
                           (size, pixels, pixels, 3)).copy()
  return tf.constant(images), tf.range(size, dtype=tf.int32)


def test_cutmix_labels_weigh_each_class_by_its_pixels():
  images, labels = _batch()
  mixed, soft = mixing.cutmix(images, labels, 6, 1.0, [3, 4])
  mixed, soft = mixed.numpy(), soft.numpy()
  assert mixed.shape == images.shape and soft.shape == (6, 6)
  np.testing.assert_allclose(soft.sum(-1), 1.0, rtol=1e-6)
  assert 0.0 <= mixed.min() and mixed.max() <= 255.0
  values = images.numpy()[:, 0, 0, 0]
  pasted_any = False
  for i in range(6):
    partner = 5 - i
    from_partner = np.mean(mixed[i] == values[partner])
    if i != partner:
      # The label's partner share is the share of the partner's pixels.
      assert soft[i, partner] == pytest.approx(from_partner, abs=1e-6)
      assert soft[i, i] == pytest.approx(1.0 - from_partner, abs=1e-6)
      pasted_any |= 0 < from_partner < 1
    # Only the two classes of the pair carry weight.
    assert np.count_nonzero(soft[i]) <= 2
  assert pasted_any


def test_random_erasing_replaces_one_box_by_noise_in_range():
  images, _ = _batch(size=64, pixels=32)
  erased = mixing.random_erasing(images, 0.5, [7, 8]).numpy()
  assert 0.0 <= erased.min() and erased.max() <= 255.0
  changed = np.any(erased != images.numpy(), axis=-1)  # [b, H, W]
  fractions = changed.mean(axis=(1, 2))
  touched = fractions > 0
  # About half the images, each within the 2%–33% area range (rounding of
  # the box edges can add a row or column).
  assert 16 <= touched.sum() <= 48
  assert fractions[touched].min() >= 0.01 and fractions.max() <= 0.40
  # The changed pixels of an image form one rectangle.
  for image_changed in changed[touched]:
    rows = np.flatnonzero(image_changed.any(axis=1))
    cols = np.flatnonzero(image_changed.any(axis=0))
    box = image_changed[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    assert box.mean() > 0.95
  never = mixing.random_erasing(images, 0.0, [7, 8])
  np.testing.assert_array_equal(never, images)


def test_eager_equals_tf_data():
  images, labels = _batch()
  seeds = tf.constant([[1, 2], [3, 4], [5, 6]], tf.int64)

  def augment(seed):
    mixed, soft = mixing.cutmix(images, labels, 6, 0.5, seed)
    return mixing.random_erasing(mixed, 0.7, seed[::-1]), soft

  eager = [augment(seed) for seed in seeds]
  dataset = tf.data.Dataset.from_tensor_slices(seeds).map(augment)
  for (want_images, want_labels), (got_images,
                                   got_labels) in zip(eager, dataset):
    np.testing.assert_array_equal(want_images, got_images)
    np.testing.assert_array_equal(want_labels, got_labels)


def test_build_dataset_applies_them_to_training_batches():
  source = RandomNoiseSource(num_train=32, num_eval=8, num_classes=5,
                             image_size=20)
  dataset = build_dataset(split="train", global_batch_size=8, image_size=16,
                          source=source, num_classes=5, cutmix_alpha=1.0,
                          random_erasing_prob=0.5, seed=3)
  images, labels = next(iter(dataset))
  assert images.shape == (8, 16, 16, 3) and labels.shape == (8, 5)
  np.testing.assert_allclose(tf.reduce_sum(labels, -1), 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match="mixup_alpha=0.2 and cutmix_alpha"):
    build_dataset(split="train", global_batch_size=8, image_size=16,
                  source=source, num_classes=5, mixup_alpha=0.2,
                  cutmix_alpha=1.0)
  with pytest.raises(ValueError, match="random_erasing_prob"):
    build_dataset(split="train", global_batch_size=8, image_size=16,
                  source=source, num_classes=5, random_erasing_prob=1.5)
