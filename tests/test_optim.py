"""Tests of the schedule, the TF1-semantics optimizers and the weight EMA."""
import math

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from effnet_gin import configurables
from effnet_gin.model.layers import BatchNorm
from effnet_gin.checkpoints import averaging
from effnet_gin.checkpoints import checkpointing
from effnet_gin.train import optim
from optimizer_helpers import run_keras

# Reference defaults: ImageNet, global batch 2048.
_IMAGES = 1_281_167
_BATCH = 2048
_PEAK = 0.016 * _BATCH / 256  # 0.128
_WARMUP = 3127  # int(5 * 1281167 / 2048)
_DECAY_STEPS = 2.4 * _IMAGES / _BATCH


def _reference_schedule():
  return optim.build_schedule(global_batch_size=_BATCH,
                              num_train_images=_IMAGES)


# ---------------------------------------------------------------------------
# Schedule
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.0),
        (1000, _PEAK * 1000 / _WARMUP),
        (_WARMUP - 1, _PEAK * (_WARMUP - 1) / _WARMUP),
        # Decay counts from step 0: warm-up ends at 0.97**2 of the peak.
        (_WARMUP, _PEAK * 0.97**2),
        (4503, _PEAK * 0.97**2),  # floor(4503 / 1501.37) = 2
        (4505, _PEAK * 0.97**3),  # floor(4505 / 1501.37) = 3
        (218_948, _PEAK * 0.97**145),
    ])
def test_exponential_schedule_at_named_steps(step, expected):
  schedule = _reference_schedule()
  assert schedule.warmup_steps == _WARMUP
  # float32(0.97) is 3e-8 off, so 0.97**145 carries a 4e-6 relative error
  # (TF1's float32 schedule has the same).
  np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5)
  step_variable = tf.Variable(step, dtype=tf.int64)
  np.testing.assert_allclose(float(schedule(step_variable)), expected,
                             rtol=1e-5)


def test_schedule_matches_tf1_learning_rate_ops():
  schedule = _reference_schedule()
  for step in (0, 17, 3126, 3127, 50_000, 218_948):
    global_step = tf.constant(step, tf.int64)
    decayed = tf.compat.v1.train.exponential_decay(_PEAK, global_step,
                                                   _DECAY_STEPS, 0.97,
                                                   staircase=True)()
    warmup = _PEAK * tf.cast(global_step, tf.float32) / float(_WARMUP)
    expected = warmup if step < _WARMUP else decayed
    np.testing.assert_allclose(float(schedule(step)), float(expected),
                               rtol=1e-7)


def test_cosine_and_constant_schedules():
  cosine = optim.build_schedule(global_batch_size=256, num_train_images=2560,
                                warmup_epochs=1, kind="cosine", train_steps=100)
  peak = 0.016
  np.testing.assert_allclose(float(cosine(5)), peak * 5 / 10, rtol=1e-6)
  np.testing.assert_allclose(float(cosine(50)), 0.5 * peak, rtol=1e-5)
  np.testing.assert_allclose(float(cosine(20)),
                             0.5 * peak * (1 + math.cos(math.pi * 0.2)),
                             rtol=1e-6)
  assert float(cosine(100)) == pytest.approx(0.0, abs=1e-9)
  assert float(cosine(150)) == pytest.approx(0.0, abs=1e-9)
  constant = optim.build_schedule(global_batch_size=512, num_train_images=5120,
                                  warmup_epochs=0, kind="constant")
  np.testing.assert_allclose(float(constant(0)), 0.032, rtol=1e-6)
  np.testing.assert_allclose(float(constant(10**6)), 0.032, rtol=1e-6)


@pytest.mark.parametrize("kwargs, bad", [
    (dict(kind="linear"), "'linear'"),
    (dict(kind="cosine"), "None"),
    (dict(global_batch_size=0), "0"),
    (dict(num_train_images=-5), "-5"),
])
def test_schedule_rejects_bad_values(kwargs, bad):
  args = dict(global_batch_size=256, num_train_images=2560)
  args.update(kwargs)
  with pytest.raises(ValueError, match=bad):
    optim.build_schedule(**args)


