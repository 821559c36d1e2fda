"""Learning-rate schedule and optimizers of the reference.

Two pieces of "EfficientNet on TPU" training math, each rebuilt on Keras 3 so
that `tf.distribute` and XLA treat them like any stock Keras object (the
weight averaging is in averaging.py):

* `build_schedule`: linear warm-up, then staircase exponential decay (or cosine,
  or constant), scaled with the global batch (`WarmupDecaySchedule`).
* `build_optimizer`: RMSProp with the semantics of TF1's
  `tf.compat.v1.train.RMSPropOptimizer` (`TF1RMSProp`), TF1 momentum
  (`TF1Momentum`), plain SGD or Adam.

What the training loop must do with them:
  1. Create the optimizer, call `optimizer.build(model.trainable_variables)`
     and create the `averaging.ExponentialMovingAverage`, all under
     `strategy.scope()`.
     Keras 3 optimizers create their slots lazily; building them inside the
     first distributed step fails.
  2. Divide the loss by the *global* batch size (see `losses.py`): Keras's
     TensorFlow optimizer SUMS the gradients over replicas in
     `apply_gradients`.
  3. Scale the loss with `optimizer.scale_loss(loss)` before taking gradients
     (the identity unless the optimizer is a mixed_float16 loss-scale wrapper).
  4. Use `optimizer.iterations` as the global step (the schedule is
     evaluated at it; a mixed_float16 `LossScaleOptimizer` leaves it alone on
     a skipped step) and, in the replica function after
     `optimizer.apply_gradients`, call `ema.update(optimizer.iterations)`.
  5. Evaluate and export with the averages: `ema.averaged_weights()` around
     in-process evaluation, `ema.copy_to_model()` in evaluators/exporters.
"""
import math

import keras
import tensorflow as tf

from effnet_gin.train import lars

