"""LARS and the polynomial schedule against the reference's formulas.

The expected updates are written here in plain NumPy from tensorflow/tpu's
lars_optimizer.py (trust ratio, weight decay inside, ApplyMomentum with
lr = 1) and efficientnet/utils.py build_learning_rate('poly'):
tf.compat.v1.train.polynomial_decay of max(1, step - warmup) over
train_steps - warmup + 1, end_learning_rate 0.1, power 2.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

from effnet_gin.train import lars
from effnet_gin.train import optim
from optimizer_helpers import run_keras


def _reference_lars(initial, grads, names, learning_rates, *, momentum=0.9,
                    weight_decay=1e-5, eeta=0.001, epsilon=0.0):
  """The reference's LARS update, step by step, in float64."""
  weights = [w.astype(np.float64) for w in initial]
  momenta = [np.zeros_like(w) for w in weights]
  for lr, step_grads in zip(learning_rates, grads):
    for i, (w, g, name) in enumerate(zip(weights, step_grads, names)):
      g = g.astype(np.float64)
      scaled_lr = lr
      if not any(skip in name for skip in ("gamma", "beta", "bias")):
        w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
        trust = (eeta * w_norm / (g_norm + weight_decay * w_norm + epsilon)
                 if w_norm > 0 and g_norm > 0 else 1.0)
        scaled_lr = lr * trust
        g = g + weight_decay * w
      momenta[i] = momentum * momenta[i] + g * scaled_lr
      weights[i] = w - momenta[i]
  return weights


def _reference_poly(step, *, peak, warmup_steps, train_steps, end=0.1):
  if step < warmup_steps:
    return peak * step / warmup_steps
  decay_steps = train_steps - warmup_steps + 1
  decay_step = min(max(1, step - warmup_steps), decay_steps)
  return (peak - end) * (1 - decay_step / decay_steps)**2 + end


def _problem(steps=6, seed=0):
  rng = np.random.default_rng(seed)
  shapes = {
      "conv_kernel": (3, 3, 2, 4),
      "stem_bn_gamma": (4,),
      "se_bias": (4,),
      "zero_kernel": (2, 2)
  }
  initial = [
      rng.normal(size=shape).astype(np.float32) for shape in shapes.values()
  ]
  initial[3][:] = 0.0  # ‖w‖ = 0: the trust ratio falls back to 1.
  grads = [[rng.normal(size=w.shape).astype(np.float32)
            for w in initial]
           for _ in range(steps)]
  return list(shapes), initial, grads


@pytest.mark.parametrize("jit_compile", [False, True])
def test_lars_matches_the_reference_update_under_a_poly_schedule(jit_compile):
  names, initial, grads = _problem()
  schedule = optim.build_schedule(global_batch_size=256, num_train_images=512,
                                  base_learning_rate=2.0, warmup_epochs=1,
                                  kind="polynomial", train_steps=6)
  learning_rates = [
      _reference_poly(step, peak=2.0, warmup_steps=2, train_steps=6)
      for step in range(6)
  ]
  optimizer = optim.build_optimizer(schedule, name="lars")
  assert isinstance(optimizer, lars.LARS)
  got = run_keras(optimizer, initial, grads, names=names,
                  jit_compile=jit_compile)
  expected = _reference_lars(initial, grads, names, learning_rates)
  # Tolerance: float32 against the float64 formulas over 6 steps.
  for name, value, want in zip(names, got, expected):
    np.testing.assert_allclose(value, want, rtol=2e-5, atol=1e-6, err_msg=name)
  # The excluded variables moved by plain momentum: much more than the
  # trust-scaled kernel (eeta = 0.001).
  moved = [np.abs(g - w).max() for g, w in zip(got, initial)]
  assert moved[1] > 10 * moved[0] and moved[2] > 10 * moved[0]


