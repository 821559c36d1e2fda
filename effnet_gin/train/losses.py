"""Training loss, weight decay and accuracy counts (gin-free tensor functions).

The loss functions return one *replica's share* of the global quantity: the
training loop sums the per-replica values -- Keras's TensorFlow optimizer
all-reduces (SUMS) the gradients over replicas in `apply_gradients`, and the
loop reduces the reported loss with `ReduceOp.SUM`. Both functions are plain
TensorFlow ops and compile under XLA.
"""
import re

import keras
import tensorflow as tf

# Layer segment of a batch-norm variable path, e.g. 'stem_bn',
# 'block2a_expand_bn', 'batch_normalization_3', 'tpu_batch_normalization'
# (the TF1 reference's names).
_BATCH_NORM_LAYER = re.compile(
    r"(^|_)(bn\d*|batch_?norm(alization)?)(_\d+)?$", re.IGNORECASE)
_BATCH_NORM_PARAMETER = ("gamma", "beta")


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
  per_example = tf.nn.softmax_cross_entropy_with_logits(
      labels=targets, logits=logits)
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


def _is_batch_norm_path(path):
  """Whether a variable path names a batch-norm gamma or beta ('x_bn/gamma')."""
  parts = re.split(r"[/.]", re.sub(r":\d+$", "", path))
  if len(parts) < 2 or parts[-1] not in _BATCH_NORM_PARAMETER:
    return False
  return bool(_BATCH_NORM_LAYER.search(parts[-2]))


def _batch_norm_variable_ids(model):
  """Ids of the variables owned by Keras BatchNormalization layers."""
  # Keras 3 has no public recursive layer walk; `_flatten_layers` is the one
  # Keras itself uses (summary, weights) and covers nested layers.
  # pylint: disable-next=protected-access
  layers = model._flatten_layers(include_self=True, recursive=True)
  return {id(v) for layer in layers
          if isinstance(layer, keras.layers.BatchNormalization)
          for v in layer.weights}


def regularized_variables(model_or_variables):
  """Returns the trainable variables weight decay applies to.

  Batch-norm parameters are excluded, as in the reference: a variable is
  excluded when it belongs to a `keras.layers.BatchNormalization` layer
  (only checkable when a model is given) or when its path matches
  `*bn*/gamma` / `*bn*/beta` -- the layer segment being `bn`, ending in `_bn`
  (`stem_bn`, `block2a_project_bn`, the names effnet_gin's own fused
  `BatchNorm` layers get) or a batch-norm class name (`batch_normalization_3`).

  Args:
    model_or_variables: A Keras model/layer (its trainable variables are
      used) or an iterable of variables.

  Returns:
    The list of variables to decay.
  """
  if isinstance(model_or_variables, keras.layers.Layer):
    variables = list(model_or_variables.trainable_variables)
    excluded = _batch_norm_variable_ids(model_or_variables)
  else:
    variables = [v for v in model_or_variables if v.trainable]
    excluded = set()
  return [v for v in variables
          if id(v) not in excluded
          and not _is_batch_norm_path(getattr(v, "path", None) or v.name)]


def weight_decay_loss(model_or_variables, weight_decay=1e-5):
  """L2 weight decay, weight_decay * sum(||w||^2 / 2), as a replica's share.

  Inside a replica context of a multi-replica strategy the term is divided by
  `num_replicas_in_sync`: every replica adds it to its loss and the optimizer
  SUMS the gradients over replicas, so each replica contributes 1/N of it and
  the decay is applied once. In cross-replica context, or with a single
  replica, the full term is returned.

  Args:
    model_or_variables: A Keras model/layer or an iterable of variables; see
      `regularized_variables` for which ones are decayed.
    weight_decay: Coefficient; the reference uses 1e-5.

  Returns:
    A float32 scalar.

  Raises:
    ValueError: If `weight_decay` is negative.
  """
  if weight_decay < 0:
    raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}.")
  variables = regularized_variables(model_or_variables)
  if not weight_decay or not variables:
    return tf.constant(0.0, tf.float32)
  total = tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in variables])
  replica_context = tf.distribute.get_replica_context()
  num_replicas = (replica_context.num_replicas_in_sync if replica_context
                  else 1)
  return weight_decay * total / float(num_replicas)


def top_k_correct(labels, logits, k, weights=None):
  """Counts the examples whose label is among the k highest logits.

  Ties count in the label's favour (as `tf.math.in_top_k`): an example is
  correct when fewer than k logits are strictly greater than the label's.
  Computed without top-k or sorting so it compiles under XLA.

  Args:
    labels: int [batch] class ids, or float [batch, classes] soft labels (their
      argmax is used).
    logits: [batch, classes] scores.
    k: Positive integer.
    weights: Optional [batch] weights (e.g. 0 for padding examples).

  Returns:
    A float32 scalar: the (weighted) number of correct examples.

  Raises:
    ValueError: If `k` is not a positive integer.
  """
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    raise ValueError(f"k must be a positive integer, got {k!r}.")
  logits = tf.cast(logits, tf.float32)
  labels = tf.convert_to_tensor(labels)
  if labels.shape.rank == 2:
    labels = tf.argmax(labels, axis=-1)
  labels = tf.cast(labels, tf.int32)
  label_logits = tf.gather(logits, labels, axis=1, batch_dims=1)
  num_greater = tf.reduce_sum(
      tf.cast(logits > label_logits[:, tf.newaxis], tf.int32), axis=-1)
  correct = tf.cast(num_greater < k, tf.float32)
  if weights is not None:
    correct *= tf.cast(weights, tf.float32)
  return tf.reduce_sum(correct)
