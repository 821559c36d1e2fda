"""LARS, the reference's optimizer for global batches of 16k and more.

Layer-wise Adaptive Rate Scaling (You, Gitman and Ginsburg 2017,
arXiv 1708.03888) as tensorflow/tpu's `lars_optimizer.LARSOptimizer`, which
the reference selects with `--optimizer=lars`. Per variable w with gradient g:

    trust = eeta·‖w‖ / (‖g‖ + weight_decay·‖w‖ + epsilon)
            (1 when ‖w‖ = 0 or ‖g‖ = 0)
    g'    = g + weight_decay·w
    mom   = momentum·mom + lr·trust·g'
    w    -= mom

Variables whose path contains an `exclude_from_adaptation` entry (the
reference's skip list: batch-norm parameters and biases) take plain momentum,
mom = momentum·mom + lr·g, with no trust ratio and no weight decay.
"""
import keras
import tensorflow as tf

# Our batch-norm parameters are `<layer>/gamma` and `<layer>/beta`; the
# reference skipped 'batch_normalization' and 'bias' variables.
DEFAULT_EXCLUDED = ("gamma", "beta", "bias")


@keras.saving.register_keras_serializable(package="effnet_gin")
class LARS(keras.optimizers.Optimizer):
  """LARS with momentum and weight decay inside, as the reference's."""

  def __init__(self, learning_rate=0.1, momentum=0.9, weight_decay=1e-5,
               eeta=0.001, epsilon=0.0,
               exclude_from_adaptation=DEFAULT_EXCLUDED, name="LARS", **kwargs):
    """Initializes the optimizer.

    Args:
      learning_rate: A float or a `LearningRateSchedule`.
      momentum: Momentum coefficient, >= 0.
      weight_decay: L2 factor added to the gradient of adapted variables
        (the reference's `--lars_weight_decay`), >= 0.
      eeta: The LARS coefficient; eeta / weight_decay bounds the trust ratio.
      epsilon: Added to the trust ratio's denominator.
      exclude_from_adaptation: Substrings of variable paths that skip the
        trust ratio and the weight decay.
      name: Optimizer name (prefix of its variables).
      **kwargs: Other `keras.optimizers.Optimizer` arguments.

    Raises:
      ValueError: for a negative momentum or weight decay.
    """
    super().__init__(learning_rate=learning_rate, name=name, **kwargs)
    if momentum < 0:
      raise ValueError(f"LARS momentum must be >= 0, got {momentum!r}.")
    if weight_decay < 0:
      raise ValueError(f"LARS weight_decay must be >= 0, got {weight_decay!r}.")
    self.momentum = momentum
    # Not `self.weight_decay`: Keras optimizers would apply that themselves
    # as decoupled decay to every variable, excluded ones included.
    self.lars_weight_decay = weight_decay
    self.eeta = eeta
    self.epsilon = epsilon
    self.exclude_from_adaptation = tuple(exclude_from_adaptation)

  def build(self, var_list):
    if self.built:
      return
    super().build(var_list)
    self._momenta = [
        self.add_variable_from_reference(v, "momentum") for v in var_list
    ]

  def adapts(self, variable):
    """Whether `variable` gets the trust ratio and the weight decay."""
    path = getattr(variable, "path", variable.name)
    return not any(part in path for part in self.exclude_from_adaptation)

  def update_step(self, gradient, variable, learning_rate):
    gradient = tf.cast(tf.convert_to_tensor(gradient), variable.dtype)
    learning_rate = tf.cast(learning_rate, variable.dtype)
    if self.adapts(variable):
      weights = tf.convert_to_tensor(variable)
      w_norm = tf.norm(weights)
      g_norm = tf.norm(gradient)
      ratio = self.eeta * w_norm / (g_norm + self.lars_weight_decay * w_norm +
                                    self.epsilon)
      trust = tf.where(tf.logical_and(w_norm > 0, g_norm > 0), ratio, 1.0)
      learning_rate = learning_rate * trust
      gradient = gradient + self.lars_weight_decay * weights
    momentum = self._momenta[self._get_variable_index(variable)]
    self.assign(momentum, self.momentum * momentum + learning_rate * gradient)
    self.assign_sub(variable, momentum)

  def get_config(self):
    config = super().get_config()
    config.update(momentum=self.momentum, weight_decay=self.lars_weight_decay,
                  eeta=self.eeta, epsilon=self.epsilon,
                  exclude_from_adaptation=list(self.exclude_from_adaptation))
    return config