def test_schedule_serializes_and_compiles():
  schedule = _reference_schedule()
  restored = keras.optimizers.schedules.deserialize(
      keras.optimizers.schedules.serialize(schedule))
  assert isinstance(restored, optim.WarmupDecaySchedule)
  assert restored.get_config() == schedule.get_config()
  compiled = tf.function(schedule, jit_compile=True)
  for step in (0, 3127, 9000):
    np.testing.assert_allclose(float(compiled(tf.constant(step, tf.int64))),
                               float(schedule(step)), rtol=1e-6)


def test_schedule_is_gin_configurable():
  gin.parse_config("""
      effnet_gin.train.build_schedule.base_learning_rate = 0.032
      effnet_gin.train.build_schedule.kind = 'constant'
      effnet_gin.train.build_schedule.warmup_epochs = 0
  """)
  schedule = configurables.build_schedule(global_batch_size=256,
                                          num_train_images=2560)
  np.testing.assert_allclose(float(schedule(7)), 0.032, rtol=1e-6)


# ---------------------------------------------------------------------------
# Optimizers against TF1
# ---------------------------------------------------------------------------
def _problem(seed=0, steps=6):
  rng = np.random.default_rng(seed)
  initial = [
      rng.normal(size=(3, 4)).astype(np.float32),
      rng.normal(size=(4,)).astype(np.float32)
  ]
  grads = [[rng.normal(size=v.shape).astype(np.float32)
            for v in initial]
           for _ in range(steps)]
  return initial, grads


def _run_tf1(make_optimizer, learning_rate, initial, grads):
  """Applies `grads` with a TF1 optimizer in a graph; returns the variables."""
  with tf.Graph().as_default():
    variables = [
        tf.compat.v1.get_variable(f"v{i}", initializer=value)
        for i, value in enumerate(initial)
    ]
    global_step = tf.compat.v1.train.get_or_create_global_step()
    placeholders = [
        tf.compat.v1.placeholder(tf.float32, v.shape) for v in initial
    ]
    lr = learning_rate(global_step) if callable(learning_rate) else (
        learning_rate)
    train_op = make_optimizer(lr).apply_gradients(
        list(zip(placeholders, variables)), global_step=global_step)
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      for step_grads in grads:
        session.run(train_op, dict(zip(placeholders, step_grads)))
      return session.run(variables)


_SMALL_SCHEDULE = dict(global_batch_size=256, num_train_images=512,
                       warmup_epochs=1.5, decay_epochs=0.5)


@pytest.mark.parametrize("scheduled", [False, True])
def test_rmsprop_matches_tf1_rmsprop(scheduled):
  initial, grads = _problem()
  learning_rate = (optim.build_schedule(
      **_SMALL_SCHEDULE) if scheduled else 0.05)
  expected = _run_tf1(
      lambda lr: tf.compat.v1.train.RMSPropOptimizer(
          lr, decay=0.9, momentum=0.9, epsilon=1e-3), learning_rate, initial,
      grads)
  got = run_keras(optim.build_optimizer(learning_rate), initial, grads)
  for g, e in zip(got, expected):
    np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7)
  # Sanity: the 1.0 start of the mean square matters (Keras RMSprop differs).
  keras_rmsprop = keras.optimizers.RMSprop(learning_rate, rho=0.9, momentum=0.9,
                                           epsilon=1e-3)
  stock = run_keras(keras_rmsprop, initial, grads)
  assert not np.allclose(stock[0], expected[0], rtol=1e-3)


def test_momentum_matches_tf1_momentum():
  initial, grads = _problem(seed=1)
  schedule = optim.build_schedule(**_SMALL_SCHEDULE)
  expected = _run_tf1(
      lambda lr: tf.compat.v1.train.MomentumOptimizer(lr, momentum=0.9),
      schedule, initial, grads)
  got = run_keras(optim.build_optimizer(schedule, name="momentum"), initial,
                  grads)
  for g, e in zip(got, expected):
    np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7)


