"""EfficientNet architecture as data: the B0 block table, the variant table and
the pure rounding rules that scale one into the other.

Numbers follow Tan & Le, "EfficientNet: Rethinking Model Scaling for
Convolutional Neural Networks" (ICML 2019, arXiv 1905.11946) and the reference
TPU implementation (tensorflow/tpu, models/official/efficientnet): its whole
model zoo, i.e. B0-B8 and L2, EfficientNet-Lite, EfficientNet-EdgeTPU,
EfficientNet-CondConv and EfficientNet-X / -H (EfficientNetV2: specs_v2.py).
The newer families' stage tables are written as the reference writes them,
as block strings (`parse_block`), to be checked against it line by line.

Nothing here builds tensors; `efficientnet.py` turns a `ModelSpec` into a Keras
model (block by block, from `ModelSpec.block_sequence`) and `flops.py` prices
the same sequence analytically.
"""
import dataclasses
import math
from typing import Mapping, Optional, Tuple

# Re-exported: the block vocabulary lives in block_specs.py.
from effnet_gin.model import block_specs
from effnet_gin.model import specs_v2
# pylint: disable=unused-import
from effnet_gin.model.block_specs import ACTIVATIONS
from effnet_gin.model.block_specs import Block
from effnet_gin.model.block_specs import BlockSpec
from effnet_gin.model.block_specs import CONV_TYPES
from effnet_gin.model.block_specs import parse_block
# pylint: enable=unused-import

# Filters are rounded to multiples of this (the reference's `depth_divisor`).
FILTER_DIVISOR = 8

# Input normalisations, as (mean_rgb, stddev_rgb) on the 0-255 scale.
INPUT_NORMALIZATIONS: Mapping[str, Tuple[Tuple[float, ...], Tuple[
    float, ...]]] = {
        "imagenet": ((0.485 * 255, 0.456 * 255,
                      0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255)
                    ),
        # EfficientNet-Lite maps 0..255 to about -1..1 so it quantises well.
        "lite": ((127.0, 127.0, 127.0), (128.0, 128.0, 128.0)),
        # AdvProp checkpoints were trained on 0..255 mapped to exactly [-1, 1]
        # (the reference's `advprop_preprocessing`).
        "advprop": ((127.5, 127.5, 127.5), (127.5, 127.5, 127.5)),
        # EfficientNetV2-S/M/L/XL: x / 128 - 1 (automl, keras.applications).
        "v2": ((128.0, 128.0, 128.0), (128.0, 128.0, 128.0)),
    }

