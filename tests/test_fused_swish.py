"""The fused swish against autodiff of the plain formula x * sigmoid(x)."""
import numpy as np
import pytest
import tensorflow as tf

from effnet_gin.model import activations

# Wide enough to reach both saturated tails, where sigmoid's rounding shows.
_X = np.concatenate([
    np.linspace(-12.0, 12.0, 241),
    np.random.default_rng(0).normal(0.0, 3.0, 500)
]).astype(np.float32)
# Non-constant upstream gradients, so a backward that ignored them would fail.
_UPSTREAM = np.random.default_rng(1).uniform(-2.0, 2.0,
                                             _X.shape).astype(np.float32)


def _value_and_gradient(fn, x):
  upstream = tf.cast(_UPSTREAM, x.dtype)
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = fn(x)
  return y, tape.gradient(y, x, output_gradients=upstream)


def _plain_swish(x):
  return x * tf.sigmoid(x)


@pytest.mark.parametrize(
    "dtype, rtol, atol",
    [
        (tf.float32, 1e-6, 1e-6),
        # bfloat16 keeps 8 significant bits: one rounding step is ~0.4%.
        (tf.bfloat16, 1e-2, 1e-2),
    ])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "xla"])
def test_value_and_gradient_equal_autodiff_of_the_formula(
    dtype, rtol, atol, compiled):
  x = tf.constant(_X, dtype)
  if compiled:
    y, grad = tf.function(
        lambda x: _value_and_gradient(activations.fused_swish, x),
        jit_compile=True)(x)
  else:
    y, grad = _value_and_gradient(activations.fused_swish, x)
  # The reference sees the same (rounded) inputs, computed in float32.
  y_ref, grad_ref = _value_and_gradient(_plain_swish, tf.cast(x, tf.float32))
  assert y.dtype == dtype and grad.dtype == dtype
  np.testing.assert_allclose(tf.cast(y, tf.float32), y_ref, rtol=rtol,
                             atol=atol)
  np.testing.assert_allclose(tf.cast(grad, tf.float32), grad_ref, rtol=rtol,
                             atol=atol)


def test_second_use_in_one_graph_keeps_its_own_gradient():
  # Two fused swishes in one tape: each backward must use its own input.
  a = tf.constant(_X[:100])
  b = tf.constant(_X[100:200])
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([a, b])
    total = tf.reduce_sum(
        activations.fused_swish(a) * 2.0 + activations.fused_swish(b))
  grad_a, grad_b = tape.gradient(total, [a, b])
  sig_a, sig_b = tf.sigmoid(a), tf.sigmoid(b)
  np.testing.assert_allclose(grad_a, 2.0 * sig_a * (1 + a * (1 - sig_a)),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(grad_b, sig_b * (1 + b * (1 - sig_b)), rtol=1e-6,
                             atol=1e-6)