def test_rmsprop_update_compiles_under_xla():
  initial, grads = _problem(seed=2, steps=3)
  schedule = optim.build_schedule(**_SMALL_SCHEDULE)
  eager = run_keras(optim.build_optimizer(schedule), initial, grads)
  compiled = run_keras(optim.build_optimizer(schedule), initial, grads,
                       jit_compile=True)
  for c, e in zip(compiled, eager):
    np.testing.assert_allclose(c, e, rtol=1e-5, atol=1e-7)


def test_build_optimizer_names_and_errors():
  assert isinstance(optim.build_optimizer(0.1), optim.TF1RMSProp)
  assert isinstance(optim.build_optimizer(0.1, name="momentum"),
                    optim.TF1Momentum)
  assert isinstance(optim.build_optimizer(0.1, name="sgd"),
                    keras.optimizers.SGD)
  adam = optim.build_optimizer(0.1, name="adam", epsilon=1e-8)
  assert isinstance(adam, keras.optimizers.Adam) and adam.epsilon == 1e-8
  with pytest.raises(ValueError, match="'lamb'"):
    optim.build_optimizer(0.1, name="lamb")
  gin.parse_config("effnet_gin.train.build_optimizer.name = 'momentum'")
  assert isinstance(configurables.build_optimizer(0.1), optim.TF1Momentum)


def test_optimizer_config_round_trip():
  optimizer = optim.build_optimizer(optim.build_schedule(**_SMALL_SCHEDULE),
                                    rho=0.8, epsilon=1e-2)
  restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
  assert isinstance(restored, optim.TF1RMSProp)
  assert (restored.rho, restored.momentum, restored.epsilon) == (0.8, 0.9, 1e-2)
  assert float(restored.learning_rate) == float(optimizer.learning_rate)


def _dense_model(seed=3):
  keras.utils.set_random_seed(seed)
  inputs = keras.Input((5,))
  outputs = keras.layers.Dense(3, name="logits")(keras.layers.Dense(
      4, activation="relu", name="hidden")(inputs))
  return keras.Model(inputs, outputs)


def _train(strategy, model, optimizer, features, labels, steps):
  """Runs `steps` strategy.run steps of a global-batch-mean MSE loss."""
  global_batch = features.shape[0]
  dataset = tf.data.Dataset.from_tensor_slices(
      (features, labels)).batch(global_batch).repeat()
  iterator = iter(strategy.experimental_distribute_dataset(dataset))

  def replica_step(x, y):
    with tf.GradientTape() as tape:
      per_example = tf.reduce_sum(tf.square(model(x) - y), axis=-1)
      loss = tf.reduce_sum(per_example) / global_batch
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))

  @tf.function
  def step(iterator):
    strategy.run(replica_step, args=next(iterator))

  for _ in range(steps):
    step(iterator)
  return [v.numpy() for v in model.trainable_variables]


def test_rmsprop_under_mirrored_strategy_matches_single_device(
    mirrored_strategy):
  rng = np.random.default_rng(4)
  features = rng.normal(size=(8, 5)).astype(np.float32)
  labels = rng.normal(size=(8, 3)).astype(np.float32)
  schedule = optim.build_schedule(**_SMALL_SCHEDULE)

  single = tf.distribute.get_strategy()
  model = _dense_model()
  optimizer = optim.build_optimizer(schedule)
  optimizer.build(model.trainable_variables)
  expected = _train(single, model, optimizer, features, labels, steps=3)

  mirrored = mirrored_strategy
  with mirrored.scope():
    model = _dense_model()
    optimizer = optim.build_optimizer(schedule)
    optimizer.build(model.trainable_variables)
  got = _train(mirrored, model, optimizer, features, labels, steps=3)
  for g, e in zip(got, expected):
    np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
  assert int(optimizer.iterations.numpy()) == 3