# How images are resized in the input pipeline and exports (names of
# effnet_gin.data's resize methods): TF1 bicubic, or TF1 bilinear, which the
# reference trains Lite and EdgeTPU with (easier post-quantisation).
RESIZE_METHODS = ("tf1_bicubic", "tf1_bilinear")

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
    se_coefficient: multiplier on every squeeze-excite width (EfficientNet-X
      widens B0's by up to 4).
    condconv_experts: kernels mixed by each CondConv convolution (the
      stages marked `condconv`); 0 for a variant without CondConv.
    local_pooling: pool the head with an average pooling over the whole
      feature map (EdgeTPU: the op the Edge TPU compiler maps) instead of a
      global mean; the numbers are the same.
    num_classes: the classifier width the variant is published with (1001
      for EdgeTPU: class 0 is the background class).
    resize_method: the resize the variant is trained, evaluated and
      exported with, one of `RESIZE_METHODS`.
    stem_base_filters: stem channels before width scaling (EfficientNetV2:
      its first stage's input width).
    train_resolution: training image size; None: `resolution` (V2's is less).
    width_floor: rounded widths are never below this fraction of the exact
      scaled width (V1); EfficientNetV2 rounds to the nearest only (0).
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
  se_coefficient: float = 1.0
  condconv_experts: int = 0
  local_pooling: bool = False
  num_classes: int = 1000
  resize_method: str = "tf1_bicubic"
  stem_base_filters: int = STEM_FILTERS
  train_resolution: Optional[int] = None
  width_floor: float = 0.9

  def __post_init__(self):
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"activation must be one of {ACTIVATIONS}, got "
                       f"{self.activation!r}.")
    if self.input_normalization not in INPUT_NORMALIZATIONS:
      raise ValueError(
          f"input_normalization must be one of "
          f"{sorted(INPUT_NORMALIZATIONS)}, got {self.input_normalization!r}.")
    for field in ("width_coefficient", "depth_coefficient", "resolution",
                  "stem_base_filters"):
      if getattr(self, field) <= 0:
        raise ValueError(f"{field} must be > 0, got {getattr(self, field)!r}.")
    if not 0 <= self.dropout_rate < 1:
      raise ValueError(
          f"dropout_rate must be in [0, 1), got {self.dropout_rate!r}.")
    if not 0 < self.survival_prob <= 1:
      raise ValueError(
          f"survival_prob must be in (0, 1], got {self.survival_prob!r}.")
    if self.resize_method not in RESIZE_METHODS:
      raise ValueError(f"resize_method must be one of {RESIZE_METHODS}, got "
                       f"{self.resize_method!r}.")
    if any(b.condconv for b in self.blocks) and self.condconv_experts < 1:
      raise ValueError("CondConv stages need condconv_experts >= 1, got "
                       f"{self.condconv_experts!r}.")

  @property
  def stem_filters(self) -> int:
    """Channels of the stem convolution."""
    return self.round_filters(self.stem_base_filters,
                              fixed=self.fix_stem_and_head)

  @property
  def head_filters(self) -> int:
    """Channels of the 1x1 head convolution before pooling."""
    return self.round_filters(HEAD_FILTERS, fixed=self.fix_stem_and_head)

  def round_filters(self, filters: int, fixed: bool = False) -> int:
    """`round_filters` with this variant's width, or unscaled if `fixed`."""
    return filters if fixed else round_filters(filters, self.width_coefficient,
                                               floor=self.width_floor)

  def scaled_blocks(self) -> Tuple[BlockSpec, ...]:
    """The stage table with widths and repeats scaled for this variant."""
    last = len(self.blocks) - 1
    scaled = []
    for index, block in enumerate(self.blocks):
      fixed_repeats = self.fix_first_last_repeats and index in (0, last)
      scaled.append(
          dataclasses.replace(
              block, repeats=(block.repeats if fixed_repeats else round_repeats(
                  block.repeats, self.depth_coefficient)),
              input_filters=self.round_filters(block.input_filters),
              output_filters=self.round_filters(block.output_filters),
              se_ratio=block.se_ratio if self.use_se else 0.0))
    return tuple(scaled)

  @property
  def num_blocks(self) -> int:
    """Total MBConv blocks after depth scaling."""
    return sum(block.repeats for block in self.scaled_blocks())

  def block_sequence(self) -> Tuple[Block, ...]:
    """Every block of the network in order (see `block_specs.sequence`)."""
    return block_specs.sequence(self)


def round_filters(filters: int, width_coefficient: float,
                  divisor: int = FILTER_DIVISOR, floor: float = 0.9) -> int:
  """Scales a channel count and rounds it to a multiple of `divisor`.

  Rounds to nearest, but never below `divisor` nor below `floor` times the
  exact scaled width.

  Args:
    filters: unscaled channel count.
    width_coefficient: width multiplier.
    divisor: channel counts are multiples of this.
    floor: fraction of the exact width the result may not fall below.

  Returns:
    The scaled, rounded channel count.
  """
  scaled = filters * width_coefficient
  rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  if rounded < floor * scaled:
    rounded += divisor
  return int(rounded)


def round_repeats(repeats: int, depth_coefficient: float) -> int:
  """Scales a stage's block count, rounding up."""
  return int(math.ceil(depth_coefficient * repeats))


def _lite(width, depth, resolution, dropout_rate):
  return ModelSpec(width, depth, resolution, dropout_rate, activation="relu6",
                   use_se=False, fix_stem_and_head=True,
                   fix_first_last_repeats=True, input_normalization="lite",
                   resize_method="tf1_bilinear")


EDGETPU_BLOCKS = tuple(
    map(parse_block, (
        "r1_k3_s11_e4_i24_o24_c1_noskip",
        "r2_k3_s22_e8_i24_o32_c1",
        "r4_k3_s22_e8_i32_o48_c1",
        "r5_k5_s22_e8_i48_o96",
        "r4_k5_s11_e8_i96_o144",
        "r2_k5_s22_e8_i144_o192",
    )))

CONDCONV_BLOCKS = tuple(
    map(parse_block, (
        "r1_k3_s11_e1_i32_o16_se0.25",
        "r2_k3_s22_e6_i16_o24_se0.25",
        "r2_k5_s22_e6_i24_o40_se0.25",
        "r3_k3_s22_e6_i40_o80_se0.25",
        "r3_k5_s11_e6_i80_o112_se0.25_cc",
        "r4_k5_s22_e6_i112_o192_se0.25_cc",
        "r1_k3_s11_e6_i192_o320_se0.25_cc",
    )))

# EfficientNet-X (version 1); -H (version 2) expands stages 2-4 by 4, not 6.
X_BLOCKS = tuple(
    map(parse_block, (
        "r1_k3_s11_e1_i32_o16_se0.25_d1_a0",
        "r2_k3_s22_e6_i16_o24_se0.25_f1_d2_a1",
        "r2_k5_s22_e6_i24_o40_se0.25_f1_a1",
        "r3_k3_s22_e6_i40_o80_se0.25_a0",
        "r3_k5_s11_e6_i80_o112_se0.25_a0",
        "r4_k5_s22_e6_i112_o192_se0.25_a0",
        "r1_k3_s11_e6_i192_o320_se0.25_a0",
    )))
H_BLOCKS = X_BLOCKS[:1] + tuple(
    dataclasses.replace(block, expand_ratio=4)
    for block in X_BLOCKS[1:4]) + X_BLOCKS[4:]


def _edgetpu(width, depth, resolution, dropout_rate):
  return ModelSpec(width, depth, resolution, dropout_rate, activation="relu",
                   use_se=False, input_normalization="lite",
                   blocks=EDGETPU_BLOCKS, local_pooling=True, num_classes=1001,
                   resize_method="tf1_bilinear")


def _condconv(depth, experts):
  return ModelSpec(1.0, depth, 224, 0.25, input_normalization="lite",
                   blocks=CONDCONV_BLOCKS, condconv_experts=experts)


def _x(width, depth, resolution, dropout_rate, se_coefficient, blocks=X_BLOCKS):
  return ModelSpec(width, depth, resolution, dropout_rate, activation="relu",
                   blocks=blocks, se_coefficient=se_coefficient)


def _h(width, depth, resolution, dropout_rate):
  return _x(width, depth, resolution, dropout_rate, 1, blocks=H_BLOCKS)


FAMILIES: Mapping[str, Tuple[str, ...]] = {
    "EfficientNet":
        tuple(f"efficientnet-b{i}" for i in range(9)) + ("efficientnet-l2",),
    "EfficientNet-Lite":
        tuple(f"efficientnet-lite{i}" for i in range(5)),
    "EfficientNet-EdgeTPU":
        tuple(f"efficientnet-edgetpu-{size}" for size in "SML"),
    "EfficientNet-CondConv":
        ("efficientnet-condconv-b0-4e", "efficientnet-condconv-b0-8e",
         "efficientnet-condconv-b0-8e-depth"),
    "EfficientNet-X":
        tuple(f"efficientnet-x{kind}-b{i}" for kind in ("", "-tpu", "-gpu")
              for i in range(8)),
    "EfficientNet-H":
        tuple(f"efficientnet-h{kind}-b{i}" for kind in ("", "-tpu")
              for i in range(5, 8)),
    "EfficientNetV2":
        tuple(specs_v2.V2_VARIANTS),
}

VARIANTS: Mapping[str, ModelSpec] = {
    # name: (width, depth, resolution, dropout[, se_coefficient])
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
    "efficientnet-edgetpu-S": _edgetpu(1.0, 1.0, 224, 0.2),
    "efficientnet-edgetpu-M": _edgetpu(1.0, 1.1, 240, 0.2),
    "efficientnet-edgetpu-L": _edgetpu(1.2, 1.4, 300, 0.3),
    "efficientnet-condconv-b0-4e": _condconv(1.0, 4),
    "efficientnet-condconv-b0-8e": _condconv(1.0, 8),
    "efficientnet-condconv-b0-8e-depth": _condconv(1.1, 8),
    "efficientnet-x-b0": _x(1.0, 1.0, 224, 0.2, 4),
    "efficientnet-x-b1": _x(1.0, 1.1, 240, 0.2, 2),
    "efficientnet-x-b2": _x(1.1, 1.2, 260, 0.3, 1),
    "efficientnet-x-b3": _x(1.2, 1.4, 300, 0.3, 1),
    "efficientnet-x-b4": _x(1.4, 1.8, 380, 0.4, 1),
    "efficientnet-x-b5": _x(1.6, 2.2, 456, 0.4, 1),
    "efficientnet-x-b6": _x(1.8, 2.6, 528, 0.5, 1),
    "efficientnet-x-b7": _x(2.0, 3.1, 600, 0.5, 1),
    "efficientnet-x-tpu-b0": _x(1.0, 1.0, 224, 0.2, 4),
    "efficientnet-x-tpu-b1": _x(1.05, 1.09, 229, 0.2, 2),
    "efficientnet-x-tpu-b2": _x(1.13, 1.29, 244, 0.3, 1),
    "efficientnet-x-tpu-b3": _x(1.27, 1.62, 263, 0.3, 1),
    "efficientnet-x-tpu-b4": _x(1.54, 2.38, 299, 0.4, 1),
    "efficientnet-x-tpu-b5": _x(1.96, 2.76, 332, 0.4, 1),
    "efficientnet-x-tpu-b6": _x(2.75, 3.01, 328, 0.5, 1),
    "efficientnet-x-tpu-b7": _x(3.26, 3.44, 350, 0.5, 1),
    "efficientnet-x-gpu-b0": _x(1.0, 1.0, 224, 0.2, 4),
    "efficientnet-x-gpu-b1": _x(1.05, 1.09, 229, 0.2, 2),
    "efficientnet-x-gpu-b2": _x(1.13, 1.24, 237, 0.3, 1),
    "efficientnet-x-gpu-b3": _x(1.31, 1.63, 255, 0.3, 1),
    "efficientnet-x-gpu-b4": _x(1.63, 2.4, 282, 0.4, 1),
    "efficientnet-x-gpu-b5": _x(1.94, 3.29, 306, 0.4, 1),
    "efficientnet-x-gpu-b6": _x(2.25, 4.28, 328, 0.5, 1),
    "efficientnet-x-gpu-b7": _x(2.58, 5.46, 350, 0.5, 1),
    "efficientnet-h-b5": _h(1.92, 2.2, 456, 0.4),
    "efficientnet-h-b6": _h(2.16, 2.6, 528, 0.5),
    "efficientnet-h-b7": _h(2.4, 3.1, 600, 0.5),
    "efficientnet-h-tpu-b5": _h(2.3, 2.76, 332, 0.4),
    "efficientnet-h-tpu-b6": _h(3.0, 3.01, 328, 0.5),
    "efficientnet-h-tpu-b7": _h(3.6, 3.44, 350, 0.5),
    **{
        n: ModelSpec(**specs_v2.spec_fields(n)) for n in specs_v2.V2_VARIANTS
    },
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
    raise ValueError(f"Unknown EfficientNet variant {name!r}; the known "
                     f"families and their variants are "
                     f"{describe_families()}.") from None


def describe_families() -> str:
  """Every family and its variant names, for messages."""
  return "; ".join(
      f"{family}: {', '.join(names)}" for family, names in FAMILIES.items())


def default_resize_method(name: str) -> str:
  """The resize a variant is trained, evaluated and exported with."""
  return get_variant(name).resize_method


def default_resolution(name: str) -> int:
  """The input size (pixels) a variant is evaluated at, as designed."""
  return get_variant(name).resolution


def default_train_resolution(name: str) -> int:
  """The image size a variant is trained at (its eval size for V1)."""
  return get_variant(name).train_resolution or default_resolution(name)