def test_lars_with_constant_rate_and_epsilon():
  names, initial, grads = _problem(steps=4, seed=1)
  optimizer = optim.build_optimizer(0.5, name="lars", momentum=0.8,
                                    lars_weight_decay=1e-4, lars_eeta=0.01,
                                    lars_epsilon=1e-3)
  got = run_keras(optimizer, initial, grads, names=names)
  expected = _reference_lars(initial, grads, names, [0.5] * 4, momentum=0.8,
                             weight_decay=1e-4, eeta=0.01, epsilon=1e-3)
  for value, want in zip(got, expected):
    np.testing.assert_allclose(value, want, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("step", [0, 1, 50, 99, 100, 101, 500, 999, 1000, 1200])
def test_polynomial_schedule_at_named_steps(step):
  schedule = optim.build_schedule(global_batch_size=1000,
                                  num_train_images=20000, warmup_epochs=5,
                                  base_learning_rate=0.256, kind="polynomial",
                                  train_steps=1000)
  # peak = 0.256 × 1000 / 256 = 1.0; warm-up int(5 × 20) = 100 steps.
  assert float(schedule(step)) == pytest.approx(
      _reference_poly(step, peak=1.0, warmup_steps=100, train_steps=1000),
      rel=1e-5, abs=1e-7)


# The pod recipe (b0_tpu_pod.gin): batch 32,768, 1,281,167 images, 350
# epochs. steps/epoch = 39.0981; train_steps = int(350 × 39.0981) = 13,684;
# warm-up int(5 × 39.0981) = 195 steps; peak 0.016 × 32768 / 256 = 2.048;
# horizon H = 13,684 − 195 + 1 = 13,490; after the warm-up
# lr = (2.048 − 0.1) × (1 − min(max(1, step − 195), H) / H)² + 0.1.
@pytest.mark.parametrize(
    "step,expected",
    [
        (0, 0.0),
        (100, 1.0502564),  # 2.048 × 100 / 195
        (194, 2.0374974),  # 2.048 × 194 / 195
        (195, 2.0477112),  # max(1, 0) = 1: 1.948 × (13489/13490)² + 0.1
        (196, 2.0477112),  # still decay step 1
        (6940, 0.587),  # halfway: 1.948 × 0.25 + 0.1
        (13683, 0.10000004),  # the last step trained: 1.948 × (2/13490)² + 0.1
        (13684, 0.1),
        (20000, 0.1),  # clamped at the horizon
    ])
def test_pod_schedule_ends_at_the_reference_end(step, expected):
  schedule = optim.build_schedule(global_batch_size=32768,
                                  num_train_images=1281167,
                                  base_learning_rate=0.016, warmup_epochs=5,
                                  kind="polynomial", train_steps=13684)
  assert (schedule.warmup_steps, schedule.end_learning_rate,
          schedule.power) == (195, 0.1, 2.0)
  assert float(schedule(step)) == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_polynomial_end_and_power_are_settings():
  schedule = optim.build_schedule(global_batch_size=256, num_train_images=2560,
                                  warmup_epochs=0, base_learning_rate=0.016,
                                  kind="polynomial", train_steps=9,
                                  end_learning_rate=1e-4, power=1.0)
  # Linear from 0.016 to 1e-4 over a horizon of 10: step 5 is halfway.
  assert float(schedule(5)) == pytest.approx((0.016 + 1e-4) / 2, rel=1e-6)
  restored = optim.WarmupDecaySchedule.from_config(schedule.get_config())
  assert (restored.end_learning_rate, restored.power) == (1e-4, 1.0)


def test_polynomial_schedule_needs_train_steps():
  with pytest.raises(ValueError, match="train_steps > 0"):
    optim.build_schedule(global_batch_size=256, num_train_images=2560,
                         kind="polynomial")
  # Shorter than its warm-up (a smoke run): still warming up at the end.
  short = optim.build_schedule(global_batch_size=256, num_train_images=2560,
                               warmup_epochs=5, kind="polynomial",
                               train_steps=20)
  assert float(short(19)) == pytest.approx(0.016 * 19 / 50)


def test_lars_round_trips_its_config():
  optimizer = lars.LARS(0.1, momentum=0.8, weight_decay=2e-5, eeta=0.002)
  restored = lars.LARS.from_config(optimizer.get_config())
  assert (restored.momentum, restored.lars_weight_decay,
          restored.eeta) == (0.8, 2e-5, 0.002)
  assert restored.exclude_from_adaptation == lars.DEFAULT_EXCLUDED
  with pytest.raises(ValueError, match="weight_decay"):
    lars.LARS(0.1, weight_decay=-1.0)
