"""The reference's names for an effnet_gin model's variables.

The reference (tensorflow/tpu models/official/efficientnet) writes TF1
checkpoints whose variable names come from TF1 layer defaults; this module
derives each of them from the effnet_gin model's own layers, for every
block kind of the model zoo.
"""
import re

import keras

from effnet_gin.model import condconv

_BLOCK_LAYER = re.compile(r"^(block\d+[a-z]+)_(.+)$")
_STEM_AND_HEAD = {
    "stem_conv": "stem/conv2d",
    "stem_bn": "stem/{bn}",
    "top_conv": "head/conv2d",
    "top_bn": "head/{bn}",
    "predictions": "head/dense"
}


def reference_names(model, batch_norm="tpu_batch_normalization"):
  """Maps each variable path of an effnet_gin model to its reference name.

  Inside a block's scope TF1 numbers the layers of one kind in the order
  they are applied (`conv2d`, `conv2d_1`, ...), so the names depend on which
  parts the block has; the space-to-depth layers sit in their own
  `space2depth/` scope. CondConv layers are Keras layers, named when
  created and numbered over the whole network under `model/`: each CondConv
  block creates three `cond_conv2d_K` (the fused, expansion and projection
  convolution, whether used or not) and one `depthwise_cond_conv2d_K`.

  Args:
    model: an effnet_gin (or keras.applications) EfficientNet.
    batch_norm: the reference's batch-norm layer name
      ("tpu_batch_normalization" on TPU, else "batch_normalization").

  Returns:
    dict: variable path -> name without the `efficientnet-bN/` prefix, e.g.
    "block2a_expand_bn/gamma" -> "blocks_1/tpu_batch_normalization/gamma".

  Raises:
    ValueError: for a layer with weights the reference has no name for.
  """
  by_name = {layer.name: layer for layer in model.layers}
  blocks = []
  for name in by_name:
    match = _BLOCK_LAYER.match(name)
    if match and match.group(1) not in blocks:
      blocks.append(match.group(1))
  table = dict(_STEM_AND_HEAD)
  counters = {"cond_conv2d": 0, "depthwise_cond_conv2d": 0}
  # Blocks are numbered over the whole network, in creation order.
  for index, block in enumerate(blocks):
    parts = [part for part in _BLOCK_PARTS if f"{block}_{part}" in by_name]
    table.update(
        _block_reference_names(f"blocks_{index}", block, parts, by_name,
                               counters))
  names = {}
  for layer in model.layers:
    if not layer.weights:
      continue
    if layer.name not in table:
      raise ValueError(f"layer {layer.name!r} has no counterpart in the "
                       "reference's checkpoints")
    scope = table[layer.name].format(bn=batch_norm)
    for variable in layer.weights:
      weight = variable.path.rsplit("/", 1)[-1]
      if isinstance(layer, condconv.CondConv):
        weight = ("depthwise_condconv_kernel"
                  if layer.depthwise else "condconv_kernel")
      elif isinstance(layer, keras.layers.DepthwiseConv2D):
        weight = "depthwise_kernel"
      names[variable.path] = f"{scope}/{weight}"
  return names


# The parts of a block that hold weights, in the order they are applied.
_BLOCK_PARTS = ("space_to_depth_conv", "space_to_depth_bn", "routing",
                "expand_conv", "expand_bn", "dwconv", "bn", "se_reduce",
                "se_expand", "project_conv", "project_bn")


def _block_reference_names(scope, block, parts, layers, counters):
  """Reference names of one block's layers (see `reference_names`)."""
  table, convs, norms = {}, 0, 0
  condconv_base = None
  for part in parts:
    layer = layers[f"{block}_{part}"]
    if part.startswith("space_to_depth"):
      ref = "space2depth/" + ("conv2d" if part.endswith("conv") else "{bn}")
    elif part in ("routing", "se_reduce", "se_expand"):
      ref = {
          "routing": "dense",
          "se_reduce": "se/conv2d",
          "se_expand": "se/conv2d_1"
      }[part]
    elif isinstance(layer, condconv.CondConv):
      kind = "depthwise_cond_conv2d" if layer.depthwise else "cond_conv2d"
      if layer.depthwise:
        number = counters[kind]
        counters[kind] += 1
      else:
        if condconv_base is None:
          condconv_base = counters[kind]
          counters[kind] += 3
        number = condconv_base + (2 if part == "project_conv" else
                                  1 if layer.kernel_size == 1 else 0)
      ref = f"model/{scope}/{kind}" + (f"_{number}" if number else "")
      table[layer.name] = ref
      continue
    elif part == "dwconv":
      ref = "depthwise_conv2d"
    elif part.endswith("_bn") or part == "bn":
      ref = "{bn}" + (f"_{norms}" if norms else "")
      norms += 1
    else:
      ref = "conv2d" + (f"_{convs}" if convs else "")
      convs += 1
    table[layer.name] = f"{scope}/{ref}"
  return table
