"""Training loss and weight decay (gin-free tensor functions).

The loss functions return one *replica's share* of the global quantity: the
training loop sums the per-replica values -- Keras's TensorFlow optimizer
all-reduces (SUMS) the gradients over replicas in `apply_gradients`, and the
loop reduces the reported loss with `ReduceOp.SUM`. Both functions are plain
TensorFlow ops and compile under XLA.
"""
import keras
import tensorflow as tf

from effnet_gin.model import layers as model_layers

# Layers whose parameters weight decay skips: effnet_gin's fused BatchNorm and
# Keras's own (models from keras.applications, or built by hand).
_BATCH_NORM_TYPES = (model_layers.BatchNorm, keras.layers.BatchNormalization)


def classification_loss(labels, logits, *, global_batch_size,
                        label_smoothing=0.1, num_classes=None):
  """Softmax cross-entropy with label smoothing, as a replica's share.

  Labels are smoothed as TF1's `tf.losses.softmax_cross_entropy` does:
  `labels * (1 - label_smoothing) + label_smoothing / num_classes`, for hard
  and soft (mixup) labels alike. The per-example losses are summed and divided
  by the GLOBAL batch size, not the replica's: the optimizer sums the
  gradients of every replica's loss (its all-reduce), so the sum of these
  shares is the mean over the global batch -- the pattern of Orbit and the
  `tf.distribute` custom-loop guide. The loss is computed in float32 even when
  the logits are bfloat16 or float16.

  Args:
    labels: int [batch] class ids, or float [batch, num_classes] soft labels.
    logits: [batch, num_classes] unnormalised scores (any float dtype).
    global_batch_size: Examples per step summed over all replicas.
    label_smoothing: Probability mass spread uniformly over the classes, in
      [0, 1].
    num_classes: Number of classes; defaults to the logits' last dimension,
      and must match it when both are known.

  Returns:
    A float32 scalar: this replica's summed loss / global_batch_size.

  Raises:
    ValueError: If a size or `label_smoothing` is out of range, or the labels'
      shape does not fit the logits.
  """
  if global_batch_size <= 0:
    raise ValueError(
        f"global_batch_size must be positive, got {global_batch_size!r}.")
  if not 0.0 <= label_smoothing <= 1.0:
    raise ValueError(
        f"label_smoothing must be in [0, 1], got {label_smoothing!r}.")
  logits = tf.cast(logits, tf.float32)
  num_classes = _num_classes(logits, num_classes)
  labels = tf.convert_to_tensor(labels)
  if labels.shape.rank == 1:
    targets = tf.one_hot(tf.cast(labels, tf.int32), num_classes,
                         dtype=tf.float32)
  elif labels.shape.rank == 2:
    if labels.shape[-1] not in (None, num_classes):
      raise ValueError(f"Soft labels have {labels.shape[-1]} classes but the "
                       f"logits have num_classes={num_classes}.")
    targets = tf.cast(labels, tf.float32)
  else:
    raise ValueError("labels must be [batch] class ids or [batch, classes] "
                     f"soft labels, got shape {labels.shape}.")
  if label_smoothing:
    targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
  per_example = tf.nn.softmax_cross_entropy_with_logits(labels=targets,
                                                        logits=logits)
  return tf.reduce_sum(per_example) / float(global_batch_size)


def _num_classes(logits, num_classes):
  """Returns the class count, checked against the logits' static shape."""
  static = logits.shape[-1] if logits.shape.rank else None
  if num_classes is None:
    if static is None:
      raise ValueError("num_classes is required when the logits' last "
                       f"dimension is unknown (shape {logits.shape}).")
    return int(static)
  if num_classes <= 0:
    raise ValueError(f"num_classes must be positive, got {num_classes!r}.")
  if static is not None and static != num_classes:
    raise ValueError(f"num_classes={num_classes} does not match the logits' "
                     f"last dimension {static}.")
  return int(num_classes)


def _batch_norm_variable_ids(model):
  """Ids of the variables owned by batch-norm layers, nested ones included."""
  # Keras 3 has no public recursive layer walk; `_flatten_layers` is the one
  # Keras itself uses (summary, weights) and covers nested layers.
  # pylint: disable-next=protected-access
  layers = model._flatten_layers(include_self=True, recursive=True)
  return {
      id(v) for layer in layers if isinstance(layer, _BATCH_NORM_TYPES)
      for v in layer.weights
  }


def regularized_variables(model):
  """Returns the trainable variables weight decay applies to, in order.

  As the reference (which decays every trainable variable whose name lacks
  'batch_normalization'): all trainable variables except the parameters
  (gamma, beta) of batch-norm layers -- convolution kernels, the dense kernel
  and the biases (squeeze-excite, classifier) are decayed. Batch-norm layers
  are found by type, `effnet_gin.model.layers.BatchNorm` or
  `keras.layers.BatchNormalization`, at any depth of nesting and whatever
  their names.

  Args:
    model: A Keras model or layer.

  Returns:
    The list of variables to decay.

  Raises:
    TypeError: If `model` is not a Keras layer (a bare list of variables
      does not say which of them belong to batch norm).
  """
  if not isinstance(model, keras.layers.Layer):
    raise TypeError("regularized_variables needs a Keras model or layer to "
                    f"find its batch-norm layers, got {type(model).__name__}")
  excluded = _batch_norm_variable_ids(model)
  return [v for v in model.trainable_variables if id(v) not in excluded]


def weight_decay_loss(model, weight_decay=1e-5):
  """L2 weight decay, weight_decay * sum(||w||^2 / 2), as a replica's share.

  Inside a replica context of a multi-replica strategy the term is divided by
  `num_replicas_in_sync`: every replica adds it to its loss and the optimizer
  SUMS the gradients over replicas, so each replica contributes 1/N of it and
  the decay is applied once. In cross-replica context, or with a single
  replica, the full term is returned.

  Args:
    model: A Keras model or layer; see `regularized_variables` for which of
      its variables are decayed.
    weight_decay: Coefficient; the reference uses 1e-5.

  Returns:
    A float32 scalar.

  Raises:
    ValueError: If `weight_decay` is negative.
    TypeError: If `model` is not a Keras layer.
  """
  if weight_decay < 0:
    raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}.")
  variables = regularized_variables(model)
  if not weight_decay or not variables:
    return tf.constant(0.0, tf.float32)
  total = tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in variables])
  replica_context = tf.distribute.get_replica_context()
  num_replicas = (replica_context.num_replicas_in_sync
                  if replica_context else 1)
  return weight_decay * total / float(num_replicas)
