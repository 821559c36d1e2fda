"""Exponential moving average of a model's weights, as the reference keeps.

TF1-style averages (`tf.compat.v1.train.ExponentialMovingAverage` with
`num_updates=step`) of the trainable weights and the batch-norm moving
statistics; evaluation and export use them. See `ExponentialMovingAverage`
for where the training loop must update them.
"""
import contextlib
import re

import keras
import tensorflow as tf

# Batch-norm moving statistics are averaged along with the trainable weights.
_MOVING_STATISTIC = re.compile(r"(^|[/_])moving_(mean|variance)(:\d+)?$")


def _tf_variable(variable):
  """Returns the `tf.Variable` behind a Keras variable (or `variable`)."""
  return variable.value if isinstance(variable, keras.Variable) else variable


def _variable_path(variable):
  return getattr(variable, "path", None) or variable.name


def averaged_variables(model):
  """Returns the variables the reference averages, in a stable order.

  These are the weights the optimizer trains followed by the batch-norm
  moving statistics (weights whose path ends with `moving_mean` or
  `moving_variance`). Weights of frozen layers (`trainable=False`, e.g.
  `build_model(freeze_backbone=True)`) are included as if they trained, so
  a frozen and an unfrozen model average the same list in the same order
  and their EMA checkpoints stay interchangeable. Other state, such as RNG
  seeds and integer counters, is left out.

  Args:
    model: A Keras model (anything with `weights`).

  Returns:
    A list of the model's variables, without duplicates.
  """
  weights = [v for v in model.weights if tf.as_dtype(v.dtype).is_floating]
  is_statistic = [
      bool(_MOVING_STATISTIC.search(_variable_path(v))) for v in weights
  ]
  return ([v for v, stat in zip(weights, is_statistic) if not stat] +
          [v for v, stat in zip(weights, is_statistic) if stat])


class _Untracked:
  """Holds a value out of sight of `tf.Module`'s dependency tracking.

  The averages object must not re-save the model's own variables under
  `ema/` in checkpoints; the model is checkpointed on its own.
  """

  def __init__(self, value):
    self.value = value


