"""EfficientNet building blocks as Keras 3 layers (TensorFlow backend).

Layers here are gin-free. Four are custom, each for a reason:

* `BatchNorm` runs on TensorFlow's fused kernel. Keras 3's
  BatchNormalization is built from generic ops and is about 3.5x slower on
  CPU (forward + backward of a [32, 56, 56, 96] batch: 56 ms vs 16 ms).
* `Dropout` and `StochasticDepth` draw from stateful `tf.random.uniform`.
  Keras 3's random layers keep a SeedGenerator state variable with
  aggregation "none", which custom `strategy.run` loops and XLA handle
  awkwardly; these layers create no variables at all.
* `InputNormalization` maps 0..255 RGB to the network's input scale in
  float32 even under a bfloat16 policy.

The swish activation is `activations.fused_swish` (XLA-fused kernels; see
activations.py). The depthwise convolutions stay outside XLA, which handles
them badly on CPU; on TPU the whole step is compiled anyway.

`squeeze_excite` and `conv_bn_act` apply named Keras layers to a (symbolic)
tensor, so the layers appear flat in the functional model with stable names
such as `block3b_se_reduce`; blocks.py builds whole blocks the same way.
"""
from typing import Optional, Sequence

import keras
import tensorflow as tf

from effnet_gin.model import cross_replica
from effnet_gin.model.activations import activation_function
# Re-exported: `layers.fused_swish` was its home before activations.py.
# pylint: disable-next=unused-import
from effnet_gin.model.activations import fused_swish

_PACKAGE = "effnet_gin"


def conv_kernel_initializer() -> keras.initializers.Initializer:
  """normal(0, sqrt(2 / (kh * kw * out_channels))), as the reference.

  For depthwise kernels [kh, kw, in, multiplier] Keras' fan_out is
  kh * kw * multiplier, i.e. out_channels = 1 as the reference has it.
  """
  return keras.initializers.VarianceScaling(scale=2.0, mode="fan_out",
                                            distribution="untruncated_normal")


