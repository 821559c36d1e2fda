"""Multiply-add ("FLOPs" in the paper) and parameter counts of EfficientNets.

Two ways to the same numbers: `count_flops(model)` walks a built Keras
model's convolution and dense layers; `count_flops("efficientnet-b7")` prices
the variant's spec analytically, with no model built, which is what makes the
billion-parameter variants (l2) countable on a laptop. Tests hold the two
paths equal.

Counted: convolutions (standard, depthwise, the squeeze-excite 1x1s) and the
classifier, one multiply-add per kernel weight per output position; a
CondConv convolution adds the mixing of its experts' kernels (one
multiply-add per expert weight) and its block's routing layer. Batch
norm, activations, pooling and element-wise products are left out, as in the
paper's Table 2.
"""
import math
from typing import NamedTuple, Optional, Sequence, Union

import keras

from effnet_gin.model import condconv
from effnet_gin.model import efficientnet
from effnet_gin.model import specs


class Cost(NamedTuple):
  """Costs of one forward pass (1 image).

  Attributes:
    params: trainable parameters.
    flops: multiply-adds.
    variables: every model variable, the batch-norm moving statistics too.
  """
  params: int
  flops: int
  variables: int = 0


def count_flops(model_or_variant: Union[keras.Model, str, specs.ModelSpec], *,
                resolution: Optional[int] = None,
                num_classes: Optional[int] = None) -> int:
  """Multiply-adds of one image's forward pass.

  Args:
    model_or_variant: a built Keras model (its input size is used), a
      variant name such as "efficientnet-b0", or a `ModelSpec`.
    resolution: input size for a variant or spec; defaults to its own.
      Ignored for a model.
    num_classes: classifier width for a variant or spec; defaults to its
      own. Ignored for a model.

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
                 num_classes: Optional[int] = None) -> int:
  """Trainable parameters of a variant (its own class count by default)."""
  return spec_cost(variant, num_classes=num_classes).params


def _model_flops(model: keras.Model) -> int:
  total = 0
  for layer in model.layers:
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
      # Kernel [kh, kw, in, out] (or [kh, kw, in, multiplier] for depthwise):
      # every weight is used once per output position.
      _, height, width, _ = layer.output.shape
      total += height * width * math.prod(layer.kernel.shape)
    elif isinstance(layer, condconv.CondConv):
      _, height, width, _ = layer.output.shape
      total += (height * width + layer.num_experts) * math.prod(
          layer.kernel_shape)
    elif isinstance(layer, keras.layers.Dense):
      total += math.prod(layer.kernel.shape)
  return int(total)


def _conv(height, width, kernel_size, in_filters, out_filters, depthwise=False,
          experts=0):
  """A convolution; with `experts`, a CondConv one (kernels mixed first)."""
  weights = kernel_size * kernel_size * in_filters * (1 if depthwise else
                                                      out_filters)
  if experts:
    return Cost(experts * weights, (height * width + experts) * weights,
                experts * weights)
  return Cost(weights, height * width * weights, weights)


def _batch_norm(filters):
  return Cost(2 * filters, 0, 4 * filters)  # gamma, beta + moving stats.


def _dense(inputs, units):
  return Cost(inputs * units + units, inputs * units, inputs * units + units)


def _sum(*costs):
  return Cost(*(sum(c[i] for c in costs) for i in range(3)))


def _block(size, channels, block, experts):
  """Cost of one `specs.Block`; returns (cost, output spatial size)."""
  experts = experts if block.condconv else 0
  parts = [_dense(channels, experts)] if experts else []
  if block.space_to_depth:
    size = math.ceil(size / 2)
    parts += [
        _conv(size, size, 2, channels, block.input_filters),
        _batch_norm(block.input_filters)
    ]
  expanded, out_filters = block.expanded_filters, block.output_filters
  out_size = math.ceil(size / block.strides)  # "same" padding.
  if block.conv_type == "depthwise":
    if block.expand_ratio != 1:
      parts += [
          _conv(size, size, 1, channels, expanded, experts=experts),
          _batch_norm(expanded)
      ]
    parts += [
        _conv(out_size, out_size, block.kernel_size, expanded, expanded,
              depthwise=True, experts=experts),
        _batch_norm(expanded)
    ]
  elif block.expand_ratio != 1:
    parts += [
        _conv(out_size, out_size, block.kernel_size, channels, expanded,
              experts=experts),
        _batch_norm(expanded)
    ]
  if block.se_filters:
    reduced = block.se_filters
    parts += [
        _conv(1, 1, 1, expanded, reduced),
        Cost(reduced, 0, reduced),
        _conv(1, 1, 1, reduced, expanded),
        Cost(expanded, 0, expanded)
    ]
  # A fused block without expansion projects with its k x k convolution.
  project_kernel = (block.kernel_size if block.conv_type == "fused" and
                    block.expand_ratio == 1 else 1)
  parts += [
      _conv(out_size, out_size, project_kernel, expanded, out_filters,
            experts=experts),
      _batch_norm(out_filters)
  ]
  return _sum(*parts), out_size


def spec_cost(variant: Union[str, specs.ModelSpec], *,
              resolution: Optional[int] = None,
              num_classes: Optional[int] = None) -> Cost:
  """Parameters and multiply-adds of a variant with a classifier, analytic.

  Mirrors the layers `efficientnet.build_model` creates.

  Args:
    variant: a variant name or a `ModelSpec`.
    resolution: input size; defaults to the variant's.
    num_classes: classifier width; defaults to the variant's (1001 for
      EdgeTPU, else 1000).

  Returns:
    The `Cost` of one image's forward pass.

  Raises:
    ValueError: for an unknown variant name, a resolution < 1 or
      num_classes < 1.
  """
  spec = (efficientnet.resolve_spec(variant)
          if isinstance(variant, str) else variant)
  resolution = spec.resolution if resolution is None else resolution
  num_classes = spec.num_classes if num_classes is None else num_classes
  if resolution < 1:
    raise ValueError(f"resolution must be >= 1, got {resolution!r}.")
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes!r}.")
  size = math.ceil(resolution / 2)
  parts = [
      _conv(size, size, 3, 3, spec.stem_filters),
      _batch_norm(spec.stem_filters)
  ]
  filters = spec.stem_filters
  for block in spec.block_sequence():
    cost, size = _block(size, filters, block, spec.condconv_experts)
    parts.append(cost)
    filters = block.output_filters
  parts += [
      _conv(size, size, 1, filters, spec.head_filters),
      _batch_norm(spec.head_filters),
      _dense(spec.head_filters, num_classes)
  ]
  return _sum(*parts)


def cost_table(variants: Sequence[str], *, num_classes: Optional[int] = None,
               resolution: Optional[int] = None) -> str:
  """A printable table of variants' resolution, parameters and FLOPs.

  Args:
    variants: variant names.
    num_classes: classifier width; defaults to each variant's own.
    resolution: input size for every row; defaults to each variant's own.

  Returns:
    The table, one line per variant plus a header.

  Raises:
    ValueError: for an unknown variant name or a bad size.
  """
  lines = [
      f"{'variant':<34} {'resolution':>10} {'classes':>7} "
      f"{'params':>13} {'FLOPs (madds)':>16}"
  ]
  for name in variants:
    size = resolution or specs.default_resolution(name)
    classes = num_classes or specs.get_variant(name).num_classes
    cost = spec_cost(name, resolution=size, num_classes=classes)
    lines.append(f"{name:<34} {size:>10} {classes:>7} {cost.params:>13,} "
                 f"{cost.flops / 1e9:>15.3f}B")
  return "\n".join(lines)
