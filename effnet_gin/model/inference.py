"""The inference graph of a trained model: what exporters hand to converters.

`inference_model` copies a Keras functional EfficientNet into the network a
device runs, with the same weights and the same inference outputs:

* every batch norm that follows a convolution is folded into that
  convolution's kernel and bias (the BatchNorm layer becomes an identity), so
  no converter has to recognise `FusedBatchNormV3`, and ONNX graphs carry no
  BatchNormalization nodes;
* swish, the training graph's `fused_swish` (XLA-compiled kernels with a
  custom gradient) or Keras' `silu` (also a custom gradient), becomes the
  plain `x * sigmoid(x)`;
* dropout and stochastic depth, which are identities at inference, are
  removed (replaced by identities);
* every layer computes in float32, whatever precision policy trained it.

The copy is only for inference: it has no training behaviour to speak of.
"""
import keras
import numpy as np

from effnet_gin.model import activations
from effnet_gin.model import layers


def plain_swish(x):
  """swish(x) = x * sigmoid(x) as two primitive ops (no custom gradient)."""
  return x * keras.ops.sigmoid(x)


_SWISHES = (activations.fused_swish, keras.activations.silu,
            keras.activations.swish)
_TRAINING_ONLY = (layers.Dropout, layers.StochasticDepth, keras.layers.Dropout)
_CONVOLUTIONS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


def _is_batch_norm(layer):
  # Duck-typed, so effnet_gin's BatchNorm, Keras' BatchNormalization and any
  # cross-replica variant with the same four statistics all fold.
  return all(
      hasattr(layer, name)
      for name in ("moving_mean", "moving_variance",
                   "epsilon")) and (not isinstance(layer, _CONVOLUTIONS))


def _producer(layer):
  """The layer whose output is `layer`'s (single) input."""
  return layer.input._keras_history[0]  # pylint: disable=protected-access


def _consumers(model):
  """Maps each layer name to the number of layers that read its output."""
  counts = {}
  for layer in model.layers:
    for node in layer._inbound_nodes:  # pylint: disable=protected-access
      for tensor in node.input_tensors:
        name = tensor._keras_history[0].name  # pylint: disable=protected-access
        counts[name] = counts.get(name, 0) + 1
  return counts


def _foldable_pairs(model):
  """{convolution name: batch-norm layer} for each conv -> BN to fold.

  A convolution folds when its output feeds only that batch norm and it has
  no activation of its own (else the BN would not act on its linear output).
  """
  consumers = _consumers(model)
  pairs = {}
  for layer in model.layers:
    if not _is_batch_norm(layer):
      continue
    conv = _producer(layer)
    linear = getattr(conv, "activation",
                     None) in (None, keras.activations.linear)
    if (isinstance(conv, _CONVOLUTIONS) and linear and
        consumers.get(conv.name) == 1):
      pairs[conv.name] = layer
  return pairs


def _float32_config(layer):
  config = layer.get_config()
  config["dtype"] = "float32"
  if config.get("activation") is not None and (getattr(layer, "activation",
                                                       None) in _SWISHES):
    config["activation"] = plain_swish
  return config


def _clone_layer(layer, pairs):
  """The inference counterpart of one layer (weights are set afterwards)."""
  if _is_batch_norm(layer) and _producer(layer).name in pairs:
    return keras.layers.Identity(name=layer.name)
  if isinstance(layer, _TRAINING_ONLY):
    return keras.layers.Identity(name=layer.name)
  config = _float32_config(layer)
  if layer.name in pairs:
    config["use_bias"] = True
  if isinstance(layer, keras.layers.Activation) and (layer.activation
                                                     in _SWISHES):
    config["activation"] = plain_swish
  return layer.__class__.from_config(config)


def _bn_parameter(batch_norm, name, default):
  # Keras' BatchNormalization has no gamma (beta) with scale (center) False.
  value = getattr(batch_norm, name, None)
  return np.asarray(default if value is None else value, np.float64)


def folded_weights(conv, batch_norm):
  """Kernel and bias of `conv` with `batch_norm` (inference mode) folded in.

  BN(y) = gamma * (y - mean) / sqrt(variance + epsilon) + beta, per output
  channel, is an affine map, so BN(conv(x)) = conv'(x) with the kernel's
  output channels scaled and a bias added.

  Returns:
    [kernel, bias] as float32 numpy arrays.
  """
  weights = [np.asarray(w, np.float64) for w in conv.get_weights()]
  kernel = weights[0]
  bias = weights[1] if len(weights) > 1 else 0.0
  gamma = _bn_parameter(batch_norm, "gamma", 1.0)
  beta = _bn_parameter(batch_norm, "beta", 0.0)
  mean = np.asarray(batch_norm.moving_mean, np.float64)
  variance = np.asarray(batch_norm.moving_variance, np.float64)
  scale = gamma / np.sqrt(variance + batch_norm.epsilon)
  if isinstance(conv, keras.layers.DepthwiseConv2D):
    # Kernel [kh, kw, in, multiplier]: output channel c * multiplier + m.
    scale_shape = kernel.shape[2:]
  else:
    scale_shape = kernel.shape[-1:]
  kernel = kernel * scale.reshape(scale_shape)
  bias = (bias - mean) * scale + beta
  return [kernel.astype(np.float32), bias.astype(np.float32)]


def inference_model(model: keras.Model) -> keras.Model:
  """A float32 copy of `model` for export: BN folded, plain swish, no dropout.

  Args:
    model: a Keras functional model, e.g. from `build_model`, holding the
      weights to export (swap EMA weights in first).

  Returns:
    A new functional model with the same inputs, outputs and layer names
    whose inference outputs equal `model(x, training=False)` up to float32
    rounding.
  """
  pairs = _foldable_pairs(model)
  clone = keras.models.clone_model(
      model, clone_function=lambda layer: _clone_layer(layer, pairs))
  for layer in model.layers:
    if not layer.weights or _is_batch_norm(layer) and (_producer(layer).name
                                                       in pairs):
      continue
    target = clone.get_layer(layer.name)
    if layer.name in pairs:
      target.set_weights(folded_weights(layer, pairs[layer.name]))
    else:
      target.set_weights(layer.get_weights())
  return clone
