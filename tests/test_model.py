"""Tests for effnet_gin.model: layers and the EfficientNet builder."""
import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from effnet_gin import configurables
from effnet_gin import model as model_lib
from effnet_gin.model import layers

TINY = dict(width_coefficient=0.25, depth_coefficient=0.25, image_size=32,
            num_classes=5)


def _tiny_model(**kwargs):
  return model_lib.build_model("efficientnet-b0", **{**TINY, **kwargs})


def _images(batch=4, size=32, seed=0):
  rng = np.random.default_rng(seed)
  return tf.constant(rng.uniform(0, 255, (batch, size, size, 3)), tf.float32)


def _trainable_params(model):
  return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


@pytest.fixture
def bfloat16_policy():
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  yield  # conftest restores float32 after every test.


# ---------------------------------------------------------------- the builder


@pytest.mark.parametrize(
    "index, params",
    enumerate([
        5_288_548, 7_794_184, 9_109_994, 12_233_232, 19_341_616, 30_389_784,
        43_040_704, 66_347_960
    ]))
def test_trainable_parameter_counts_match_the_reference(index, params):
  # Parameter counts do not depend on the input size: build at 32 px.
  net = model_lib.build_model(f"efficientnet-b{index}", image_size=32)
  assert _trainable_params(net) == params


@pytest.mark.parametrize("variant, stem, head, blocks",
                         [("efficientnet-b0", 32, 1280, 16),
                          ("efficientnet-b7", 64, 2560, 55),
                          ("efficientnet-lite4", 32, 1280, 30)])
def test_built_stem_head_and_blocks(variant, stem, head, blocks):
  net = model_lib.build_model(variant, image_size=32)
  assert net.get_layer("stem_conv").filters == stem
  assert net.get_layer("top_conv").filters == head
  assert sum(l.name.endswith("_dwconv") for l in net.layers) == blocks


def test_layer_names_and_shapes():
  net = model_lib.build_model("efficientnet-b0")
  for name in [
      "normalization", "stem_conv", "stem_bn", "stem_activation",
      "block1a_dwconv", "block1a_se_reduce", "block1a_project_bn",
      "block2a_expand_conv", "block3b_dwconv", "block3b_se_reduce",
      "block3b_se_expand", "block3b_drop", "block3b_add",
      "block7a_project_conv", "top_conv", "top_bn", "avg_pool", "top_dropout",
      "predictions"
  ]:
    net.get_layer(name)
  assert net.input.shape == (None, 224, 224, 3)
  assert net.output.shape == (None, 1000)
  assert net.get_layer("block3b_se_reduce").filters == 10  # int(40 * 0.25).
  assert isinstance(net.get_layer("stem_bn"), layers.BatchNorm)
  assert not net.get_layer("stem_conv").use_bias
  assert net.get_layer("block3b_se_reduce").use_bias
  # Keras 3's random layers would add SeedGenerator state; ours have none.
  assert all("seed" not in v.path for v in net.weights)


def test_stochastic_depth_survival_falls_linearly():
  net = model_lib.build_model("efficientnet-b0", image_size=32)
  # block2b is block 2 of 16 (0-based), block6d is 14; block2a and block7a
  # change shape, so they have no skip and no stochastic depth.
  assert net.get_layer("block2b_drop").survival_prob == pytest.approx(1 - 0.2 *
                                                                      2 / 16)
  assert net.get_layer("block6d_drop").survival_prob == pytest.approx(1 - 0.2 *
                                                                      14 / 16)
  assert "block2a_drop" not in [l.name for l in net.layers]


def test_lite_model_has_relu6_no_se_and_lite_normalization():
  net = model_lib.build_model("efficientnet-lite0", image_size=32)
  names = [l.name for l in net.layers]
  assert not any("_se_" in n for n in names)
  assert net.get_layer("stem_activation").get_config()["activation"] == (
      "relu6")
  norm = net.get_layer("normalization")
  assert norm.mean == (127.0,) * 3 and norm.stddev == (128.0,) * 3
  out = norm(tf.constant([[[[127.0, 255.0, -1.0]]]]))
  np.testing.assert_allclose(out.numpy().ravel(), [0.0, 1.0, -1.0])


