"""The reference's whole model zoo: EdgeTPU, CondConv, EfficientNet-X and -H.

Expected numbers come from the reference (param_counts.tsv, written by its
code) or are derived by hand here from the reference's block strings and
rules, never from the code under test.
"""
import csv
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from effnet_gin.model import blocks
from effnet_gin.model import build_model
from effnet_gin.model import condconv
from effnet_gin.model import flops
from effnet_gin.model import resolve_spec
from effnet_gin.model import specs

PARAM_COUNTS = os.path.join(os.path.dirname(__file__), "fixtures",
                            "reference_checkpoints", "param_counts.tsv")


def reference_rows():
  with open(PARAM_COUNTS) as f:
    return list(csv.DictReader(f, delimiter="\t"))


@pytest.mark.parametrize("row", reference_rows(),
                         ids=lambda row: row["model_name"])
def test_parameter_counts_equal_the_references(row):
  name = row["model_name"]
  spec = specs.get_variant(name)
  assert spec.resolution == int(row["image_size"])
  assert spec.num_classes == int(row["num_classes"])
  cost = flops.spec_cost(name)
  assert cost.params == int(row["trainable_params"])
  assert cost.variables == int(row["all_model_variables"])


def test_cost_table_lists_every_variant_at_its_own_class_count():
  # What bin/model_info --variant=all prints.
  lines = flops.cost_table(list(specs.VARIANTS)).splitlines()[1:]
  rows = {line.split()[0]: line.split() for line in lines}
  # The reference's 51 and EfficientNetV2's 8.
  assert len(rows) == 51 + 8
  for row in reference_rows():
    printed = rows[row["model_name"]]
    assert printed[1:4] == [
        row["image_size"], row["num_classes"],
        f"{int(row['trainable_params']):,}"
    ]


def count(variables):
  return sum(int(np.prod(v.shape)) for v in variables)


@pytest.mark.parametrize("name", [
    "efficientnet-edgetpu-S", "efficientnet-x-b0", "efficientnet-condconv-b0-4e"
])
def test_built_full_size_models_have_the_references_counts(name):
  row = {r["model_name"]: r for r in reference_rows()}[name]
  model = build_model(name, image_size=32)  # Weights ignore resolution.
  assert model.output_shape == (None, int(row["num_classes"]))
  assert count(model.trainable_weights) == int(row["trainable_params"])
  assert count(model.weights) == int(row["all_model_variables"])


@pytest.mark.parametrize("name, image_size",
                         [("efficientnet-edgetpu-L", 48),
                          ("efficientnet-condconv-b0-8e-depth", 33),
                          ("efficientnet-x-gpu-b2", 64),
                          ("efficientnet-h-tpu-b5", 40)])
def test_spec_costs_equal_the_built_models(name, image_size):
  overrides = dict(width_coefficient=0.1, depth_coefficient=0.5)
  model = build_model(name, num_classes=7, image_size=image_size, **overrides)
  cost = flops.spec_cost(resolve_spec(name, resolution=image_size, **overrides),
                         num_classes=7)
  assert cost.params == count(model.trainable_weights)
  assert cost.variables == count(model.weights)
  assert cost.flops == flops.count_flops(model)


def test_block_strings_parse_into_stages():
  block = specs.parse_block("r2_k3_s22_e6_i16_o24_se0.25_f1_d2_a1")
  assert (block.repeats, block.kernel_size, block.strides, block.expand_ratio,
          block.input_filters, block.output_filters,
          block.se_ratio) == (2, 3, 2, 6, 16, 24, 0.25)
  assert (block.conv_type, block.space_to_depth, block.activation, block.skip,
          block.condconv) == ("fused", 2, "swish", True, False)
  block = specs.parse_block("r1_k3_s11_e4_i24_o24_c1_noskip")
  assert (block.conv_type, block.skip, block.se_ratio,
          block.activation) == ("conv", False, 0.0, None)
  block = specs.parse_block("r3_k5_s11_e6_i80_o112_se0.25_cc_a0")
  assert (block.condconv, block.activation) == (True, "relu")


@pytest.mark.parametrize("text, message", [
    ("r1_k3_s11_e1_i32_o16_x9", "unknown option 'x9'"),
    ("r1_k3_s12_e1_i32_o16", "stride '12'"),
    ("r1_k3_e1_i32_o16", "lacks or misspells option 's'"),
    ("r1_k3_s22_e1_i32_o16_d1", "space_to_depth=1 stage has stride 1, got 2"),
])
def test_bad_block_strings_name_the_bad_option(text, message):
  with pytest.raises(ValueError, match=message):
    specs.parse_block(text)


def test_unknown_variant_lists_the_known_families():
  with pytest.raises(ValueError) as error:
    build_model("efficientnet-edgetpu-XL")
  message = str(error.value)
  for family in ("EfficientNet-Lite", "EfficientNet-EdgeTPU",
                 "EfficientNet-CondConv", "EfficientNet-X", "EfficientNet-H"):
    assert family in message
  assert "efficientnet-h-tpu-b7" in message


