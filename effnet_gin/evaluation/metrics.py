"""Classification metrics as tensor functions that compile under XLA.

The evaluator reports `METRICS` for every checkpoint; the train step counts
its training top-1 with the same `top_k_correct`.
"""
import tensorflow as tf

METRICS = ("top_1_accuracy", "top_5_accuracy", "loss")


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
