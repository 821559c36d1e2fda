"""Batch statistics averaged over groups of replicas (synchronised batch norm).

On a pod slice each replica sees a few dozen images; the reference's
`TpuBatchNormalization` (tensorflow/tpu models/official/efficientnet/utils.py)
therefore averages the batch mean and the mean of squares over groups of
TPU cores inside the replicated step, and takes the variance as
E[x²] − E[x]². Its grouping: no synchronisation on slices of up to 8 cores,
otherwise groups of max(8, cores // 8) consecutive cores. On Mirrored and
MultiWorkerMirrored strategies 'auto' synchronises the whole replica set.

'distributed:B' is the reference's other batch norm, the
`DistributedBatchNormalization` that its main.py selects with
`--optimizer=lars` (utils.py `train_batch_norm`/`eval_batch_norm`), with B its
`--batch_norm_batch_size` (default 128). With R replicas of b images each:

  group size   g = R                      if R <= 8,
               g = max(1, int(B / b))     otherwise (consecutive replicas,
                                          [[0..g-1], [g..2g-1], …]);
  statistics   μ_G = (1/g) Σ_{r∈G} mean(x_r),
               σ²_G = (1/g) Σ_{r∈G} mean(x_r²) − μ_G²  (no Bessel correction),
               each replica normalises with its group's μ_G and σ²_G;
  moving       moving_mean ← m·moving_mean + (1 − m)·(1/R) Σ_r μ_{G(r)},
  averages     moving_var  ← m·moving_var  + (1 − m)·(1/R) Σ_r σ²_{G(r)},

i.e. the group statistics averaged over *all* replicas (the reference's
`cross_replica_sum(stat) / num_replicas`). Here the all-replica average is
the moving variables' MEAN aggregation: each replica assigns
m·moving + (1 − m)·stat_r and the strategy averages the R assignments, which
is the same number. 'distributed:B:T' replaces the reference's 8 by T (all
replicas share up to T replicas), e.g. to see groups on a few GPUs.

Groups smaller than the replica set use the TPU's grouped
`cross_replica_sum`; on Mirrored and MultiWorkerMirrored strategies each
replica puts its values in its own row of a [R, …] zero tensor, one SUM
all-reduce gives every replica all rows, and each sums its group's rows.

These functions run inside `strategy.run` (a replica context); they hold no
state and compile under XLA.
"""
import tensorflow as tf

# Group-size settings besides a positive int and 'distributed:B[:T]'.
GROUP_SIZE_KEYWORDS = ("auto", "all")
_DISTRIBUTED = "distributed"
# The reference's DistributedBatchNormalization shares statistics over all
# replicas on slices of up to 8 cores.
_REFERENCE_ALL_REPLICAS_UP_TO = 8


def distributed(batch_norm_batch_size=128,
                all_replicas_up_to=_REFERENCE_ALL_REPLICAS_UP_TO):
  """The group-size setting of the reference's distributed batch norm.

  Args:
    batch_norm_batch_size: images per statistics group (the reference's
      `--batch_norm_batch_size`, default 128).
    all_replicas_up_to: up to this many replicas, all share statistics
      (the reference: 8).

  Returns:
    'distributed:B' (or 'distributed:B:T' for another T), a `group_size`
    setting for `BatchNorm` and `build_model(batch_norm_group_size=...)`.

  Raises:
    ValueError: for a value that is not an int >= 1 (T: >= 0).
  """
  setting = f"{_DISTRIBUTED}:{batch_norm_batch_size}"
  if all_replicas_up_to != _REFERENCE_ALL_REPLICAS_UP_TO:
    setting += f":{all_replicas_up_to}"
  parse_distributed(setting)
  return setting


def parse_distributed(group_size):
  """(images per group, all-replicas threshold), or None for other settings.

  Raises:
    ValueError: for a malformed 'distributed:…' setting.
  """
  if not (isinstance(group_size, str) and group_size.startswith(_DISTRIBUTED)):
    return None
  parts = group_size.split(":")[1:]
  try:
    numbers = [int(part) for part in parts]
  except ValueError:
    numbers = []
  if len(numbers) == 1:
    numbers.append(_REFERENCE_ALL_REPLICAS_UP_TO)
  if len(numbers) != 2 or numbers[0] < 1 or numbers[1] < 0:
    raise ValueError(f"batch-norm group_size {group_size!r}: expected "
                     "'distributed:B' or 'distributed:B:T' with B >= 1 "
                     "images per group and T >= 0 replicas.")
  return tuple(numbers)


def distributed_group_size(group_size, num_replicas, per_replica_batch):
  """Replicas per group of the reference's distributed batch norm.

  Args:
    group_size: a 'distributed:B[:T]' setting.
    num_replicas: replicas in sync (R).
    per_replica_batch: images per replica (b).

  Returns:
    R if R <= T, else max(1, int(B / b)).

  Raises:
    ValueError: if the groups would not split the replicas evenly.
  """
  images, all_up_to = parse_distributed(group_size)
  if num_replicas <= all_up_to:
    return num_replicas
  size = max(1, int(images / per_replica_batch))
  if size > num_replicas or num_replicas % size:
    raise ValueError(
        f"batch-norm group_size={group_size!r}: groups of {size} replicas "
        f"({images} images at {per_replica_batch} per replica) do not split "
        f"the {num_replicas} replicas evenly.")
  return size