_SCHEDULE_KINDS = ("exponential", "cosine", "constant", "polynomial")
_OPTIMIZER_NAMES = ("rmsprop", "momentum", "sgd", "adam", "lars")


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
               decay_steps=None, decay_factor=None, train_steps=None,
               end_learning_rate=0.1, power=2.0):
    """Initializes the schedule from step counts (see `build_schedule`).

    Args:
      peak_learning_rate: Learning rate at the end of the warm-up, before any
        decay.
      warmup_steps: Integer number of linear warm-up steps; 0 disables it.
      kind: 'exponential', 'cosine', 'constant' or 'polynomial'.
      decay_steps: Steps per exponential decay (may be fractional); required
        for 'exponential'.
      decay_factor: Multiplier applied every `decay_steps`; required for
        'exponential'.
      train_steps: Total steps over which the cosine falls to 0 or the
        polynomial to `end_learning_rate`; required for both.
      end_learning_rate: Where 'polynomial' ends (the reference's 0.1).
      power: The exponent of 'polynomial' (the reference's 2).

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
    needed = {
        "exponential": dict(decay_steps=decay_steps, decay_factor=decay_factor),
        "cosine": dict(train_steps=train_steps),
        "polynomial": dict(train_steps=train_steps)
    }.get(kind, {})
    for name, value in needed.items():
      if not (value and value > 0):
        raise ValueError(f"{kind.capitalize()} decay needs {name} > 0, got "
                         f"{value!r}.")
    self.peak_learning_rate = float(peak_learning_rate)
    self.warmup_steps = int(warmup_steps)
    self.kind = kind
    self.decay_steps = None if decay_steps is None else float(decay_steps)
    self.decay_factor = None if decay_factor is None else float(decay_factor)
    self.train_steps = None if train_steps is None else int(train_steps)
    self.end_learning_rate = float(end_learning_rate)
    self.power = float(power)

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    peak = tf.constant(self.peak_learning_rate, tf.float32)
    if self.kind == "exponential":
      exponent = tf.floor(step / self.decay_steps)
      learning_rate = peak * tf.pow(tf.constant(self.decay_factor, tf.float32),
                                    exponent)
    elif self.kind == "cosine":
      # Clamped so that steps past `train_steps` stay at 0 instead of rising.
      progress = tf.minimum(step, float(self.train_steps)) / self.train_steps
      learning_rate = 0.5 * peak * (1.0 + tf.cos(math.pi * progress))
    elif self.kind == "polynomial":
      learning_rate = self._polynomial(step, peak)
    else:
      learning_rate = peak
    if self.warmup_steps:
      warmup = peak * step / float(self.warmup_steps)
      learning_rate = tf.where(step < self.warmup_steps, warmup, learning_rate)
    return learning_rate

  def _polynomial(self, step, peak):
    # The reference's LARS schedule (tensorflow/tpu efficientnet utils.py,
    # build_learning_rate with lr_decay_type='poly'): after the warm-up,
    # polynomial_decay(peak, max(1, step - warmup), train_steps - warmup + 1,
    # end_learning_rate=0.1, power=2), its step clamped at the horizon.
    # A run shorter than its warm-up (a smoke test) never leaves it.
    horizon = float(max(1, self.train_steps - self.warmup_steps + 1))
    decay_step = tf.minimum(tf.maximum(1.0, step - self.warmup_steps), horizon)
    end = tf.constant(self.end_learning_rate, tf.float32)
    return (peak - end) * tf.pow(1.0 - decay_step / horizon, self.power) + end

  def get_config(self):
    return {
        "end_learning_rate": self.end_learning_rate,
        "power": self.power,
        "peak_learning_rate": self.peak_learning_rate,
        "warmup_steps": self.warmup_steps,
        "kind": self.kind,
        "decay_steps": self.decay_steps,
        "decay_factor": self.decay_factor,
        "train_steps": self.train_steps,
    }


def build_schedule(*, global_batch_size, num_train_images,
                   base_learning_rate=0.016, warmup_epochs=5, decay_epochs=2.4,
                   decay_factor=0.97, kind="exponential", train_steps=None,
                   end_learning_rate=0.1, power=2.0):
  """Builds the reference learning-rate schedule for a global batch size.

  peak = base_learning_rate * global_batch_size / 256;
  steps_per_epoch = num_train_images / global_batch_size (not rounded);
  warmup_steps = int(warmup_epochs * steps_per_epoch);
  lr(step) = peak * step / warmup_steps while step < warmup_steps, else
  peak * decay_factor ** floor(step / (decay_epochs * steps_per_epoch)).
  'cosine' replaces the staircase with 0.5 * peak * (1 + cos(pi * step /
  train_steps)); 'constant' with peak; 'polynomial' (the LARS schedule)
  with (peak - end) * (1 - min(max(1, step - warmup_steps), H) / H) ** power
  + end, H = train_steps - warmup_steps + 1 (the reference: end 0.1, power
  2, whatever the peak). The exponential decay counts from step 0.

  Args:
    global_batch_size: Examples per step summed over all replicas.
    num_train_images: Size of the training set (an "epoch").
    base_learning_rate: Learning rate per 256 examples of global batch.
    warmup_epochs: Epochs of linear warm-up from 0; 0 disables it.
    decay_epochs: Epochs between exponential decays.
    decay_factor: Multiplier applied every `decay_epochs`.
    kind: 'exponential', 'cosine', 'constant' or 'polynomial'.
    train_steps: Total training steps; required for 'cosine' and
      'polynomial'.
    end_learning_rate: Final learning rate of 'polynomial' (the
      reference's 0.1).
    power: Exponent of 'polynomial' (the reference's 2).

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
      warmup_steps=int(warmup_epochs * steps_per_epoch), kind=kind,
      decay_steps=decay_epochs * steps_per_epoch, decay_factor=decay_factor,
      train_steps=train_steps, end_learning_rate=end_learning_rate, power=power)


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
        for v in var_list
    ]
    self._momenta = [
        self.add_variable_from_reference(v, "momentum") for v in var_list
    ]

  def update_step(self, gradient, variable, learning_rate):
    gradient = _dense(gradient, variable)
    learning_rate = tf.cast(learning_rate, variable.dtype)
    index = self._get_variable_index(variable)
    mean_square = self._mean_squares[index]
    momentum = self._momenta[index]
    self.assign_add(mean_square,
                    (tf.square(gradient) - mean_square) * (1.0 - self.rho))
    self.assign(
        momentum, self.momentum * momentum +
        learning_rate * gradient / tf.sqrt(mean_square + self.epsilon))
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
    self._accumulators = [
        self.add_variable_from_reference(v, "momentum") for v in var_list
    ]

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


def build_optimizer(learning_rate, *, name="rmsprop", rho=0.9, momentum=0.9,
                    epsilon=1e-3, beta_1=0.9, beta_2=0.999,
                    lars_weight_decay=1e-5, lars_eeta=0.001, lars_epsilon=0.0):
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
      semantics), 'sgd', 'adam' or 'lars' (the reference's large-batch
      optimizer, see lars.py).
    rho: RMSProp decay of the mean-square accumulator.
    momentum: Momentum of 'rmsprop' and 'momentum'.
    epsilon: RMSProp epsilon (inside the sqrt) or Adam epsilon.
    beta_1: Adam first-moment decay.
    beta_2: Adam second-moment decay.
    lars_weight_decay: LARS's own weight decay (the reference's
      --lars_weight_decay).
    lars_eeta: LARS coefficient.
    lars_epsilon: LARS epsilon (the reference's --lars_epsilon).

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
  elif name == "lars":
    optimizer = lars.LARS(learning_rate, momentum=momentum,
                          weight_decay=lars_weight_decay, eeta=lars_eeta,
                          epsilon=lars_epsilon)
  elif name == "adam":
    optimizer = keras.optimizers.Adam(learning_rate, beta_1=beta_1,
                                      beta_2=beta_2, epsilon=epsilon)
  else:
    raise ValueError(f"Unknown optimizer name {name!r}; expected one of "
                     f"{_OPTIMIZER_NAMES}.")
  if keras.mixed_precision.global_policy().name == "mixed_float16":
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer
