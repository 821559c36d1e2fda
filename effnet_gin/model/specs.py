"""EfficientNet architecture as data: the B0 block table, the variant table and
the pure rounding rules that scale one into the other.

Numbers follow Tan & Le, "EfficientNet: Rethinking Model Scaling for
Convolutional Neural Networks" (ICML 2019, arXiv 1905.11946) and the reference
TPU implementation (tensorflow/tpu, models/official/efficientnet), including
its EfficientNet-Lite variants.

Nothing here builds tensors; `efficientnet.py` turns a `ModelSpec` into a Keras
model and `flops.py` prices the same spec analytically.
"""
import dataclasses
import math
from typing import Mapping, Tuple

# Filters are rounded to multiples of this (the reference's `depth_divisor`).
FILTER_DIVISOR = 8

# Input normalisations, as (mean_rgb, stddev_rgb) on the 0-255 scale.
INPUT_NORMALIZATIONS: Mapping[str, Tuple[Tuple[float, ...],
                                         Tuple[float, ...]]] = {
    "imagenet": ((0.485 * 255, 0.456 * 255, 0.406 * 255),
                 (0.229 * 255, 0.224 * 255, 0.225 * 255)),
    # EfficientNet-Lite maps 0..255 to about -1..1 so it quantises well.
    "lite": ((127.0, 127.0, 127.0), (128.0, 128.0, 128.0)),
    # AdvProp checkpoints were trained on 0..255 mapped to exactly [-1, 1]
    # (the reference's `advprop_preprocessing`).
    "advprop": ((127.5, 127.5, 127.5), (127.5, 127.5, 127.5)),
}

ACTIVATIONS = ("swish", "relu6")


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One stage of MBConv blocks: `repeats` blocks sharing a shape.

  Only the first block of a stage uses `strides` and `input_filters`; the
  repeats that follow have stride 1 and take `output_filters` in.

  Attributes:
    repeats: number of blocks in the stage (before depth scaling).
    kernel_size: depthwise kernel size.
    strides: stride of the stage's first block.
    expand_ratio: width of the inverted bottleneck relative to its input.
    input_filters: channels into the stage (before width scaling).
    output_filters: channels out of the stage (before width scaling).
    se_ratio: squeeze-excite reduction relative to the block's input
      channels; 0 disables squeeze-excite.
  """
  repeats: int
  kernel_size: int
  strides: int
  expand_ratio: int
  input_filters: int
  output_filters: int
  se_ratio: float = 0.25


# EfficientNet-B0 (paper Table 1), the base every variant scales.
B0_BLOCKS: Tuple[BlockSpec, ...] = (
    BlockSpec(1, 3, 1, 1, 32, 16),
    BlockSpec(2, 3, 2, 6, 16, 24),
    BlockSpec(2, 5, 2, 6, 24, 40),
    BlockSpec(3, 3, 2, 6, 40, 80),
    BlockSpec(3, 5, 1, 6, 80, 112),
    BlockSpec(4, 5, 2, 6, 112, 192),
    BlockSpec(1, 3, 1, 6, 192, 320),
)

STEM_FILTERS = 32
HEAD_FILTERS = 1280


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A network variant: compound-scaling coefficients plus the Lite switches.

  Attributes:
    width_coefficient: multiplier on every layer's channels.
    depth_coefficient: multiplier on every stage's block count.
    resolution: default input height and width in pixels.
    dropout_rate: dropout before the classifier.
    survival_prob: survival probability of the last block under stochastic
      depth (earlier blocks survive more often); 1 disables it.
    activation: "swish" (B-models) or "relu6" (Lite).
    use_se: whether blocks carry squeeze-excite.
    fix_stem_and_head: keep the stem and head widths unscaled.
    fix_first_last_repeats: keep the block counts of the first and last
      stage unscaled.
    input_normalization: key into `INPUT_NORMALIZATIONS`.
    blocks: the unscaled stage table.
  """
  width_coefficient: float
  depth_coefficient: float
  resolution: int
  dropout_rate: float
  survival_prob: float = 0.8
  activation: str = "swish"
  use_se: bool = True
  fix_stem_and_head: bool = False
  fix_first_last_repeats: bool = False
  input_normalization: str = "imagenet"
  blocks: Tuple[BlockSpec, ...] = B0_BLOCKS

  def __post_init__(self):
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"activation must be one of {ACTIVATIONS}, got "
                       f"{self.activation!r}.")
    if self.input_normalization not in INPUT_NORMALIZATIONS:
      raise ValueError(
          f"input_normalization must be one of "
          f"{sorted(INPUT_NORMALIZATIONS)}, got {self.input_normalization!r}.")
    for field in ("width_coefficient", "depth_coefficient", "resolution"):
      if getattr(self, field) <= 0:
        raise ValueError(f"{field} must be > 0, got {getattr(self, field)!r}.")
    if not 0 <= self.dropout_rate < 1:
      raise ValueError(
          f"dropout_rate must be in [0, 1), got {self.dropout_rate!r}.")
    if not 0 < self.survival_prob <= 1:
      raise ValueError(
          f"survival_prob must be in (0, 1], got {self.survival_prob!r}.")

  @property
  def stem_filters(self) -> int:
    """Channels of the stem convolution."""
    return self.round_filters(STEM_FILTERS, fixed=self.fix_stem_and_head)

  @property
  def head_filters(self) -> int:
    """Channels of the 1x1 head convolution before pooling."""
    return self.round_filters(HEAD_FILTERS, fixed=self.fix_stem_and_head)

  def round_filters(self, filters: int, fixed: bool = False) -> int:
    """`round_filters` with this variant's width, or unscaled if `fixed`."""
    return filters if fixed else round_filters(filters, self.width_coefficient)

  def scaled_blocks(self) -> Tuple[BlockSpec, ...]:
    """The stage table with widths and repeats scaled for this variant."""
    last = len(self.blocks) - 1
    scaled = []
    for index, block in enumerate(self.blocks):
      fixed_repeats = self.fix_first_last_repeats and index in (0, last)
      scaled.append(dataclasses.replace(
          block,
          repeats=(block.repeats if fixed_repeats else
                   round_repeats(block.repeats, self.depth_coefficient)),
          input_filters=self.round_filters(block.input_filters),
          output_filters=self.round_filters(block.output_filters),
          se_ratio=block.se_ratio if self.use_se else 0.0))
    return tuple(scaled)

  @property
  def num_blocks(self) -> int:
    """Total MBConv blocks after depth scaling."""
    return sum(block.repeats for block in self.scaled_blocks())