def dense_kernel_initializer() -> keras.initializers.Initializer:
  """uniform(-1/sqrt(units), 1/sqrt(units)), as the reference."""
  # VarianceScaling's uniform limit is sqrt(3 * scale / fan_out).
  return keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_out",
                                            distribution="uniform")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BatchNorm(keras.layers.Layer):
  """Batch normalisation over the channels of NHWC tensors, fused kernel.

  Training (`training=True` and the layer trainable) normalises with the
  batch statistics and moves `moving_mean`/`moving_variance` towards them:
  moving = momentum * moving + (1 - momentum) * batch. Otherwise the moving
  statistics are used. As TF1's fused batch norm (the reference), the
  variance fed to the moving average carries Bessel's correction.

  Parameters and statistics are float32 whatever the layer's compute dtype; a
  bfloat16 input gives a bfloat16 output. Under a tf.distribute strategy the
  moving statistics are mean-aggregated, so each replica's update, computed
  from its own batch, is averaged across replicas inside `strategy.run`.

  With `group_size` other than 1, training inside `strategy.run` normalises
  with statistics averaged over groups of replicas (see cross_replica.py,
  the reference's TpuBatchNormalization); the moving statistics then move
  towards the group's statistics, with Bessel's correction over the group.
  `group_size='distributed:B'` is the reference's DistributedBatchNormalization
  (its LARS path): groups of B images, and the moving statistics move towards
  the all-replica mean of the groups' statistics, variance uncorrected.
  """

  def __init__(self, momentum: float = 0.99, epsilon: float = 1e-3,
               group_size=1, **kwargs):
    """Creates the layer.

    Args:
      momentum: decay of the moving statistics, in [0, 1].
      epsilon: added to the variance before the square root; > 0.
      group_size: replicas sharing batch statistics in training: 1 (each
        replica alone), 'auto' (TPU: the reference's grouping, none up to 8
        cores; other strategies: all replicas), 'all', an int, or
        'distributed:B[:T]' (see cross_replica.py).
      **kwargs: standard Keras layer arguments (name, dtype, trainable...).

    Raises:
      ValueError: for a momentum outside [0, 1], a non-positive epsilon or
        an invalid group_size.
    """
    super().__init__(**kwargs)
    cross_replica.validate_group_size(group_size)
    self.group_size = group_size
    if not 0.0 <= momentum <= 1.0:
      raise ValueError(f"momentum must be in [0, 1], got {momentum!r}.")
    if epsilon <= 0:
      raise ValueError(f"epsilon must be > 0, got {epsilon!r}.")
    self.momentum = float(momentum)
    self.epsilon = float(epsilon)

  def build(self, input_shape):
    if len(input_shape) != 4 or input_shape[-1] is None:
      raise ValueError(f"BatchNorm {self.name!r} expects NHWC input with a "
                       f"known channel count, got shape {input_shape}.")
    channels = (input_shape[-1],)

    def stat(name, initializer, trainable):
      return self.add_weight(name=name, shape=channels, initializer=initializer,
                             trainable=trainable, autocast=False,
                             aggregation="none" if trainable else "mean")

    self.gamma = stat("gamma", "ones", trainable=True)
    self.beta = stat("beta", "zeros", trainable=True)
    self.moving_mean = stat("moving_mean", "zeros", trainable=False)
    self.moving_variance = stat("moving_variance", "ones", trainable=False)

  def call(self, inputs, training=False):
    # A frozen (non-trainable) layer normalises with its moving statistics
    # even in training, as Keras' BatchNormalization does for fine-tuning.
    if not (training and self.trainable):
      return tf.raw_ops.FusedBatchNormV3(x=inputs, scale=self.gamma.value,
                                         offset=self.beta.value,
                                         mean=self.moving_mean.value,
                                         variance=self.moving_variance.value,
                                         epsilon=self.epsilon,
                                         is_training=False)[0]
    group_size = cross_replica.replicas_per_group(self.group_size,
                                                  inputs.shape[0])
    if group_size is None:
      empty = tf.constant([], dtype=tf.float32)
      outputs, batch_mean, batch_variance = tf.raw_ops.FusedBatchNormV3(
          x=inputs, scale=self.gamma.value, offset=self.beta.value, mean=empty,
          variance=empty, epsilon=self.epsilon, is_training=True)[:3]
    else:
      outputs, batch_mean, batch_variance = cross_replica.batch_norm(
          inputs, self.gamma.value, self.beta.value, self.epsilon, group_size,
          bessel=not cross_replica.is_distributed(self.group_size))
    for moving, batch in ((self.moving_mean, batch_mean), (self.moving_variance,
                                                           batch_variance)):
      batch = tf.stop_gradient(batch)
      moving.assign(moving.value * self.momentum + batch *
                    (1.0 - self.momentum))
    return outputs

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {
        **super().get_config(), "momentum": self.momentum,
        "epsilon": self.epsilon,
        "group_size": self.group_size
    }


def _keep_mask(shape, keep_prob, dtype):
  """1/keep_prob with probability keep_prob, else 0 (stateful random)."""
  keep = tf.random.uniform(shape, dtype=tf.float32) < keep_prob
  return tf.cast(keep, dtype) / tf.cast(keep_prob, dtype)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Dropout(keras.layers.Layer):
  """Inverted dropout that acts only when `training=True`; holds no state."""

  def __init__(self, rate: float, **kwargs):
    """Creates the layer.

    Args:
      rate: fraction of units zeroed in training, in [0, 1).
      **kwargs: standard Keras layer arguments.

    Raises:
      ValueError: if rate is outside [0, 1).
    """
    super().__init__(**kwargs)
    if not 0.0 <= rate < 1.0:
      raise ValueError(f"Dropout rate must be in [0, 1), got {rate!r}.")
    self.rate = float(rate)

  def call(self, inputs, training=False):
    if not training or self.rate == 0.0:
      return inputs
    return inputs * _keep_mask(tf.shape(inputs), 1.0 - self.rate, inputs.dtype)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), "rate": self.rate}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class StochasticDepth(keras.layers.Layer):
  """Drops a residual branch per example (Huang et al. 2016), training only.

  Each example's branch survives with `survival_prob` and is then divided by
  it, so the expected output equals the inference output.
  """

  def __init__(self, survival_prob: float, **kwargs):
    """Creates the layer.

    Args:
      survival_prob: probability of keeping an example's branch, in (0, 1].
      **kwargs: standard Keras layer arguments.

    Raises:
      ValueError: if survival_prob is outside (0, 1].
    """
    super().__init__(**kwargs)
    if not 0.0 < survival_prob <= 1.0:
      raise ValueError(
          f"survival_prob must be in (0, 1], got {survival_prob!r}.")
    self.survival_prob = float(survival_prob)

  def call(self, inputs, training=False):
    if not training or self.survival_prob == 1.0:
      return inputs
    rank = len(inputs.shape)
    mask_shape = tf.concat(
        [tf.shape(inputs)[:1],
         tf.ones([rank - 1], tf.int32)], 0)
    return inputs * _keep_mask(mask_shape, self.survival_prob, inputs.dtype)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), "survival_prob": self.survival_prob}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class InputNormalization(keras.layers.Layer):
  """(x - mean) / stddev per RGB channel, always computed in float32.

  Pixels 0..255 are exact in bfloat16 but their normalised values are not,
  so this layer defaults to a float32 dtype policy; the next layer casts to
  the compute dtype.
  """

  def __init__(self, mean: Sequence[float], stddev: Sequence[float], **kwargs):
    """Creates the layer.

    Args:
      mean: per-channel mean on the input's scale.
      stddev: per-channel standard deviation, all > 0.
      **kwargs: standard Keras layer arguments; dtype defaults to float32.

    Raises:
      ValueError: if mean and stddev differ in length or a stddev is <= 0.
    """
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)
    if len(mean) != len(stddev):
      raise ValueError(f"mean {mean!r} and stddev {stddev!r} differ in "
                       "length.")
    if any(s <= 0 for s in stddev):
      raise ValueError(f"stddev must be positive, got {stddev!r}.")
    self.mean = tuple(float(m) for m in mean)
    self.stddev = tuple(float(s) for s in stddev)

  def call(self, inputs):
    mean = tf.constant(self.mean, dtype=inputs.dtype)
    stddev = tf.constant(self.stddev, dtype=inputs.dtype)
    return (inputs - mean) / stddev

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), "mean": self.mean, "stddev": self.stddev}