def validate_group_size(group_size):
  """Raises ValueError unless `group_size` is a valid setting.

  Valid: 'auto', 'all', an int >= 1 or 'distributed:B[:T]'.
  """
  if group_size in GROUP_SIZE_KEYWORDS:
    return
  if parse_distributed(group_size):
    return
  if isinstance(group_size,
                bool) or not isinstance(group_size, int) or (group_size < 1):
    raise ValueError(f"batch-norm group_size must be 'auto', 'all', an int "
                     f">= 1 or 'distributed:B[:T]', got {group_size!r}.")


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
  if is_distributed(group_size):
    raise ValueError(f"group_size={group_size!r} depends on the batch: "
                     "resolve it with distributed_group_size.")
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


def replicas_per_group(group_size, per_replica_batch=None):
  """Replicas to share statistics with now, or None for this batch alone.

  None outside `strategy.run`, for group_size 1, and under 'auto' when the
  grouping comes to 1 (one replica; TPU slices of up to 8 cores): the caller
  then uses the fused per-replica kernel. 'all' and 'distributed:…' always
  synchronise, even one replica (which compiles the same code path on a
  single device, and gives 'distributed' its moving-variance rule).

  Args:
    group_size: the layer's setting.
    per_replica_batch: the replica's static batch size; needed by
      'distributed:…' settings.

  Returns:
    An int, or None.

  Raises:
    ValueError: for a 'distributed:…' setting without a static batch size,
      or groups that do not split the replicas evenly.
  """
  if group_size == 1:
    return None
  context = tf.distribute.get_replica_context()
  if context is None:
    return None
  if parse_distributed(group_size):
    if not per_replica_batch:
      raise ValueError(f"batch-norm group_size={group_size!r} needs a static "
                       "per-replica batch size (drop_remainder=True).")
    return distributed_group_size(group_size, context.num_replicas_in_sync,
                                  per_replica_batch)
  size = resolve_group_size(
      group_size, context.num_replicas_in_sync,
      on_tpu=isinstance(tf.distribute.get_strategy(),
                        tf.distribute.TPUStrategy))
  if size == 1 and group_size != "all":
    return None
  return size


def group_assignment(num_replicas, group_size):
  """Consecutive replicas in groups: [[0..size-1], [size..2·size-1], …]."""
  return [
      list(range(start, start + group_size))
      for start in range(0, num_replicas, group_size)
  ]


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
    total = _group_sum_by_all_reduce(context, values, group_size)
  return total / float(group_size)


def _group_sum_by_all_reduce(context, values, group_size):
  """Sums `values` over this replica's group with one all-reduce.

  For strategies without grouped collectives (Mirrored, MultiWorkerMirrored):
  replica r writes its values into row r of a [R, …] zero tensor; the SUM
  all-reduce of those gives every replica every row, and each adds up the
  rows of its own group. The all-reduce carries R times the values.
  """
  num_replicas = context.num_replicas_in_sync
  replica = context.replica_id_in_sync_group
  row = tf.one_hot(replica, num_replicas, dtype=values.dtype)
  rows = tf.reshape(row, [num_replicas] + [1] * values.shape.rank) * values
  every_row = context.all_reduce(tf.distribute.ReduceOp.SUM, rows)
  groups = tf.reshape(every_row, [num_replicas // group_size, group_size] +
                      values.shape.as_list())
  return tf.reduce_sum(tf.gather(groups, replica // group_size), axis=0)


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
  local = tf.stack(
      [tf.reduce_mean(x, axes),
       tf.reduce_mean(tf.square(x), axes)])
  mean, mean_of_squares = tf.unstack(_group_mean(local, group_size))
  # E[x²] − E[x]² can dip below 0 by rounding; a variance cannot.
  variance = tf.maximum(mean_of_squares - tf.square(mean), 0.0)
  per_replica = tf.cast(tf.size(x) // tf.shape(x)[-1], tf.float32)
  return mean, variance, per_replica * float(group_size)


def batch_norm(x, scale, offset, epsilon, group_size, bessel=True):
  """Training batch norm of NHWC `x` with a replica group's statistics.

  Args:
    x: the replica's [N, H, W, C] batch.
    scale: gamma, [C] float32.
    offset: beta, [C] float32.
    epsilon: added to the variance.
    group_size: replicas per group.
    bessel: whether the variance returned for the moving average carries
      Bessel's correction over the group (as TF1's fused kernel hands it;
      the 'auto'/'all'/int settings) or not (the reference's distributed
      batch norm, which averages E[x²] − E[x]² as it is).

  Returns:
    (outputs in x's dtype, the group's mean, the group's variance for the
    moving average).
  """
  mean, variance, count = synchronized_moments(x, group_size)
  outputs = tf.nn.batch_normalization(tf.cast(x, tf.float32), mean, variance,
                                      offset, scale, epsilon)
  if bessel:
    variance = variance * count / tf.maximum(count - 1.0, 1.0)
  return tf.cast(outputs, x.dtype), mean, variance


def is_distributed(group_size):
  """Whether `group_size` selects the reference's distributed batch norm."""
  return parse_distributed(group_size) is not None