def test_x_b0_blocks_follow_the_references_space_to_depth_rules():
  blocks = specs.get_variant("efficientnet-x-b0").block_sequence()
  first, second, third = blocks[:3]
  # r1_k3_s11_e1_i32_o16_se0.25_d1_a0 at width 1: the stage runs at 4x its
  # width with kernel (3 + 1) // 2; its squeeze is int(128 * 0.25 * 4) / 4.
  assert (first.space_to_depth, first.kernel_size, first.strides,
          first.input_filters, first.expanded_filters, first.output_filters,
          first.se_filters, first.activation,
          first.skip) == (True, 2, 1, 128, 128, 64, 32, "relu", False)
  # r2_k3_s22_e6_i16_o24_se0.25_f1_d2_a1: the first block runs at stride 1,
  # expanding its declared 16 (not its real 64) input channels.
  assert (second.conv_type, second.strides, second.kernel_size,
          second.expanded_filters, second.output_filters, second.se_filters,
          second.activation) == ("fused", 1, 3, 96, 24, 16, "swish")
  assert (third.strides, third.input_filters, third.expanded_filters,
          third.skip) == (1, 24, 144, True)
  assert sum(block.strides for block in blocks if block.strides > 1) == 6


def test_edgetpu_blocks_are_conv_only_without_squeeze_excite():
  spec = specs.get_variant("efficientnet-edgetpu-S")
  blocks = spec.block_sequence()
  assert (spec.activation, spec.input_normalization, spec.num_classes,
          spec.local_pooling) == ("relu", "lite", 1001, True)
  # r1_k3_s11_e4_i24_o24_c1_noskip after a 32-filter stem: the expansion
  # multiplies the declared 24, not the stem's 32.
  assert (blocks[0].conv_type, blocks[0].expanded_filters,
          blocks[0].skip) == ("conv", 96, False)
  assert not any(block.se_filters for block in blocks)
  assert [b.conv_type for b in blocks].count("conv") == 1 + 2 + 4


def test_local_pooling_averages_the_whole_map():
  model = build_model("efficientnet-edgetpu-S", width_coefficient=0.1,
                      depth_coefficient=0.5, image_size=64, num_classes=5)
  assert isinstance(model.get_layer("avg_pool"), keras.layers.AveragePooling2D)
  features = keras.Model(model.input, [
      model.get_layer("top_activation").output,
      model.get_layer("avg_pool_flatten").output
  ])
  images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3))
  maps, pooled = features(images.astype(np.float32))
  np.testing.assert_allclose(pooled, np.mean(maps, axis=(1, 2)), atol=1e-5)


def per_example_reference(x, routing, experts, kernel_shape, strides,
                          depthwise):
  """Each example convolved alone with its mixed kernel, by tf.nn ops."""
  outputs = []
  for example, weights in zip(x, routing):
    kernel = (weights @ experts).reshape(kernel_shape)
    if depthwise:
      out = tf.nn.depthwise_conv2d(example[None], kernel,
                                   [1, strides, strides, 1], "SAME")
    else:
      out = tf.nn.conv2d(example[None], kernel, strides, "SAME")
    outputs.append(out[0])
  return np.stack(outputs)


@pytest.mark.parametrize("kernel_size, strides, depthwise", [(1, 1, False),
                                                             (3, 2, False),
                                                             (5, 1, True),
                                                             (3, 2, True),
                                                             (2, 1, True)])
def test_condconv_convolves_each_example_with_its_mixed_kernel(
    kernel_size, strides, depthwise):
  rng = np.random.default_rng(kernel_size * 10 + strides)
  x = rng.normal(size=(3, 9, 7, 4)).astype(np.float32)
  routing = rng.uniform(size=(3, 5)).astype(np.float32)
  layer = condconv.CondConv(6, kernel_size, num_experts=5, strides=strides,
                            depthwise=depthwise)
  eager = layer([x, routing]).numpy()
  expected = per_example_reference(x, routing, layer.kernel.numpy(),
                                   layer.kernel_shape, strides, depthwise)
  assert eager.shape == expected.shape
  np.testing.assert_allclose(eager, expected, atol=1e-4)
  compiled = tf.function(lambda a, b: layer([a, b]), jit_compile=True)
  np.testing.assert_allclose(compiled(x, routing), expected, atol=1e-4)
  # An unknown batch size takes the tap-by-tap path.
  unknown_batch = tf.function(
      lambda a, b: layer([a, b]), input_signature=[
          tf.TensorSpec((None,) + x.shape[1:]),
          tf.TensorSpec((None, 5))
      ])
  np.testing.assert_allclose(unknown_batch(x, routing), expected, atol=1e-4)


def test_condconv_block_trains_under_xla():
  # The first CondConv block of the tiny CondConv-B0 (the whole model
  # compiles too, but takes ~40 s of XLA on two CPU cores).
  spec = resolve_spec("efficientnet-condconv-b0-4e", width_coefficient=0.1,
                      depth_coefficient=0.5)
  block = next(b for b in spec.block_sequence() if b.condconv)
  inputs = keras.Input((8, 8, block.input_filters))
  x = blocks.efficientnet_block(inputs, block, name="block5a",
                                survival_prob=0.8, num_experts=4)
  x = keras.layers.GlobalAveragePooling2D()(x)
  model = keras.Model(inputs, keras.layers.Dense(3)(x))
  images = tf.random.normal((4, 8, 8, block.input_filters))
  optimizer = keras.optimizers.SGD(0.1)
  labels = tf.constant([0, 1, 2, 1])

  @tf.function(jit_compile=True)
  def step():
    with tf.GradientTape() as tape:
      logits = model(images, training=True)
      loss = tf.reduce_mean(
          tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss, grads

  experts = model.get_layer("block5a_expand_conv").kernel
  before = experts.numpy()
  loss, grads = step()
  assert np.isfinite(loss.numpy())
  assert all(np.all(np.isfinite(g.numpy())) for g in grads)
  assert not np.allclose(experts.numpy(), before)
