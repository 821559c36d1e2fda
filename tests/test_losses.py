"""Tests of the classification loss, weight decay and top-k counts."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from effnet_gin.train import losses


def _smoothed_cross_entropy(targets, logits, smoothing):
  """Numpy reference: per-example smoothed softmax cross-entropy."""
  num_classes = logits.shape[-1]
  targets = targets * (1 - smoothing) + smoothing / num_classes
  shifted = logits - logits.max(axis=-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
  return -(targets * log_probs).sum(axis=-1)


def test_loss_with_hard_labels_is_replica_share_of_global_mean():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 5)).astype(np.float32)
  labels = np.array([0, 3, 4, 1], np.int32)
  expected = _smoothed_cross_entropy(np.eye(5)[labels], logits, 0.1).sum() / 8
  loss = losses.classification_loss(labels, logits, global_batch_size=8)
  assert loss.dtype == tf.float32
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
  # TF1's tf.losses.softmax_cross_entropy smooths the same way.
  tf1 = tf.compat.v1.losses.softmax_cross_entropy(
      np.eye(5)[labels], logits, label_smoothing=0.1,
      reduction=tf.compat.v1.losses.Reduction.SUM)
  np.testing.assert_allclose(float(loss), float(tf1) / 8, rtol=1e-6)


def test_loss_with_soft_labels_and_bfloat16_logits():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(3, 4)).astype(np.float32)
  soft = rng.dirichlet(np.ones(4), size=3).astype(np.float32)
  loss = losses.classification_loss(
      soft, tf.cast(logits, tf.bfloat16), global_batch_size=3,
      label_smoothing=0.2, num_classes=4)
  assert loss.dtype == tf.float32
  bf16_logits = tf.cast(tf.cast(logits, tf.bfloat16), tf.float32).numpy()
  expected = _smoothed_cross_entropy(soft, bf16_logits, 0.2).sum() / 3
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)


def test_loss_summed_over_replicas_is_the_global_mean(mirrored_strategy):
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(8, 3)).astype(np.float32)
  labels = rng.integers(0, 3, size=8).astype(np.int32)
  strategy = mirrored_strategy
  dataset = tf.data.Dataset.from_tensor_slices((labels, logits)).batch(8)
  batch = next(iter(strategy.experimental_distribute_dataset(dataset)))

  @tf.function
  def total(labels, logits):
    per_replica = strategy.run(
        lambda y, x: losses.classification_loss(y, x, global_batch_size=8),
        args=(labels, logits))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

  expected = _smoothed_cross_entropy(np.eye(3)[labels], logits, 0.1).mean()
  np.testing.assert_allclose(float(total(*batch)), expected, rtol=1e-6)


@pytest.mark.parametrize("kwargs, bad", [
    (dict(global_batch_size=0), "global_batch_size must be positive, got 0"),
    (dict(label_smoothing=1.5), "1.5"),
    (dict(num_classes=7), "num_classes=7"),
])
def test_loss_rejects_bad_values(kwargs, bad):
  args = dict(global_batch_size=2)
  args.update(kwargs)
  with pytest.raises(ValueError, match=bad):
    losses.classification_loss([0, 1], tf.zeros((2, 5)), **args)
  with pytest.raises(ValueError, match="3 classes"):
    losses.classification_loss(tf.zeros((2, 3)), tf.zeros((2, 5)),
                               global_batch_size=2)


class _FusedBatchNorm(keras.layers.Layer):
  """Stands in for effnet_gin's own BatchNorm: not a Keras BN subclass."""

  def build(self, input_shape):
    self.gamma = self.add_weight(name="gamma", shape=input_shape[-1:],
                                 initializer="ones")
    self.beta = self.add_weight(name="beta", shape=input_shape[-1:],
                                initializer="ones")

  def call(self, inputs):
    return inputs * self.gamma + self.beta