def test_rmsprop_under_mixed_bfloat16():
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  model = _dense_model()
  optimizer = optim.build_optimizer(0.01)
  optimizer.build(model.trainable_variables)
  assert all(v.dtype == "float32"
             for v in optimizer.variables
             if v.name != "iteration")
  x = tf.random.normal((8, 5))
  y = tf.random.normal((8, 3))

  @tf.function(jit_compile=True)
  def step():
    with tf.GradientTape() as tape:
      logits = model(x)
      loss = tf.reduce_mean(tf.square(tf.cast(logits, tf.float32) - y))
    grads = tape.gradient(loss, model.trainable_variables)
    # A bfloat16 gradient must be accepted too.
    grads = [tf.cast(g, tf.bfloat16) for g in grads]
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss

  before = step()
  for _ in range(5):
    after = step()
  assert model.trainable_variables[0].dtype == "float32"
  assert np.isfinite(float(after)) and float(after) < float(before)


def test_mixed_float16_adds_loss_scaling():
  keras.mixed_precision.set_global_policy("mixed_float16")
  optimizer = optim.build_optimizer(0.01)
  assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
  assert isinstance(optimizer.inner_optimizer, optim.TF1RMSProp)


# ---------------------------------------------------------------------------
# Exponential moving average
# ---------------------------------------------------------------------------
def _bn_model(seed=5):
  """A model with BN moving statistics and an RNG seed (Keras's Dropout)."""
  keras.utils.set_random_seed(seed)
  inputs = keras.Input((2, 2, 3))
  x = keras.layers.Conv2D(4, 1, name="conv")(inputs)
  x = BatchNorm(name="bn")(x)
  x = keras.layers.Dropout(0.5, name="dropout")(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, keras.layers.Dense(2, name="logits")(x))


def _shift_weights(model, delta):
  for v in averaging.averaged_variables(model):
    v.assign(v + delta)


def test_ema_covers_trainable_and_moving_statistics_only():
  model = _bn_model()
  names = [v.path for v in averaging.averaged_variables(model)]
  assert names == [
      "conv/kernel", "conv/bias", "bn/gamma", "bn/beta", "logits/kernel",
      "logits/bias", "bn/moving_mean", "bn/moving_variance"
  ]
  assert any("seed" in v.path for v in model.non_trainable_variables)
  ema = averaging.ExponentialMovingAverage(model)
  assert len(ema.averages) == len(names)
  assert not ema.trainable_variables


@pytest.mark.parametrize("use_num_updates", [True, False])
def test_ema_update_follows_the_formula(use_num_updates):
  model = _bn_model()
  ema = averaging.ExponentialMovingAverage(model, decay=0.99,
                                           use_num_updates=use_num_updates)
  sources = averaging.averaged_variables(model)
  expected = [v.numpy() for v in sources]
  for step, delta in ((0, 1.0), (5, -0.5), (5000, 2.0)):
    _shift_weights(model, delta)
    ema.update(step)
    decay = min(0.99, (1 + step) / (10 + step)) if use_num_updates else 0.99
    expected = [
        e - (1 - decay) * (e - v.numpy()) for e, v in zip(expected, sources)
    ]
    np.testing.assert_allclose(float(ema.effective_decay(step)), decay,
                               rtol=1e-6)
    for average, e in zip(ema.averages, expected):
      np.testing.assert_allclose(average.numpy(), e, rtol=1e-5, atol=1e-6)


def test_ema_rejects_bad_decay_and_unbuilt_model():
  with pytest.raises(ValueError, match="1.0"):
    averaging.ExponentialMovingAverage(_bn_model(), decay=1.0)
  with pytest.raises(ValueError, match="build it"):
    averaging.ExponentialMovingAverage(keras.Sequential([keras.layers.Dense(2)
                                                        ]))


