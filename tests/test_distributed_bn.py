"""The reference's distributed batch norm (its --optimizer=lars path).

Expected numbers come from NumPy and the reference's formulas
(tensorflow/tpu models/official/efficientnet/utils.py,
DistributedBatchNormalization): groups of max(1, int(B / b)) consecutive
replicas above 8 replicas (all replicas up to 8), group statistics
E[x] and E[x²] − E[x]² averaged over the group's replicas, moving averages
towards the mean of the group statistics over all replicas.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from effnet_gin.model import cross_replica
from effnet_gin.model import layers

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "replicas,per_replica,images,expected",
    [
        (512, 64, 128, 2),  # v3-512 at 32,768: the reference's default.
        (256, 128, 128, 1),  # 128 images per core: each core alone.
        (64, 16, 128, 8),
        (16, 64, 256, 4),
        (32, 32, 1024, 32),
        (8, 128, 128, 8),  # Up to 8 replicas: all of them.
        (4, 4, 8, 4),
        (1, 32, 128, 1)
    ])
def test_groups_follow_the_reference(replicas, per_replica, images, expected):
  setting = cross_replica.distributed(images)
  assert cross_replica.distributed_group_size(setting, replicas,
                                              per_replica) == expected


def test_settings_parse_and_bad_ones_fail():
  assert cross_replica.distributed() == "distributed:128"
  assert cross_replica.distributed(
      256, all_replicas_up_to=2) == ("distributed:256:2")
  assert cross_replica.parse_distributed("distributed:128") == (128, 8)
  assert cross_replica.parse_distributed("all") is None
  for bad in ("distributed", "distributed:0", "distributed:x",
              "distributed:8:-1", "distributed:8:2:3"):
    with pytest.raises(ValueError, match="distributed"):
      layers.BatchNorm(group_size=bad)
  # Groups of 8 replicas do not split 12.
  with pytest.raises(ValueError, match="do not split"):
    cross_replica.distributed_group_size("distributed:128", 12, 16)


def _reference_group_stats(x, group_size):
  """NumPy: per-replica [C] mean and variance of each replica's group."""
  replica_means = x.mean(axis=(1, 2, 3))
  replica_squares = (x**2).mean(axis=(1, 2, 3))
  means, variances = [], []
  for replica in range(x.shape[0]):
    start = replica // group_size * group_size
    mean = replica_means[start:start + group_size].mean(axis=0)
    square = replica_squares[start:start + group_size].mean(axis=0)
    means.append(mean)
    variances.append(square - mean**2)
  return np.array(means), np.array(variances)


def _normalized(x, mean, variance, gamma, beta, epsilon):
  return (x - mean) / np.sqrt(variance + epsilon) * gamma + beta


def test_one_device_compiles_under_xla_with_uncorrected_moving_variance():
  x = np.random.default_rng(1).normal(1.0, 2.0, (6, 4, 4, 3)).astype(np.float32)
  layer = layers.BatchNorm(momentum=0.9, group_size="distributed:128")
  layer.build(x.shape)
  outputs = tf.function(lambda t: layer(t, training=True),
                        jit_compile=True)(tf.constant(x))
  mean, variance = _reference_group_stats(x[None], 1)
  np.testing.assert_allclose(
      outputs, _normalized(x, mean[0], variance[0], 1.0, 0.0, 1e-3), rtol=1e-4,
      atol=1e-4)
  np.testing.assert_allclose(layer.moving_mean.numpy(), 0.1 * mean[0],
                             rtol=1e-5, atol=1e-6)
  # E[x²] − E[x]² as it is: no n / (n − 1) factor.
  np.testing.assert_allclose(layer.moving_variance.numpy(),
                             0.9 + 0.1 * variance[0], rtol=1e-5)
  assert layer.get_config()["group_size"] == "distributed:128"


_FOUR_REPLICAS = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * 4)
    from effnet_gin.model import cross_replica, layers

    data = np.load(sys.argv[1])
    x, gamma, beta = data["x"], data["gamma"], data["beta"]
    strategy = tf.distribute.MirroredStrategy(
        [f"/cpu:{i}" for i in range(4)])
    # 4 images per group at 2 per replica: groups of 2 replicas; the
    # threshold 2 (instead of the reference's 8) lets 4 replicas form groups.
    setting = cross_replica.distributed(4, all_replicas_up_to=2)
    with strategy.scope():
      layer = layers.BatchNorm(momentum=0.9, epsilon=1e-3, group_size=setting)
      layer.build(x.shape[1:])
      layer.gamma.assign(gamma)
      layer.beta.assign(beta)
    batches = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(x[context.replica_id_in_sync_group]))
    # Graph mode: a jit-compiled replica function under MirroredStrategy
    # fails in TF 2.21 before reaching this layer (a strategy variable on
    # another device); XLA is covered by the one-device test.
    run = tf.function(lambda b: strategy.run(
        lambda t: layer(t, training=True), args=(b,)))
    outputs = strategy.experimental_local_results(run(batches))
    np.savez(sys.argv[2], outputs=np.stack([o.numpy() for o in outputs]),
             moving_mean=layer.moving_mean.numpy(),
             moving_variance=layer.moving_variance.numpy())
""")


def test_mirrored_four_replicas_groups_of_two(tmp_path):
  """Per-group statistics normalise; the moving averages use all replicas."""
  rng = np.random.default_rng(0)
  # Each replica's images have their own offset and spread, so the two
  # groups' statistics differ from each other and from the global ones.
  x = np.stack([
      rng.normal(shift, spread, (2, 3, 3, 5))
      for shift, spread in ((0, 1), (4, 2), (-3, 0.5), (10, 3))
  ]).astype(np.float32)
  gamma = np.linspace(0.5, 2.0, 5).astype(np.float32)
  beta = np.linspace(-1.0, 1.0, 5).astype(np.float32)
  np.savez(tmp_path / "in.npz", x=x, gamma=gamma, beta=beta)
  script = tmp_path / "four.py"
  script.write_text(_FOUR_REPLICAS)
  env = dict(
      os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.pathsep.join(
          [_REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
  result = subprocess.run([
      sys.executable,
      str(script),
      str(tmp_path / "in.npz"),
      str(tmp_path / "out.npz")
  ], env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  got = np.load(tmp_path / "out.npz")

  means, variances = _reference_group_stats(x, 2)
  assert not np.allclose(means[0], means[2])  # Two different groups.
  for replica in range(4):
    np.testing.assert_allclose(
        got["outputs"][replica],
        _normalized(x[replica], means[replica], variances[replica], gamma, beta,
                    1e-3), rtol=1e-4, atol=1e-4)
  # Moving averages: the mean over all 4 replicas of their groups'
  # statistics, from the initial 0 and 1 with momentum 0.9.
  np.testing.assert_allclose(got["moving_mean"], 0.1 * means.mean(axis=0),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got["moving_variance"],
                             0.9 + 0.1 * variances.mean(axis=0), rtol=1e-5)
  # Neither one group's statistics nor the global variance.
  assert not np.allclose(got["moving_mean"], 0.1 * means[0], rtol=1e-3)
  global_variance = x.var(axis=(0, 1, 2, 3))
  assert not np.allclose(got["moving_variance"], 0.9 + 0.1 * global_variance,
                         rtol=1e-3)
