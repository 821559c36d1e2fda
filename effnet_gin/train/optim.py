"""Learning-rate schedule, optimizers and weight averaging of the reference.

Three pieces of "EfficientNet on TPU" training math, each rebuilt on Keras 3 so
that `tf.distribute` and XLA treat them like any stock Keras object:

* `build_schedule`: linear warm-up, then staircase exponential decay (or cosine,
  or constant), scaled with the global batch (`WarmupDecaySchedule`).
* `build_optimizer`: RMSProp with the semantics of TF1's
  `tf.compat.v1.train.RMSPropOptimizer` (`TF1RMSProp`), TF1 momentum
  (`TF1Momentum`), plain SGD or Adam.
* `ExponentialMovingAverage`: TF1-style averages of the trainable weights and
  the batch-norm moving statistics, used for evaluation and export.

What the training loop must do with them:
  1. Create the optimizer, call `optimizer.build(model.trainable_variables)`
     and create the `ExponentialMovingAverage`, all under `strategy.scope()`.
     Keras 3 optimizers create their slots lazily; building them inside the
     first distributed step fails.
  2. Divide the loss by the *global* batch size (see `losses.py`): Keras's
     TensorFlow optimizer SUMS the gradients over replicas in
     `apply_gradients`.
  3. Scale the loss with `optimizer.scale_loss(loss)` before taking gradients
     (the identity unless the optimizer is a mixed_float16 loss-scale wrapper).
  4. In the replica function, after `optimizer.apply_gradients`, call
     `ema.update(step)` with the number of completed steps
     (`optimizer.iterations` at that point).
  5. Evaluate and export with the averages: `ema.averaged_weights()` around
     in-process evaluation, `ema.copy_to_model()` in evaluators/exporters.
"""
import contextlib
import math
import re

import gin
import keras
import tensorflow as tf

_SCHEDULE_KINDS = ("exponential", "cosine", "constant")
_OPTIMIZER_NAMES = ("rmsprop", "momentum", "sgd", "adam")
# Batch-norm moving statistics are averaged along with the trainable weights.
_MOVING_STATISTIC = re.compile(r"(^|[/_])moving_(mean|variance)(:\d+)?$")