def test_ema_update_compiles_under_xla():
  model = _bn_model()
  eager_model = _bn_model()
  compiled_ema = averaging.ExponentialMovingAverage(model)
  eager_ema = averaging.ExponentialMovingAverage(eager_model)
  update = tf.function(compiled_ema.update, jit_compile=True)
  step = tf.Variable(0, dtype=tf.int64)
  for _ in range(3):
    _shift_weights(model, 0.3)
    _shift_weights(eager_model, 0.3)
    step.assign_add(1)
    update(step)
    eager_ema.update(step)
  for c, e in zip(compiled_ema.averages, eager_ema.averages):
    np.testing.assert_allclose(c.numpy(), e.numpy(), rtol=1e-6)


def test_ema_checkpoint_round_trip(tmp_path):
  model = _bn_model()
  ema = averaging.ExponentialMovingAverage(model)
  _shift_weights(model, 1.0)
  ema.update(3)
  saved = [a.numpy() for a in ema.averages]
  path = checkpointing.build_checkpoint(model=model,
                                        ema=ema).save(str(tmp_path / "ckpt"))

  restored_model = _bn_model(seed=9)
  restored_ema = averaging.ExponentialMovingAverage(restored_model)
  checkpointing.build_checkpoint(
      model=restored_model, ema=restored_ema).restore(path).assert_consumed()
  for a, s in zip(restored_ema.averages, saved):
    np.testing.assert_allclose(a.numpy(), s)
  # The averages object holds only the averages, not the model's variables.
  keys = [
      name for name, _ in tf.train.list_variables(path)
      if name.startswith("ema/")
  ]
  assert len(keys) == len(saved)


def test_averaged_weights_swaps_in_and_restores():
  model = _bn_model()
  ema = averaging.ExponentialMovingAverage(model)
  _shift_weights(model, 1.0)
  ema.update(100)
  raw = [v.numpy() for v in model.weights]
  averages = [a.numpy() for a in ema.averages]
  with ema.averaged_weights():
    for v, a in zip(averaging.averaged_variables(model), averages):
      np.testing.assert_allclose(v.numpy(), a)
  for v, r in zip(model.weights, raw):
    np.testing.assert_allclose(v.numpy(), r)
  ema.copy_to_model()
  for v, a in zip(averaging.averaged_variables(model), averages):
    np.testing.assert_allclose(v.numpy(), a)


@pytest.mark.parametrize("context", ["replica", "cross_replica", "no_scope"])
def test_ema_under_mirrored_strategy(context, mirrored_strategy):
  strategy = mirrored_strategy
  with strategy.scope():
    model = _bn_model()
    ema = averaging.ExponentialMovingAverage(model, decay=0.5)
  initial = [v.numpy() for v in averaging.averaged_variables(model)]
  with strategy.scope():
    _shift_weights(model, 2.0)

  @tf.function
  def update(step):
    if context == "replica":
      strategy.run(ema.update, args=(step,))
    else:
      ema.update(step)

  if context == "no_scope":
    update(tf.constant(1000, tf.int64))
  else:
    with strategy.scope():
      update(tf.constant(1000, tf.int64))
  for average, start, source in zip(ema.averages, initial,
                                    averaging.averaged_variables(model)):
    expected = start - 0.5 * (start - source.numpy())
    for local in strategy.experimental_local_results(average):
      np.testing.assert_allclose(local.numpy(), expected, rtol=1e-6)
  raw = model.weights[0].numpy()
  with ema.averaged_weights():
    for local in strategy.experimental_local_results(model.weights[0].value):
      np.testing.assert_allclose(local.numpy(), ema.averages[0].numpy())
  for local in strategy.experimental_local_results(model.weights[0].value):
    np.testing.assert_allclose(local.numpy(), raw)


def test_ema_is_gin_configurable():
  gin.parse_config("""
      effnet_gin.train.ExponentialMovingAverage.decay = 0.5
      effnet_gin.train.ExponentialMovingAverage.use_num_updates = False
  """)
  ema = configurables.ExponentialMovingAverage(_bn_model())
  assert float(ema.effective_decay(0)) == 0.5
