"""Cross-replica batch norm: the reference's grouping, XLA, and Mirrored."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from effnet_gin.model import build_model
from effnet_gin.model import cross_replica
from effnet_gin.model import layers
from effnet_gin.checkpoints import averaging
from effnet_gin.train import train_step
from effnet_gin.train import optim


# The reference (utils.py, TpuBatchNormalization._moments): no
# synchronisation up to 8 cores, else groups of max(8, cores // 8).
@pytest.mark.parametrize("setting,replicas,on_tpu,expected",
                         [("auto", 8, True, 1), ("auto", 16, True, 8),
                          ("auto", 32, True, 8), ("auto", 128, True, 16),
                          ("auto", 1024, True, 128), ("auto", 2, False, 2),
                          ("auto", 1, False, 1), ("all", 32, True, 32),
                          (1, 32, True, 1), (4, 32, True, 4), (2, 2, False, 2)])
def test_group_size_follows_the_reference(setting, replicas, on_tpu, expected):
  assert cross_replica.resolve_group_size(setting, replicas,
                                          on_tpu=on_tpu) == expected


@pytest.mark.parametrize("setting", [3, 0, -1, "some", 1.5, True, 64])
def test_bad_group_sizes_are_rejected(setting):
  with pytest.raises(ValueError, match="group_size"):
    cross_replica.resolve_group_size(setting, 32, on_tpu=True)


def test_groups_are_consecutive_replicas():
  assert cross_replica.group_assignment(
      16, 8) == [list(range(8)), list(range(8, 16))]


def test_synchronized_path_compiles_under_xla_and_equals_the_fused_kernel():
  # On one device 'all' runs the all-reduce path (a group of one), which
  # must give the fused kernel's outputs and moving statistics.
  images = tf.constant(
      np.random.default_rng(0).normal(2.0, 3.0,
                                      (4, 5, 5, 6)).astype(np.float32))
  fused = layers.BatchNorm(momentum=0.9, group_size=1)
  synced = layers.BatchNorm(momentum=0.9, group_size="all")
  for layer in (fused, synced):
    layer.build(images.shape)
    layer.gamma.assign(np.linspace(0.5, 2.0, 6))
    layer.beta.assign(np.linspace(-1.0, 1.0, 6))
  compiled = tf.function(lambda x: synced(x, training=True), jit_compile=True)
  # Tolerance: float32 sums in another order (E[x²] − E[x]² vs two passes).
  np.testing.assert_allclose(compiled(images), fused(images, training=True),
                             rtol=1e-4, atol=1e-4)
  for name in ("moving_mean", "moving_variance"):
    np.testing.assert_allclose(
        getattr(synced, name).numpy(),
        getattr(fused, name).numpy(), rtol=1e-5)
  assert synced.get_config()["group_size"] == "all"


def _train_three_steps(strategy, images, labels, group_size):
  """Losses, the stem kernel and a moving mean after 3 steps of batch 16."""
  keras.utils.set_random_seed(1)
  with strategy.scope():
    model = build_model("efficientnet-b0", 10, width_coefficient=0.1,
                        depth_coefficient=0.1, image_size=32, dropout_rate=0.0,
                        survival_prob=1.0, batch_norm_group_size=group_size)
    optimizer = optim.build_optimizer(0.01)
    optimizer.build(model.trainable_variables)
    ema = averaging.ExponentialMovingAverage(model)
  # The global batch of 16, split in order: replica 0 gets examples 0-7,
  # replica 1 examples 8-15.
  dataset = strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensors((images, labels)).repeat())
  host_loop = train_step.build_host_loop(strategy=strategy, model=model,
                                         optimizer=optimizer, ema=ema,
                                         global_batch_size=16,
                                         label_smoothing=0.1, weight_decay=1e-5,
                                         jit_compile=False)
  iterator = iter(dataset)
  step_losses = [
      float(host_loop(iterator, tf.constant(1))[0]) for _ in range(3)
  ]
  return (step_losses, model.get_layer("stem_conv").kernel.numpy(),
          model.get_layer("stem_bn").moving_mean.numpy())


def test_mirrored_cross_replica_bn_matches_one_device(mirrored_strategy):
  """Different examples per replica give one device's training.

  The two halves of the batch have different statistics (shifted pixel
  ranges), so per-replica batch norm would not match; synchronised batch
  statistics make the two replicas one batch of 16.
  """
  rng = np.random.default_rng(0)
  images = np.concatenate([
      rng.uniform(0, 120, (8, 32, 32, 3)),
      rng.uniform(100, 255, (8, 32, 32, 3))
  ]).astype(np.float32)
  labels = rng.integers(0, 10, 16).astype(np.int32)
  assert mirrored_strategy.num_replicas_in_sync == 2
  one = _train_three_steps(tf.distribute.get_strategy(), images, labels, 1)
  synced = _train_three_steps(mirrored_strategy, images, labels, "auto")
  # Tolerance: float32 sums in a different order over 3 steps (measured
  # differences are ~1e-6 relative on the losses).
  np.testing.assert_allclose(synced[0], one[0], rtol=1e-4)
  np.testing.assert_allclose(synced[1], one[1], rtol=1e-3, atol=1e-5)
  np.testing.assert_allclose(synced[2], one[2], rtol=1e-4, atol=1e-5)
  assert one[0][2] != one[0][0]  # Training moved the weights.
  # Per-replica statistics (today's behaviour with group_size=1) differ.
  alone = _train_three_steps(mirrored_strategy, images, labels, 1)
  assert not np.allclose(alone[0], one[0], rtol=1e-4)
