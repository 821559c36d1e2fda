"""Runs a Keras optimizer over given gradients, for the optimizer tests."""
import keras
import tensorflow as tf


def run_keras(optimizer, initial, grads, *, names=None, jit_compile=False):
  """Applies `grads` (one list per step) to variables starting at `initial`.

  `names` names the variables (LARS excludes some by name). Returns the
  final values as NumPy arrays.
  """
  names = names or [None] * len(initial)
  variables = [
      keras.Variable(value, name=name) for name, value in zip(names, initial)
  ]
  optimizer.build(variables)

  def apply(step_grads):
    optimizer.apply_gradients(zip(step_grads, variables))

  if jit_compile:
    apply = tf.function(apply, jit_compile=True)
  for step_grads in grads:
    apply([tf.constant(g) for g in step_grads])
  return [v.numpy() for v in variables]