def test_endpoints_and_headless_model():
  net = _tiny_model(width_coefficient=1.0, image_size=64, return_endpoints=True)
  out = net(_images(2, 64))
  shapes = {k: tuple(v.shape) for k, v in out.items()}
  assert shapes == {
      "reduction_1": (2, 32, 32, 16),
      "reduction_2": (2, 16, 16, 24),
      "reduction_3": (2, 8, 8, 40),
      "reduction_4": (2, 4, 4, 112),
      "reduction_5": (2, 2, 2, 320),
      "features": (2, 2, 2, 1280),
      "logits": (2, 5)
  }
  headless = _tiny_model(include_top=False)
  assert headless.output.shape == (None, 1, 1, 320)
  assert "predictions" not in [l.name for l in headless.layers]


def test_forward_backward_under_xla():
  net = _tiny_model(dropout_rate=0.5)
  images, labels = _images(), tf.constant([0, 1, 2, 3])

  @tf.function(jit_compile=True)
  def step(images, labels):
    with tf.GradientTape() as tape:
      logits = net(images, training=True)
      loss = tf.reduce_mean(
          tf.keras.losses.sparse_categorical_crossentropy(
              labels, logits, from_logits=True))
    return logits, tape.gradient(loss, net.trainable_variables)

  logits, grads = step(images, labels)
  assert logits.shape == (4, 5) and logits.dtype == tf.float32
  assert all(g is not None for g in grads)
  assert all(bool(tf.reduce_all(tf.math.is_finite(g))) for g in grads)
  assert float(tf.add_n([tf.reduce_sum(tf.abs(g)) for g in grads])) > 0


def test_dropout_and_stochastic_depth_act_only_in_training():
  net = _tiny_model(dropout_rate=0.5, survival_prob=0.5)
  images = _images()
  infer = tf.function(lambda x: net(x, training=False))
  np.testing.assert_array_equal(infer(images), infer(images))
  # Eager and traced inference differ only in float summation order; a
  # logit near 0 then differs relatively, so the tolerance is the logits'.
  inferred = infer(images).numpy()
  np.testing.assert_allclose(net(images), inferred, rtol=1e-4,
                             atol=1e-4 * np.abs(inferred).max())
  train = tf.function(lambda x: net(x, training=True))
  assert not np.allclose(train(images), train(images))


def test_batch_norm_moving_stats_update_only_in_training():
  net = _tiny_model()
  bn = net.get_layer("stem_bn")
  net(_images(), training=False)
  np.testing.assert_array_equal(bn.moving_mean.numpy(), 0.0)
  tf.function(lambda x: net(x, training=True))(_images())
  assert np.abs(bn.moving_mean.numpy()).sum() > 0
  assert not np.allclose(bn.moving_variance.numpy(), 1.0)


def test_bfloat16_policy_computes_in_bfloat16_with_float32_logits(
    bfloat16_policy):
  del bfloat16_policy
  net = _tiny_model()
  assert net.get_layer("normalization").output.dtype == "float32"
  assert net.get_layer("block1a_project_bn").output.dtype == "bfloat16"
  assert net.get_layer("top_activation").output.dtype == "bfloat16"
  assert net.get_layer("stem_bn").moving_mean.dtype == "float32"
  assert net.get_layer("stem_conv").kernel.dtype == "float32"
  for training in (False, True):
    logits = net(_images(), training=training)
    assert logits.dtype == tf.float32
    assert bool(tf.reduce_all(tf.math.is_finite(logits)))