# ---------------------------------------------------------------------------
# Learning-rate schedule
# ---------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="effnet_gin")
class WarmupDecaySchedule(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warm-up from 0, then exponential, cosine or constant.

  The decay counts from step 0, not from the end of the warm-up, exactly as the
  reference's `build_learning_rate`: with exponential decay the warm-up ends at
  `peak * decay_factor ** floor(warmup_steps / decay_steps)`. All math is
  float32 and branch-free, so the schedule compiles under XLA.
  """

  def __init__(self, *, peak_learning_rate, warmup_steps, kind="exponential",
               decay_steps=None, decay_factor=None, train_steps=None):
    """Initializes the schedule from step counts (see `build_schedule`).

    Args:
      peak_learning_rate: Learning rate at the end of the warm-up, before any
        decay.
      warmup_steps: Integer number of linear warm-up steps; 0 disables it.
      kind: 'exponential', 'cosine' or 'constant'.
      decay_steps: Steps per exponential decay (may be fractional); required
        for 'exponential'.
      decay_factor: Multiplier applied every `decay_steps`; required for
        'exponential'.
      train_steps: Total steps over which the cosine falls to 0; required for
        'cosine'.

    Raises:
      ValueError: If `kind` is unknown or a value it needs is missing or out of
        range.
    """
    super().__init__()
    if kind not in _SCHEDULE_KINDS:
      raise ValueError(f"Unknown schedule kind {kind!r}; expected one of "
                       f"{_SCHEDULE_KINDS}.")
    if warmup_steps < 0:
      raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps!r}.")
    if kind == "exponential" and not (decay_steps and decay_steps > 0):
      raise ValueError("Exponential decay needs decay_steps > 0, got "
                       f"{decay_steps!r}.")
    if kind == "exponential" and not (decay_factor and decay_factor > 0):
      raise ValueError("Exponential decay needs decay_factor > 0, got "
                       f"{decay_factor!r}.")
    if kind == "cosine" and not (train_steps and train_steps > 0):
      raise ValueError("Cosine decay needs train_steps > 0, got "
                       f"{train_steps!r}.")
    self.peak_learning_rate = float(peak_learning_rate)
    self.warmup_steps = int(warmup_steps)
    self.kind = kind
    self.decay_steps = None if decay_steps is None else float(decay_steps)
    self.decay_factor = None if decay_factor is None else float(decay_factor)
    self.train_steps = None if train_steps is None else int(train_steps)

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    peak = tf.constant(self.peak_learning_rate, tf.float32)
    if self.kind == "exponential":
      exponent = tf.floor(step / self.decay_steps)
      learning_rate = peak * tf.pow(
          tf.constant(self.decay_factor, tf.float32), exponent)
    elif self.kind == "cosine":
      # Clamped so that steps past `train_steps` stay at 0 instead of rising.
      progress = tf.minimum(step, float(self.train_steps)) / self.train_steps
      learning_rate = 0.5 * peak * (1.0 + tf.cos(math.pi * progress))
    else:
      learning_rate = peak
    if self.warmup_steps:
      warmup = peak * step / float(self.warmup_steps)
      learning_rate = tf.where(step < self.warmup_steps, warmup, learning_rate)
    return learning_rate

  def get_config(self):
    return {
        "peak_learning_rate": self.peak_learning_rate,
        "warmup_steps": self.warmup_steps,
        "kind": self.kind,
        "decay_steps": self.decay_steps,
        "decay_factor": self.decay_factor,
        "train_steps": self.train_steps,
    }


@gin.configurable("build_schedule", module="effnet_gin.train")
def build_schedule(*, global_batch_size, num_train_images,
                   base_learning_rate=0.016, warmup_epochs=5,
                   decay_epochs=2.4, decay_factor=0.97, kind="exponential",
                   train_steps=None):
  """Builds the reference learning-rate schedule for a global batch size.

  peak = base_learning_rate * global_batch_size / 256;
  steps_per_epoch = num_train_images / global_batch_size (not rounded);
  warmup_steps = int(warmup_epochs * steps_per_epoch);
  lr(step) = peak * step / warmup_steps while step < warmup_steps, else
  peak * decay_factor ** floor(step / (decay_epochs * steps_per_epoch)).
  'cosine' replaces the staircase with 0.5 * peak * (1 + cos(pi * step /
  train_steps)); 'constant' with peak. The decay counts from step 0.

  Args:
    global_batch_size: Examples per step summed over all replicas.
    num_train_images: Size of the training set (an "epoch").
    base_learning_rate: Learning rate per 256 examples of global batch.
    warmup_epochs: Epochs of linear warm-up from 0; 0 disables it.
    decay_epochs: Epochs between exponential decays.
    decay_factor: Multiplier applied every `decay_epochs`.
    kind: 'exponential', 'cosine' or 'constant'.
    train_steps: Total training steps; required for 'cosine'.

  Returns:
    A serializable `WarmupDecaySchedule`.

  Raises:
    ValueError: If a size is not positive, `kind` is unknown or 'cosine' lacks
      `train_steps`.
  """
  if global_batch_size <= 0:
    raise ValueError(
        f"global_batch_size must be positive, got {global_batch_size!r}.")
  if num_train_images <= 0:
    raise ValueError(
        f"num_train_images must be positive, got {num_train_images!r}.")
  if base_learning_rate <= 0:
    raise ValueError(
        f"base_learning_rate must be positive, got {base_learning_rate!r}.")
  if warmup_epochs < 0:
    raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs!r}.")
  if kind == "exponential" and decay_epochs <= 0:
    raise ValueError(f"decay_epochs must be positive, got {decay_epochs!r}.")
  steps_per_epoch = num_train_images / global_batch_size
  return WarmupDecaySchedule(
      peak_learning_rate=base_learning_rate * global_batch_size / 256,
      warmup_steps=int(warmup_epochs * steps_per_epoch),
      kind=kind,
      decay_steps=decay_epochs * steps_per_epoch,
      decay_factor=decay_factor,
      train_steps=train_steps)


# ---------------------------------------------------------------------------
# Optimizers
# ---------------------------------------------------------------------------
def _dense(gradient, variable):
  """Returns `gradient` as a dense tensor of `variable`'s dtype.

  Under mixed precision the variables stay float32; casting here keeps the
  slots and the update in float32 whatever dtype the gradient arrived in.
  """
  return tf.cast(tf.convert_to_tensor(gradient), variable.dtype)


@keras.saving.register_keras_serializable(package="effnet_gin")
class TF1RMSProp(keras.optimizers.Optimizer):
  """RMSProp with the semantics of TF1's `tf.compat.v1.train.RMSPropOptimizer`.

  Differs from `keras.optimizers.RMSprop` in one way that matters early in
  training: the mean-square accumulator starts at 1.0, not 0, so the first
  steps are not divided by a tiny sqrt. Per step (TF1's ApplyRMSProp kernel):

      ms  += (g**2 - ms) * (1 - rho)
      mom  = momentum * mom + lr * g / sqrt(ms + epsilon)
      var -= mom
  """

  def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.9, epsilon=1e-3,
               name="TF1RMSProp", **kwargs):
    """Initializes the optimizer.

    Args:
      learning_rate: A float or a `LearningRateSchedule`.
      rho: Decay of the mean-square accumulator (TF1's `decay`).
      momentum: Momentum coefficient.
      epsilon: Added to the mean square *inside* the square root.
      name: Optimizer name (prefix of its variables).
      **kwargs: Other `keras.optimizers.Optimizer` arguments.
    """
    super().__init__(learning_rate=learning_rate, name=name, **kwargs)
    self.rho = rho
    self.momentum = momentum
    self.epsilon = epsilon

  def build(self, var_list):
    if self.built:
      return
    super().build(var_list)
    self._mean_squares = [
        self.add_variable_from_reference(v, "rms", initializer="ones")
        for v in var_list]
    self._momenta = [self.add_variable_from_reference(v, "momentum")
                     for v in var_list]

  def update_step(self, gradient, variable, learning_rate):
    gradient = _dense(gradient, variable)
    learning_rate = tf.cast(learning_rate, variable.dtype)
    index = self._get_variable_index(variable)
    mean_square = self._mean_squares[index]
    momentum = self._momenta[index]
    self.assign_add(mean_square,
                    (tf.square(gradient) - mean_square) * (1.0 - self.rho))
    self.assign(momentum,
                self.momentum * momentum
                + learning_rate * gradient / tf.sqrt(mean_square
                                                     + self.epsilon))
    self.assign_sub(variable, momentum)

  def get_config(self):
    config = super().get_config()
    config.update(rho=self.rho, momentum=self.momentum, epsilon=self.epsilon)
    return config


@keras.saving.register_keras_serializable(package="effnet_gin")
class TF1Momentum(keras.optimizers.Optimizer):
  """Momentum with the semantics of `tf.compat.v1.train.MomentumOptimizer`.

  TF1 accumulates raw gradients and multiplies by the *current* learning rate
  (`accum = momentum * accum + g; var -= lr * accum`); `keras.optimizers.SGD`
  folds each step's learning rate into the velocity instead, which differs
  whenever the learning rate changes.
  """

  def __init__(self, learning_rate=0.01, momentum=0.9, name="TF1Momentum",
               **kwargs):
    """Initializes the optimizer.

    Args:
      learning_rate: A float or a `LearningRateSchedule`.
      momentum: Momentum coefficient.
      name: Optimizer name (prefix of its variables).
      **kwargs: Other `keras.optimizers.Optimizer` arguments.
    """
    super().__init__(learning_rate=learning_rate, name=name, **kwargs)
    self.momentum = momentum

  def build(self, var_list):
    if self.built:
      return
    super().build(var_list)
    self._accumulators = [self.add_variable_from_reference(v, "momentum")
                          for v in var_list]

  def update_step(self, gradient, variable, learning_rate):
    gradient = _dense(gradient, variable)
    learning_rate = tf.cast(learning_rate, variable.dtype)
    accumulator = self._accumulators[self._get_variable_index(variable)]
    self.assign(accumulator, self.momentum * accumulator + gradient)
    self.assign_sub(variable, learning_rate * accumulator)

  def get_config(self):
    config = super().get_config()
    config.update(momentum=self.momentum)
    return config


@gin.configurable("build_optimizer", module="effnet_gin.train")
def build_optimizer(learning_rate, *, name="rmsprop", rho=0.9, momentum=0.9,
                    epsilon=1e-3, beta_1=0.9, beta_2=0.999):
  """Builds the training optimizer.

  Under a `mixed_float16` global policy the optimizer is wrapped in
  `keras.optimizers.LossScaleOptimizer` (as `Model.compile` does); the loop
  must then scale its loss with `optimizer.scale_loss(loss)`, which is the
  identity for the unwrapped optimizers. The optimizer still has no slots:
  call `optimizer.build(model.trainable_variables)` under `strategy.scope()`
  before the first distributed step.

  Args:
    learning_rate: A float or a `LearningRateSchedule` (see `build_schedule`).
    name: 'rmsprop' (TF1 semantics, the reference), 'momentum' (TF1
      semantics), 'sgd' or 'adam'.
    rho: RMSProp decay of the mean-square accumulator.
    momentum: Momentum of 'rmsprop' and 'momentum'.
    epsilon: RMSProp epsilon (inside the sqrt) or Adam epsilon.
    beta_1: Adam first-moment decay.
    beta_2: Adam second-moment decay.

  Returns:
    A `keras.optimizers.Optimizer`.

  Raises:
    ValueError: If `name` is unknown.
  """
  if name == "rmsprop":
    optimizer = TF1RMSProp(learning_rate, rho=rho, momentum=momentum,
                           epsilon=epsilon)
  elif name == "momentum":
    optimizer = TF1Momentum(learning_rate, momentum=momentum)
  elif name == "sgd":
    optimizer = keras.optimizers.SGD(learning_rate)
  elif name == "adam":
    optimizer = keras.optimizers.Adam(learning_rate, beta_1=beta_1,
                                      beta_2=beta_2, epsilon=epsilon)
  else:
    raise ValueError(f"Unknown optimizer name {name!r}; expected one of "
                     f"{_OPTIMIZER_NAMES}.")
  if keras.mixed_precision.global_policy().name == "mixed_float16":
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer


# ---------------------------------------------------------------------------
# Exponential moving average of the weights
# ---------------------------------------------------------------------------
def _tf_variable(variable):
  """Returns the `tf.Variable` behind a Keras variable (or `variable`)."""
  return variable.value if isinstance(variable, keras.Variable) else variable


def _variable_path(variable):
  return getattr(variable, "path", None) or variable.name


def averaged_variables(model):
  """Returns the variables the reference averages, in a stable order.

  These are the trainable variables followed by the batch-norm moving
  statistics (non-trainable variables whose path ends with `moving_mean` or
  `moving_variance`). Other non-trainable state, such as RNG seeds, is left
  out.

  Args:
    model: A Keras model (anything with `trainable_variables` and
      `non_trainable_variables`).

  Returns:
    A list of the model's variables, without duplicates.
  """
  chosen = list(model.trainable_variables) + [
      v for v in model.non_trainable_variables
      if _MOVING_STATISTIC.search(_variable_path(v))]
  unique, seen = [], set()
  for variable in chosen:
    if id(variable) not in seen:
      seen.add(id(variable))
      unique.append(variable)
  return unique


class _Untracked:
  """Holds a value out of sight of `tf.Module`'s dependency tracking.

  The averages object must not re-save the model's own variables under
  `ema/` in checkpoints; the model is checkpointed on its own.
  """

  def __init__(self, value):
    self.value = value


@gin.configurable(module="effnet_gin.train")
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
    return tf.Variable(
        lambda: tf.identity(source), trainable=False,
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
    pairs = list(zip(self._averages,
                     [_tf_variable(v) for v in self._sources.value]))

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
    raw = [tf.identity(_tf_variable(v).read_value())
           for v in self._sources.value]
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
