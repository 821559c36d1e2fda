"""Batch statistics averaged over groups of replicas (synchronised batch norm).

On a pod slice each replica sees a few dozen images; the reference's
`TpuBatchNormalization` (tensorflow/tpu models/official/efficientnet/utils.py)
therefore averages the batch mean and the mean of squares over groups of
TPU cores inside the replicated step, and takes the variance as
E[x²] − E[x]². Its grouping: no synchronisation on slices of up to 8 cores,
otherwise groups of max(8, cores // 8) consecutive cores. On Mirrored and
MultiWorkerMirrored strategies 'auto' synchronises the whole replica set.

These functions run inside `strategy.run` (a replica context); they hold no
state and compile under XLA.
"""
import tensorflow as tf

# Group-size settings besides a positive int.
GROUP_SIZE_KEYWORDS = ("auto", "all")


def validate_group_size(group_size):
  """Raises ValueError unless `group_size` is 'auto', 'all' or an int >= 1."""
  if group_size in GROUP_SIZE_KEYWORDS:
    return
  if isinstance(group_size, bool) or not isinstance(group_size, int) or (
      group_size < 1):
    raise ValueError(f"batch-norm group_size must be 'auto', 'all' or an int "
                     f">= 1, got {group_size!r}.")


def resolve_group_size(group_size, num_replicas, *, on_tpu):
  """How many replicas share batch statistics.

  Args:
    group_size: 'auto' (the reference's TPU grouping on TPU, all replicas
      elsewhere), 'all', or an int that divides `num_replicas` (1 = each
      replica alone, the unsynchronised batch norm).
    num_replicas: replicas in sync.
    on_tpu: whether the replicas are TPU cores.

  Returns:
    An int in [1, num_replicas] that divides it.

  Raises:
    ValueError: for an invalid setting or one that does not divide
      `num_replicas`.
  """
  validate_group_size(group_size)
  if group_size == "auto":
    if not on_tpu:
      return num_replicas
    return 1 if num_replicas <= 8 else max(8, num_replicas // 8)
  if group_size == "all":
    return num_replicas
  if group_size > num_replicas or num_replicas % group_size:
    raise ValueError(f"batch-norm group_size={group_size} does not divide the "
                     f"{num_replicas} replicas into equal groups.")
  return group_size


def replicas_per_group(group_size):
  """Replicas to share statistics with now, or None for this batch alone.

  None outside `strategy.run`, for group_size 1, and under 'auto' when the
  grouping comes to 1 (one replica; TPU slices of up to 8 cores): the caller
  then uses the fused per-replica kernel. 'all' always synchronises, even
  one replica (which compiles the same code path on a single device).
  """
  if group_size == 1:
    return None
  context = tf.distribute.get_replica_context()
  if context is None:
    return None
  size = resolve_group_size(
      group_size, context.num_replicas_in_sync,
      on_tpu=isinstance(tf.distribute.get_strategy(),
                        tf.distribute.TPUStrategy))
  if size == 1 and group_size != "all":
    return None
  return size


def group_assignment(num_replicas, group_size):
  """Consecutive replicas in groups: [[0..size-1], [size..2·size-1], …]."""
  return [list(range(start, start + group_size))
          for start in range(0, num_replicas, group_size)]


def _group_mean(values, group_size):
  """Means `values` over this replica's group (inside a replica context)."""
  context = tf.distribute.get_replica_context()
  num_replicas = context.num_replicas_in_sync
  if group_size == num_replicas:
    total = context.all_reduce(tf.distribute.ReduceOp.SUM, values)
  elif isinstance(tf.distribute.get_strategy(), tf.distribute.TPUStrategy):
    total = tf.compat.v1.tpu.cross_replica_sum(
        values, group_assignment(num_replicas, group_size))
  else:
    raise ValueError(f"batch-norm groups of {group_size} out of "
                     f"{num_replicas} replicas need a TPU; other strategies "
                     "synchronise the whole replica set (group_size='all').")
  return total / float(group_size)


def synchronized_moments(x, group_size):
  """Mean and variance over the channels of NHWC `x` across a replica group.

  Every replica must hold the same number of examples (static batches, as
  `drop_remainder=True` gives). Statistics are float32 whatever x's dtype.

  Args:
    x: the replica's [N, H, W, C] batch.
    group_size: replicas per group (see `resolve_group_size`).

  Returns:
    (mean, variance, count): the group's per-channel mean and (biased)
    variance, and the number of values per channel they were taken over.
  """
  x = tf.cast(x, tf.float32)
  axes = [0, 1, 2]
  local = tf.stack([tf.reduce_mean(x, axes),
                    tf.reduce_mean(tf.square(x), axes)])
  mean, mean_of_squares = tf.unstack(_group_mean(local, group_size))
  # E[x²] − E[x]² can dip below 0 by rounding; a variance cannot.
  variance = tf.maximum(mean_of_squares - tf.square(mean), 0.0)
  per_replica = tf.cast(tf.size(x) // tf.shape(x)[-1], tf.float32)
  return mean, variance, per_replica * float(group_size)


def batch_norm(x, scale, offset, epsilon, group_size):
  """Training batch norm of NHWC `x` with a replica group's statistics.

  Returns:
    (outputs in x's dtype, the group's mean, the group's variance with
    Bessel's correction, as the fused kernel hands the moving average).
  """
  mean, variance, count = synchronized_moments(x, group_size)
  outputs = tf.nn.batch_normalization(tf.cast(x, tf.float32), mean, variance,
                                      offset, scale, epsilon)
  unbiased = variance * count / tf.maximum(count - 1.0, 1.0)
  return tf.cast(outputs, x.dtype), mean, unbiased