def test_get_config_round_trip_and_keras_file(tmp_path):
  net = _tiny_model()
  clone = keras.Model.from_config(net.get_config())
  clone.set_weights(net.get_weights())
  images = _images()
  np.testing.assert_allclose(clone(images), net(images), rtol=1e-5)
  path = str(tmp_path / "tiny.keras")
  net.save(path)
  loaded = keras.models.load_model(path)
  np.testing.assert_allclose(loaded(images), net(images), rtol=1e-5)


# ----------------------------------------------------------------------- gin


def test_gin_bindings_select_the_variant():
  gin.parse_config([
      "build_model.variant = 'efficientnet-b3'",
      "effnet_gin.model.build_model.image_size = 32",
      "build_model.num_classes = 7"
  ])
  net = configurables.build_model()
  assert net.get_layer("stem_conv").filters == 40
  assert net.get_layer("top_conv").filters == 1536
  assert net.output.shape == (None, 7)
  assert net.name == "efficientnet-b3"
  # The library's builder is plain Python: bindings do not reach it.
  assert model_lib.build_model(image_size=32).name == "efficientnet-b0"


def test_resolution_is_a_deprecated_alias_of_image_size():
  assert model_lib.build_model(resolution=32).input_shape == (None, 32, 32, 3)
  with pytest.raises(ValueError, match="give only image_size"):
    model_lib.build_model(image_size=32, resolution=64)


def test_gin_rejects_a_misspelled_parameter():
  with pytest.raises(ValueError, match="varient"):
    gin.parse_config(["build_model.varient = 'efficientnet-b3'"])


# ---------------------------------------------------------------- validation


def test_advprop_normalization_maps_0_255_to_minus_one_one():
  net = model_lib.build_model("efficientnet-b0", image_size=32,
                              input_normalization="advprop")
  out = net.get_layer("normalization")(tf.constant([[[[0.0, 127.5, 255.0]]]]))
  np.testing.assert_allclose(out.numpy().ravel(), [-1.0, 0.0, 1.0])


def test_unknown_variant_lists_known_names():
  with pytest.raises(ValueError, match="efficientnet-b0.*efficientnet-lite"):
    model_lib.build_model("efficientnet-b10")


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_classes=0), "num_classes"),
    (dict(num_classes=2.5), "num_classes"),
    (dict(width_coefficient=0.0), "width_coefficient"),
    (dict(depth_coefficient=-1.0), "depth_coefficient"),
    (dict(resolution=0), "resolution"),
    (dict(resolution=32.5), "resolution"),
    (dict(dropout_rate=1.0), "dropout_rate"),
    (dict(survival_prob=1.5), "survival_prob"),
    (dict(input_normalization="caffe"), "input_normalization"),
    (dict(batch_norm_momentum=1.5), "momentum"),
    (dict(batch_norm_epsilon=0.0), "epsilon"),
])
def test_bad_arguments_raise_value_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    _tiny_model(**kwargs)


# ------------------------------------------------------------------ BatchNorm


