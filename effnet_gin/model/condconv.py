"""Conditionally parameterised convolutions (CondConv, Yang et al. 2019).

A CondConv convolution owns `num_experts` kernels. Each example mixes them
with its own routing weights (in EfficientNet-CondConv: a sigmoid dense layer
on the block input's global average) and is convolved with its mixed
kernel. The reference (tensorflow/tpu, models/official/efficientnet/condconv)
loops over the batch; here every example is convolved at once, tap by tap
of the kernel: each of the k x k taps multiplies a strided slice of the
padded input by that tap's per-example weights. All shapes but the batch
are static, so the layer compiles under XLA (`jit_compile=True`) and its
cost is that of an ordinary convolution plus the mixing. When the batch is
static too (a compiled training step), a depthwise CondConv is one depthwise
convolution over the batch folded into the channels instead.

The experts are stored as the reference stores them, one flattened kernel
per row: [num_experts, kh * kw * in * out] (depthwise: [..., kh * kw * in]).
"""
import math

import keras
import numpy as np
import tensorflow as tf

_PACKAGE = "effnet_gin"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ExpertKernelInitializer(keras.initializers.Initializer):
  """Each expert's kernel as the reference initialises a convolution's.

  normal(0, sqrt(2 / (kh * kw * out))), out = 1 for a depthwise kernel.
  """

  def __init__(self, kernel_shape):
    self.kernel_shape = tuple(int(d) for d in kernel_shape)

  def __call__(self, shape, dtype=None):
    kh, kw, _, out = self.kernel_shape
    return keras.random.normal(shape, stddev=math.sqrt(2.0 / (kh * kw * out)),
                               dtype=dtype)

  def get_config(self):
    return {"kernel_shape": self.kernel_shape}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CondConv(keras.layers.Layer):
  """A bias-free "same"-padded CondConv convolution, standard or depthwise.

  Called on `[inputs, routing_weights]`: NHWC inputs with static height,
  width and channels, and routing weights [N, num_experts].
  """

  def __init__(self, filters, kernel_size, *, num_experts, strides=1,
               depthwise=False, **kwargs):
    """Creates the layer.

    Args:
      filters: output channels (ignored when depthwise: one per input).
      kernel_size: square kernel size, >= 1.
      num_experts: kernels to mix, >= 1.
      strides: stride in both spatial dimensions, >= 1.
      depthwise: a depthwise convolution (channel multiplier 1).
      **kwargs: standard Keras layer arguments.

    Raises:
      ValueError: for a size, stride or expert count below 1.
    """
    super().__init__(**kwargs)
    for field, value in (("filters", filters), ("kernel_size", kernel_size),
                         ("num_experts", num_experts), ("strides", strides)):
      if int(value) < 1:
        raise ValueError(f"CondConv {field} must be >= 1, got {value!r}.")
    self.filters = int(filters)
    self.kernel_size = int(kernel_size)
    self.num_experts = int(num_experts)
    self.strides = int(strides)
    self.depthwise = bool(depthwise)
    self.kernel_shape = None

  def build(self, input_shape):
    inputs_shape, _ = input_shape
    if None in tuple(inputs_shape[1:]):
      raise ValueError(f"CondConv {self.name!r} needs static height, width "
                       f"and channels, got input shape {inputs_shape}.")
    channels = int(inputs_shape[-1])
    self.kernel_shape = (self.kernel_size, self.kernel_size, channels,
                         1 if self.depthwise else self.filters)
    self.kernel = self.add_weight(
        name="kernel", shape=(self.num_experts, math.prod(self.kernel_shape)),
        initializer=ExpertKernelInitializer(self.kernel_shape))

  def call(self, inputs):
    x, routing = inputs
    routing = tf.cast(routing, self.compute_dtype)
    experts = tf.cast(self.kernel, self.compute_dtype)
    kernels = tf.reshape(tf.matmul(routing, experts), (-1,) + self.kernel_shape)
    if self.depthwise and x.shape[0] is not None:
      return self._depthwise_folded(x, kernels)
    x = _pad_same(x, self.kernel_size, self.strides)
    out_h, out_w = self._output_size(x.shape)
    outputs = None
    for i in range(self.kernel_size):
      for j in range(self.kernel_size):
        window = x[:, i:i + (out_h - 1) * self.strides + 1:self.strides,
                   j:j + (out_w - 1) * self.strides + 1:self.strides, :]
        if self.depthwise:
          tap = window * kernels[:, i, j, :, 0][:, tf.newaxis, tf.newaxis, :]
        else:
          tap = tf.einsum("bhwc,bco->bhwo", window, kernels[:, i, j])
        outputs = tap if outputs is None else outputs + tap
    return outputs

  def _depthwise_folded(self, x, kernels):
    """With a static batch: one depthwise convolution of all examples.

    The batch is folded into the channels ([1, H, W, N * C]), each example's
    channels meeting their own kernels; XLA compiles this far faster than
    the tap-by-tap sum.
    """
    batch, height, width, channels = x.shape
    folded = tf.reshape(tf.transpose(x, [1, 2, 0, 3]),
                        [1, height, width, batch * channels])
    kernel = tf.reshape(
        tf.transpose(kernels[..., 0], [1, 2, 0, 3]),
        [self.kernel_size, self.kernel_size, batch * channels, 1])
    outputs = tf.nn.depthwise_conv2d(folded, kernel,
                                     [1, self.strides, self.strides, 1], "SAME")
    out_h, out_w = outputs.shape[1:3]
    return tf.transpose(tf.reshape(outputs, [out_h, out_w, batch, channels]),
                        [2, 0, 1, 3])

  def _output_size(self, padded_shape):
    return tuple(
        (int(padded_shape[axis]) - self.kernel_size) // self.strides + 1
        for axis in (1, 2))

  def compute_output_shape(self, input_shape):
    inputs_shape, _ = input_shape
    height, width, channels = inputs_shape[1:]
    out = self.filters if not self.depthwise else channels
    return (inputs_shape[0], -(-height // self.strides),
            -(-width // self.strides), out)

  def get_config(self):
    return {
        **super().get_config(), "filters": self.filters,
        "kernel_size": self.kernel_size,
        "num_experts": self.num_experts,
        "strides": self.strides,
        "depthwise": self.depthwise
    }


def _pad_same(x, kernel_size, strides):
  """Pads NHWC `x` as TensorFlow's "same" padding does for this conv."""
  pads = [[0, 0]]
  for axis in (1, 2):
    size = int(x.shape[axis])
    out = -(-size // strides)
    total = max((out - 1) * strides + kernel_size - size, 0)
    pads.append([total // 2, total - total // 2])
  pads.append([0, 0])
  if not np.any(pads):
    return x
  return tf.pad(x, pads)