def squeeze_excite(inputs, reduced_filters: int, activation: str, name: str):
  """Squeeze-and-excitation (Hu et al. 2018) on a symbolic NHWC tensor.

  Global average pool, 1x1 conv to `reduced_filters` with `activation`, 1x1
  conv back with a sigmoid, and a channel-wise product with the input. Both
  convolutions carry a bias.

  Args:
    inputs: NHWC tensor.
    reduced_filters: channels of the bottleneck, >= 1.
    activation: Keras activation name for the bottleneck.
    name: prefix of the layer names (`{name}_se_reduce` ...).

  Returns:
    The gated tensor, shaped as `inputs`.
  """
  filters = inputs.shape[-1]
  x = keras.layers.GlobalAveragePooling2D(keepdims=True,
                                          name=f"{name}_se_squeeze")(inputs)
  x = keras.layers.Conv2D(reduced_filters, 1, activation=activation,
                          kernel_initializer=conv_kernel_initializer(),
                          name=f"{name}_se_reduce")(x)
  x = keras.layers.Conv2D(filters, 1, activation="sigmoid",
                          kernel_initializer=conv_kernel_initializer(),
                          name=f"{name}_se_expand")(x)
  return keras.layers.Multiply(name=f"{name}_se_excite")([inputs, x])


def conv_bn_act(inputs, filters: int, kernel_size: int, strides: int,
                activation: Optional[str], name: str, bn_name: str,
                batch_norm_momentum: float, batch_norm_epsilon: float,
                act_name: Optional[str] = None, batch_norm_group_size=1):
  """Bias-free convolution, `BatchNorm` and an optional activation.

  Args:
    inputs: NHWC tensor.
    filters: output channels.
    kernel_size: square kernel size.
    strides: stride in both spatial dimensions.
    activation: Keras activation name, or None for none.
    name: name of the Conv2D layer.
    bn_name: name of the BatchNorm layer.
    batch_norm_momentum: BatchNorm momentum.
    batch_norm_epsilon: BatchNorm epsilon.
    act_name: name of the activation layer (required with an activation).
    batch_norm_group_size: BatchNorm group_size (replicas sharing batch
      statistics).

  Returns:
    The output tensor.
  """
  x = keras.layers.Conv2D(filters, kernel_size, strides=strides, padding="same",
                          use_bias=False,
                          kernel_initializer=conv_kernel_initializer(),
                          name=name)(inputs)
  x = BatchNorm(batch_norm_momentum, batch_norm_epsilon,
                group_size=batch_norm_group_size, name=bn_name)(x)
  if activation is not None:
    x = keras.layers.Activation(activation_function(activation),
                                name=act_name)(x)
  return x