def test_batch_norm_matches_the_formulas():
  x = tf.constant(
      np.random.default_rng(1).normal(3.0, 2.0, (8, 4, 4, 6)), tf.float32)
  bn = layers.BatchNorm(momentum=0.9, epsilon=1e-3)
  y = bn(x, training=True)
  mean = x.numpy().mean(axis=(0, 1, 2))
  var = x.numpy().var(axis=(0, 1, 2))
  np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-3), atol=1e-4)
  # As TF1's fused batch norm, the moving variance is Bessel-corrected.
  n = 8 * 4 * 4
  np.testing.assert_allclose(bn.moving_mean.numpy(), 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(bn.moving_variance.numpy(),
                             0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)
  y = bn(x, training=False)
  np.testing.assert_allclose(y, (x - bn.moving_mean.numpy()) /
                             np.sqrt(bn.moving_variance.numpy() + 1e-3),
                             atol=1e-4)
  assert [w.name for w in bn.weights
         ] == ["gamma", "beta", "moving_mean", "moving_variance"]
  assert [w.name for w in bn.trainable_weights] == ["gamma", "beta"]
  assert bn.moving_mean.aggregation == "mean"


def test_frozen_batch_norm_uses_moving_stats_in_training():
  bn = layers.BatchNorm()
  x = _images(2, 4)
  bn.build(x.shape)
  bn.trainable = False
  np.testing.assert_allclose(bn(x, training=True), x / np.sqrt(1 + 1e-3),
                             rtol=1e-5)
  np.testing.assert_array_equal(bn.moving_mean.numpy(), 0.0)


def test_batch_norm_bfloat16_input_keeps_float32_stats(bfloat16_policy):
  del bfloat16_policy
  bn = layers.BatchNorm()
  y = bn(tf.ones([2, 3, 3, 4]) * 5.0, training=True)
  assert y.dtype == tf.bfloat16
  assert bn.gamma.dtype == "float32" and bn.moving_mean.dtype == "float32"
  np.testing.assert_allclose(bn.moving_mean.numpy(), 0.05, rtol=1e-3)


def test_batch_norm_updates_under_xla():
  bn = layers.BatchNorm(momentum=0.5)
  x = tf.fill([2, 2, 2, 3], 4.0)
  bn.build(x.shape)
  tf.function(lambda x: bn(x, training=True), jit_compile=True)(x)
  np.testing.assert_allclose(bn.moving_mean.numpy(), 2.0)


def test_batch_norm_updates_under_mirrored_strategy(mirrored_strategy):
  strategy = mirrored_strategy
  assert strategy.num_replicas_in_sync == 2
  with strategy.scope():
    bn = layers.BatchNorm(momentum=0.5)
    bn.build((None, 2, 2, 3))
    net = _tiny_model()
  # Replica r sees a constant batch of value 2 + 4r: batch means 2 and 6.
  per_replica = strategy.experimental_distribute_values_from_function(
      lambda ctx: tf.fill([2, 2, 2, 3], 2.0 + 4.0 * ctx.replica_id_in_sync_group
                         ))
  images = strategy.experimental_distribute_values_from_function(
      lambda ctx: _images(2, seed=ctx.replica_id_in_sync_group))

  @tf.function
  def step(x, images):

    def replica_fn(x, images):
      bn(x, training=True)
      net(images, training=True)

    strategy.run(replica_fn, args=(x, images))

  step(per_replica, images)
  # 0.5 * 0 + 0.5 * mean(2, 6) on every replica.
  for value in strategy.experimental_local_results(bn.moving_mean.value):
    np.testing.assert_allclose(value.numpy(), 2.0)
  top_bn = net.get_layer("top_bn").moving_mean.value
  values = [v.numpy() for v in strategy.experimental_local_results(top_bn)]
  assert np.abs(values[0]).sum() > 0
  np.testing.assert_allclose(values[0], values[1])


# ------------------------------------------------------ dropout, drop-path


def test_dropout_layer():
  x = tf.ones([1000, 10])
  dropout = layers.Dropout(0.5)
  np.testing.assert_array_equal(dropout(x), x)
  y = dropout(x, training=True).numpy()
  assert set(np.unique(y)) == {0.0, 2.0}
  assert 0.4 < (y == 0).mean() < 0.6
  with pytest.raises(ValueError, match="1.0"):
    layers.Dropout(1.0)


def test_stochastic_depth_drops_whole_examples():
  x = tf.ones([2000, 3, 3, 2])
  drop = layers.StochasticDepth(0.8)
  np.testing.assert_array_equal(drop(x), x)
  y = drop(x, training=True).numpy().reshape(2000, -1)
  per_example = y[:, 0]
  assert np.all(y == per_example[:, None])
  np.testing.assert_allclose(np.unique(per_example), [0.0, 1.25])
  assert 0.15 < (per_example == 0).mean() < 0.25
  with pytest.raises(ValueError, match="survival_prob"):
    layers.StochasticDepth(0.0)