def round_filters(filters: int, width_coefficient: float,
                  divisor: int = FILTER_DIVISOR) -> int:
  """Scales a channel count and rounds it to a multiple of `divisor`.

  Rounds to nearest, but never below `divisor` and never more than 10% below
  the exact scaled width.

  Args:
    filters: unscaled channel count.
    width_coefficient: width multiplier.
    divisor: channel counts are multiples of this.

  Returns:
    The scaled, rounded channel count.
  """
  scaled = filters * width_coefficient
  rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * scaled:
    rounded += divisor
  return int(rounded)


def round_repeats(repeats: int, depth_coefficient: float) -> int:
  """Scales a stage's block count, rounding up."""
  return int(math.ceil(depth_coefficient * repeats))


def _lite(width, depth, resolution, dropout_rate):
  return ModelSpec(width, depth, resolution, dropout_rate,
                   activation="relu6", use_se=False, fix_stem_and_head=True,
                   fix_first_last_repeats=True, input_normalization="lite")


VARIANTS: Mapping[str, ModelSpec] = {
    # name: (width, depth, resolution, dropout)
    "efficientnet-b0": ModelSpec(1.0, 1.0, 224, 0.2),
    "efficientnet-b1": ModelSpec(1.0, 1.1, 240, 0.2),
    "efficientnet-b2": ModelSpec(1.1, 1.2, 260, 0.3),
    "efficientnet-b3": ModelSpec(1.2, 1.4, 300, 0.3),
    "efficientnet-b4": ModelSpec(1.4, 1.8, 380, 0.4),
    "efficientnet-b5": ModelSpec(1.6, 2.2, 456, 0.4),
    "efficientnet-b6": ModelSpec(1.8, 2.6, 528, 0.5),
    "efficientnet-b7": ModelSpec(2.0, 3.1, 600, 0.5),
    "efficientnet-b8": ModelSpec(2.2, 3.6, 672, 0.5),
    "efficientnet-l2": ModelSpec(4.3, 5.3, 800, 0.5),
    "efficientnet-lite0": _lite(1.0, 1.0, 224, 0.2),
    "efficientnet-lite1": _lite(1.0, 1.1, 240, 0.2),
    "efficientnet-lite2": _lite(1.1, 1.2, 260, 0.3),
    "efficientnet-lite3": _lite(1.2, 1.4, 280, 0.3),
    "efficientnet-lite4": _lite(1.4, 1.8, 300, 0.3),
}


def get_variant(name: str) -> ModelSpec:
  """Looks up a variant by name, e.g. "efficientnet-b0".

  Args:
    name: a key of `VARIANTS`.

  Returns:
    The variant's `ModelSpec`.

  Raises:
    ValueError: if `name` is not a known variant.
  """
  try:
    return VARIANTS[name]
  except (KeyError, TypeError):
    raise ValueError(f"Unknown EfficientNet variant {name!r}; known variants: "
                     f"{', '.join(VARIANTS)}.") from None


def default_resolution(name: str) -> int:
  """The input size (height = width, pixels) a variant was designed for."""
  return get_variant(name).resolution
