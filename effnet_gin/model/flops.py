"""Multiply-add ("FLOPs" in the paper) and parameter counts of EfficientNets.

Two ways to the same numbers: `count_flops(model)` walks a built Keras
model's convolution and dense layers; `count_flops("efficientnet-b7")` prices
the variant's spec analytically, with no model built, which is what makes the
billion-parameter variants (l2) countable on a laptop. Tests hold the two
paths equal.

Counted: convolutions (standard, depthwise, the squeeze-excite 1x1s) and the
classifier, one multiply-add per kernel weight per output position. Batch
norm, activations, pooling and element-wise products are left out, as in the
paper's Table 2.
"""
import math
from typing import NamedTuple, Optional, Sequence, Union

import keras

from effnet_gin.model import efficientnet
from effnet_gin.model import specs


class Cost(NamedTuple):
  """Trainable parameters and multiply-adds of one forward pass (1 image)."""
  params: int
  flops: int


def count_flops(model_or_variant: Union[keras.Model, str, specs.ModelSpec],
                *, resolution: Optional[int] = None,
                num_classes: int = 1000) -> int:
  """Multiply-adds of one image's forward pass.

  Args:
    model_or_variant: a built Keras model (its input size is used), a
      variant name such as "efficientnet-b0", or a `ModelSpec`.
    resolution: input size for a variant or spec; defaults to its own.
      Ignored for a model.
    num_classes: classifier width for a variant or spec. Ignored for a
      model.

  Returns:
    The multiply-add count.

  Raises:
    ValueError: for an unknown variant name, a resolution < 1 or
      num_classes < 1.
  """
  if isinstance(model_or_variant, keras.Model):
    return _model_flops(model_or_variant)
  return spec_cost(model_or_variant, resolution=resolution,
                   num_classes=num_classes).flops


def count_params(variant: Union[str, specs.ModelSpec], *,
                 num_classes: int = 1000) -> int:
  """Trainable parameters of a variant, computed from its spec."""
  return spec_cost(variant, num_classes=num_classes).params


def _model_flops(model: keras.Model) -> int:
  total = 0
  for layer in model.layers:
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
      # Kernel [kh, kw, in, out] (or [kh, kw, in, multiplier] for depthwise):
      # every weight is used once per output position.
      _, height, width, _ = layer.output.shape
      total += height * width * math.prod(layer.kernel.shape)
    elif isinstance(layer, keras.layers.Dense):
      total += math.prod(layer.kernel.shape)
  return int(total)


def _conv(height, width, kernel_size, in_filters, out_filters,
          depthwise=False):
  weights = kernel_size * kernel_size * in_filters * (
      1 if depthwise else out_filters)
  return Cost(weights, height * width * weights)


def _batch_norm(filters):
  return Cost(2 * filters, 0)  # gamma and beta.


def _sum(*costs):
  return Cost(sum(c.params for c in costs), sum(c.flops for c in costs))


def _mbconv(size, in_filters, block, strides):
  """Cost of one MBConv block; returns (cost, output spatial size)."""
  expanded = in_filters * block.expand_ratio
  out_size = math.ceil(size / strides)  # "same" padding.
  parts = []
  if block.expand_ratio != 1:
    parts += [_conv(size, size, 1, in_filters, expanded),
              _batch_norm(expanded)]
  parts += [_conv(out_size, out_size, block.kernel_size, expanded, expanded,
                  depthwise=True), _batch_norm(expanded)]
  if block.se_ratio > 0:
    reduced = max(1, int(in_filters * block.se_ratio))
    parts += [_conv(1, 1, 1, expanded, reduced), Cost(reduced, 0),
              _conv(1, 1, 1, reduced, expanded), Cost(expanded, 0)]
  parts += [_conv(out_size, out_size, 1, expanded, block.output_filters),
            _batch_norm(block.output_filters)]
  return _sum(*parts), out_size


def spec_cost(variant: Union[str, specs.ModelSpec], *,
              resolution: Optional[int] = None,
              num_classes: int = 1000) -> Cost:
  """Parameters and multiply-adds of a variant with a classifier, analytic.

  Mirrors the layers `efficientnet.build_model` creates.

  Args:
    variant: a variant name or a `ModelSpec`.
    resolution: input size; defaults to the variant's.
    num_classes: classifier width.

  Returns:
    The `Cost` of one image's forward pass.

  Raises:
    ValueError: for an unknown variant name, a resolution < 1 or
      num_classes < 1.
  """
  spec = (efficientnet.resolve_spec(variant) if isinstance(variant, str)
          else variant)
  resolution = spec.resolution if resolution is None else resolution
  if resolution < 1:
    raise ValueError(f"resolution must be >= 1, got {resolution!r}.")
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes!r}.")
  size = math.ceil(resolution / 2)
  parts = [_conv(size, size, 3, 3, spec.stem_filters),
           _batch_norm(spec.stem_filters)]
  filters = spec.stem_filters
  for block in spec.scaled_blocks():
    for repeat in range(block.repeats):
      cost, size = _mbconv(size, filters, block,
                           block.strides if repeat == 0 else 1)
      parts.append(cost)
      filters = block.output_filters
  parts += [_conv(size, size, 1, filters, spec.head_filters),
            _batch_norm(spec.head_filters),
            Cost(spec.head_filters * num_classes + num_classes,
                 spec.head_filters * num_classes)]
  return _sum(*parts)


def cost_table(variants: Sequence[str], *, num_classes: int = 1000,
               resolution: Optional[int] = None) -> str:
  """A printable table of variants' resolution, parameters and FLOPs.

  Args:
    variants: variant names.
    num_classes: classifier width.
    resolution: input size for every row; defaults to each variant's own.

  Returns:
    The table, one line per variant plus a header.

  Raises:
    ValueError: for an unknown variant name or a bad size.
  """
  lines = [f"{'variant':<20} {'resolution':>10} {'params':>13} "
           f"{'FLOPs (madds)':>16}"]
  for name in variants:
    size = resolution or specs.default_resolution(name)
    cost = spec_cost(name, resolution=size, num_classes=num_classes)
    lines.append(f"{name:<20} {size:>10} {cost.params:>13,} "
                 f"{cost.flops / 1e9:>15.3f}B")
  return "\n".join(lines)