def _decay_model():
  keras.utils.set_random_seed(0)
  inputs = keras.Input((4, 4, 3))
  x = keras.layers.Conv2D(4, 3, name="stem_conv")(inputs)
  x = _FusedBatchNorm(name="stem_bn")(x)
  x = keras.layers.Conv2D(4, 1, name="block2a_expand_conv")(x)
  x = _FusedBatchNorm(name="block2a_expand_bn")(x)
  x = keras.layers.BatchNormalization(name="norm")(x)  # class check only
  x = keras.layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, keras.layers.Dense(2, name="logits")(x))


def test_weight_decay_skips_batch_norm_parameters():
  model = _decay_model()
  decayed = [v.path for v in losses.regularized_variables(model)]
  assert decayed == ["stem_conv/kernel", "stem_conv/bias",
                     "block2a_expand_conv/kernel", "block2a_expand_conv/bias",
                     "logits/kernel", "logits/bias"]
  expected = 1e-5 * sum(0.5 * np.sum(np.square(v.numpy()))
                        for v in model.trainable_variables
                        if v.path in decayed)
  np.testing.assert_allclose(float(losses.weight_decay_loss(model)),
                             expected, rtol=1e-6)
  # A plain list of variables goes by the path pattern alone.
  by_list = losses.weight_decay_loss(model.trainable_variables, 1e-5)
  norm = model.get_layer("norm")
  extra = 1e-5 * 0.5 * (np.sum(norm.gamma.numpy()**2)
                        + np.sum(norm.beta.numpy()**2))
  np.testing.assert_allclose(float(by_list), expected + extra, rtol=1e-6)
  with pytest.raises(ValueError, match="-1"):
    losses.weight_decay_loss(model, -1.0)


@pytest.mark.parametrize("path, is_bn", [
    ("stem_bn/gamma", True), ("top_bn/beta", True),
    ("block2a_project_bn/gamma", True), ("batch_normalization_3/beta", True),
    ("tpu_batch_normalization/gamma:0", True), ("bn/beta", True),
    ("block1a_bn/moving_mean", False), ("stem_conv/kernel", False),
    ("subnet/gamma", False), ("gamma", False),
])
def test_batch_norm_path_pattern(path, is_bn):
  # pylint: disable-next=protected-access
  assert losses._is_batch_norm_path(path) is is_bn


def test_weight_decay_is_split_across_replicas(mirrored_strategy):
  strategy = mirrored_strategy
  with strategy.scope():
    model = _decay_model()
  full = float(losses.weight_decay_loss(model))
  per_replica = strategy.run(lambda: losses.weight_decay_loss(model))
  for share in strategy.experimental_local_results(per_replica):
    np.testing.assert_allclose(float(share), full / 2, rtol=1e-6)


def test_top_k_correct():
  logits = tf.constant([[0.1, 0.5, 0.4],   # top-1: 1
                        [0.3, 0.3, 0.4],   # tie of 0 and 1 below 2
                        [0.9, 0.05, 0.05]])
  labels = tf.constant([1, 0, 2])
  assert float(losses.top_k_correct(labels, logits, 1)) == 1.0
  assert float(losses.top_k_correct(labels, logits, 2)) == 3.0  # ties count
  assert float(losses.top_k_correct(labels, logits, 1,
                                    weights=[0.0, 1.0, 1.0])) == 0.0
  soft = tf.one_hot(labels, 3) * 0.8 + 0.1
  assert float(losses.top_k_correct(soft, logits, 2)) == 3.0
  compiled = tf.function(lambda y, x: losses.top_k_correct(y, x, 2),
                         jit_compile=True)
  assert float(compiled(labels, tf.cast(logits, tf.bfloat16))) == 3.0
  in_top_k = tf.math.in_top_k(labels, logits, 1)
  assert float(losses.top_k_correct(labels, logits, 1)) == float(
      tf.reduce_sum(tf.cast(in_top_k, tf.float32)))
  with pytest.raises(ValueError, match="0"):
    losses.top_k_correct(labels, logits, 0)