class ExponentialMovingAverage(tf.Module):
  """TF1-style moving averages of a model's weights, for eval and export.

  Averages the trainable variables and the batch-norm moving statistics
  (see `averaged_variables`). Each `update(step)` does
  `average -= (1 - d) * (average - value)` with
  `d = min(decay, (1 + step) / (10 + step))` when `use_num_updates`, else
  `d = decay` -- `tf.compat.v1.train.ExponentialMovingAverage` with
  `num_updates=step`. Averages start at the model's values at construction.

  Distribution: construct it under `strategy.scope()`; the averages are
  mirrored like the model's variables. Call `update(step)` inside the
  replica function of `strategy.run`, right after
  `optimizer.apply_gradients` (every replica holds the same weights after the
  all-reduced step, so each replica updates its own copy with no
  communication -- the same mechanism Keras uses for optimizer slots). It also
  works in cross-replica context and without any strategy. `update` compiles
  under XLA.

  The object is trackable: pass it to `tf.train.Checkpoint(ema=...)` next to
  the model and optimizer. Its checkpoint holds only the averages, in the
  order of `averaged_variables(model)`.
  """

  def __init__(self, model, *, decay=0.9999, use_num_updates=True):
    """Creates the averages under the current distribution strategy.

    Call it in cross-replica context, under `strategy.scope()` when training
    with a strategy, after the model is built.

    Args:
      model: The Keras model being trained, already built.
      decay: Upper bound of the averaging decay, in [0, 1).
      use_num_updates: Whether to ramp the decay up with the step as
        (1 + step) / (10 + step), as the reference does.

    Raises:
      ValueError: If `decay` is outside [0, 1) or the model has no variables
        (not built yet).
    """
    super().__init__(name="exponential_moving_average")
    if not 0.0 <= decay < 1.0:
      raise ValueError(f"EMA decay must be in [0, 1), got {decay!r}.")
    sources = averaged_variables(model)
    if not sources:
      raise ValueError(f"Model {getattr(model, 'name', model)!r} has no "
                       "variables to average; build it before creating the "
                       "ExponentialMovingAverage.")
    self.decay = decay
    self.use_num_updates = use_num_updates
    self._sources = _Untracked(tuple(sources))
    self._strategy = tf.distribute.get_strategy()
    self._averages = [self._make_average(v, i) for i, v in enumerate(sources)]

  @staticmethod
  def _make_average(source, index):
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", _variable_path(source))
    source = _tf_variable(source)
    # `update` writes every replica's copy itself (Keras's slot mechanism);
    # ONLY_FIRST_REPLICA additionally makes a plain `assign` from a replica
    # context legal and keeps the copies identical.
    return tf.Variable(lambda: tf.identity(source), trainable=False,
                       name=f"average_{index}_{name}",
                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

  @property
  def averages(self):
    """The average variables, aligned with `averaged_variables(model)`."""
    return list(self._averages)

  def effective_decay(self, step):
    """Returns the decay `update(step)` applies.

    Args:
      step: The training step (int or tensor).

    Returns:
      A float32 scalar tensor.
    """
    decay = tf.constant(self.decay, tf.float32)
    if not self.use_num_updates:
      return decay
    step = tf.cast(step, tf.float32)
    return tf.minimum(decay, (1.0 + step) / (10.0 + step))

  def update(self, step):
    """Moves every average towards its variable's current value.

    Args:
      step: The training step (for the reference, the number of completed
        optimizer steps: pass `optimizer.iterations` after applying the
        gradients).
    """
    decay = self.effective_decay(step)
    pairs = list(
        zip(self._averages, [_tf_variable(v) for v in self._sources.value]))

    def apply(strategy, decay, pairs):

      def move(average, value, decay):
        value = tf.cast(value, average.dtype)
        return average.assign_sub(
            (average - value) * tf.cast(1.0 - decay, average.dtype))

      for average, value in pairs:
        strategy.extended.update(average, move, args=(value, decay),
                                 group=False)

    self._run_distributed(apply, decay, pairs)

  def copy_to_model(self):
    """Overwrites the model's variables with their averages (for eval/export).

    Call it outside `strategy.run` (cross-replica context or no scope).
    """
    self._assign_to_model(self._averages)

  @contextlib.contextmanager
  def averaged_weights(self):
    """Context manager: the model holds the averages inside, raw weights after.

    For in-process evaluation during training. Call it eagerly outside
    `strategy.run`; it keeps one copy of the raw weights in memory while
    active.

    Yields:
      None.
    """
    raw = [
        tf.identity(_tf_variable(v).read_value()) for v in self._sources.value
    ]
    self.copy_to_model()
    try:
      yield
    finally:
      self._assign_to_model(raw)

  def _assign_to_model(self, values):
    pairs = list(zip([_tf_variable(v) for v in self._sources.value], values))

    def apply(strategy, pairs):
      for variable, value in pairs:
        strategy.extended.update(variable, lambda v, x: v.assign(x),
                                 args=(value,), group=False)

    self._run_distributed(apply, pairs)

  def _run_distributed(self, fn, *args):
    """Calls `fn(strategy, *args)` where per-device updates are allowed.

    In a replica context this goes through a merge call when the strategy
    needs one, exactly like Keras's optimizer (`maybe_merge_call`); in
    cross-replica context `fn` runs directly; outside any strategy scope it
    runs in the cross-replica context of the strategy the averages were
    created under.
    """
    if not tf.distribute.has_strategy():
      with self._strategy.scope():
        fn(self._strategy, *args)
    elif tf.distribute.in_cross_replica_context():
      fn(tf.distribute.get_strategy(), *args)
    else:
      tf.__internal__.distribute.interim.maybe_merge_call(
          fn, tf.distribute.get_strategy(), *args)
