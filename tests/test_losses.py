"""Tests of the classification loss, weight decay and top-k counts."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from effnet_gin.model import build_model
from effnet_gin.model.layers import BatchNorm
from effnet_gin.evaluation import metrics
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
  loss = losses.classification_loss(soft, tf.cast(logits, tf.bfloat16),
                                    global_batch_size=3, label_smoothing=0.2,
                                    num_classes=4)
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


# The published B0 stages (repeats, kernel, stride, expand, in, out), for the
# expected counts below.
_B0_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
              (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112),
              (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))


def _decay_model():
  """Batch norms with names no pattern would catch, one inside a sub-model."""
  keras.utils.set_random_seed(0)
  inner_inputs = keras.Input((4, 4, 4))
  inner = keras.Model(
      inner_inputs,
      BatchNorm(name="gain")(keras.layers.Conv2D(4, 1,
                                                 name="mix")(inner_inputs)),
      name="subnet")
  inputs = keras.Input((6, 6, 3))
  x = keras.layers.Conv2D(4, 3, name="stem")(inputs)
  x = BatchNorm(name="layer_7")(x)
  x = inner(x)
  x = keras.layers.BatchNormalization(name="norm")(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, keras.layers.Dense(2, name="logits")(x))


def test_weight_decay_skips_batch_norm_parameters_by_type():
  model = _decay_model()
  for layer in (model.get_layer("layer_7"),
                model.get_layer("subnet").get_layer("gain")):
    layer.gamma.assign(layer.gamma + 3.0)  # Would show in the loss.
  decayed = [v.path for v in losses.regularized_variables(model)]
  assert decayed == [
      "stem/kernel", "stem/bias", "mix/kernel", "mix/bias", "logits/kernel",
      "logits/bias"
  ]
  expected = 1e-5 * sum(0.5 * np.sum(np.square(v.numpy()))
                        for v in model.trainable_variables
                        if v.path in decayed)
  np.testing.assert_allclose(float(losses.weight_decay_loss(model)), expected,
                             rtol=1e-6)
  with pytest.raises(ValueError, match="-1"):
    losses.weight_decay_loss(model, -1.0)
  with pytest.raises(TypeError, match="list"):
    losses.weight_decay_loss(model.trainable_variables)


def test_weight_decay_of_b0_spares_exactly_its_batch_norms():
  # From the published architecture: every trainable variable but the
  # batch-norm gamma and beta is decayed (the reference's weight_decay
  # line) -- stem and top kernels, per block the expand (if any), depthwise,
  # project and two squeeze-excite convolutions (kernel and bias each), and
  # the classifier's kernel and bias.
  bn_channels, num_decayed = 32 + 1280, 1 + 1 + 2
  for repeats, _, _, expand, filters_in, filters_out in _B0_STAGES:
    for index in range(repeats):
      expanded = (filters_in if index == 0 else filters_out) * expand
      bn_channels += expanded * (2 if expand != 1 else 1) + filters_out
      num_decayed += 6 + (expand != 1)
  assert num_decayed == 115
  # 5,288,548 trainable parameters of B0 at 1000 classes, less 2 per
  # batch-norm channel.
  assert 5_288_548 - 2 * bn_channels == 5_246_532
  decayed = losses.regularized_variables(build_model("efficientnet-b0"))
  assert len(decayed) == 115
  assert sum(int(np.prod(v.shape)) for v in decayed) == 5_246_532


def test_weight_decay_is_split_across_replicas(mirrored_strategy):
  strategy = mirrored_strategy
  with strategy.scope():
    model = _decay_model()
  full = float(losses.weight_decay_loss(model))
  per_replica = strategy.run(lambda: losses.weight_decay_loss(model))
  for share in strategy.experimental_local_results(per_replica):
    np.testing.assert_allclose(float(share), full / 2, rtol=1e-6)


def test_top_k_correct():
  logits = tf.constant([
      [0.1, 0.5, 0.4],  # top-1: 1
      [0.3, 0.3, 0.4],  # tie of 0 and 1 below 2
      [0.9, 0.05, 0.05]
  ])
  labels = tf.constant([1, 0, 2])
  assert float(metrics.top_k_correct(labels, logits, 1)) == 1.0
  assert float(metrics.top_k_correct(labels, logits, 2)) == 3.0  # ties count
  assert float(metrics.top_k_correct(labels, logits, 1, weights=[0.0, 1.0,
                                                                 1.0])) == 0.0
  soft = tf.one_hot(labels, 3) * 0.8 + 0.1
  assert float(metrics.top_k_correct(soft, logits, 2)) == 3.0
  compiled = tf.function(lambda y, x: metrics.top_k_correct(y, x, 2),
                         jit_compile=True)
  assert float(compiled(labels, tf.cast(logits, tf.bfloat16))) == 3.0
  in_top_k = tf.math.in_top_k(labels, logits, 1)
  assert float(metrics.top_k_correct(labels, logits, 1)) == float(
      tf.reduce_sum(tf.cast(in_top_k, tf.float32)))
  with pytest.raises(ValueError, match="0"):
    metrics.top_k_correct(labels, logits, 0)
