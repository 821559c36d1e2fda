"""EfficientNetV2 as data: automl's stage tables and its variant table.

Numbers follow Tan & Le, "EfficientNetV2: Smaller Models and Faster
Training" (ICML 2021, arXiv 2104.00298) as google/automl writes them in
`efficientnetv2/effnetv2_configs.py`; keras.applications' EfficientNetV2B0-B3,
S, M and L build the same tables. The stage tables are kept in automl's
block-string dialect (`parse_v2_block`) so they can be compared with it line
by line; `specs.py` turns the rows of `V2_VARIANTS` into `ModelSpec`s.

Four things set V2 apart from V1 here, none of them a new block: the early
stages are Fused-MBConv ("fused" blocks, without squeeze-excite; at
expansion 1 a fused block's k x k convolution is its projection), the stem
is as wide as the first stage's input, widths round to the nearest multiple
of 8 without V1's "at most 10% below" correction (B3's 16 stays 16), and
every variant trains at a smaller image size than it is evaluated at.
"""
from typing import Any, Dict, Mapping, Tuple

from effnet_gin.model.block_specs import BlockSpec
from effnet_gin.model.block_specs import parse_block


def parse_v2_block(text: str) -> BlockSpec:
  """A stage from automl's V2 block string, e.g. "r2_k3_s1_e1_i24_o24_c1".

  automl's V2 dialect writes the stride once ("s2", not "s22") and marks a
  Fused-MBConv stage with "c1" (its `conv_type` 1), which the V1 reference
  dialect of `parse_block` calls "f1" ("c1" there is EdgeTPU's conv-only
  block).

  Args:
    text: the block string.

  Returns:
    The `BlockSpec`.

  Raises:
    ValueError: for an option `parse_block` rejects.
  """
  parts = []
  for part in text.split("_"):
    if len(part) == 2 and part[0] == "s" and part[1].isdigit():
      part = "s" + part[1] * 2
    elif part == "c1":
      part = "f1"
    parts.append(part)
  return parse_block("_".join(parts))


def _stages(*texts: str) -> Tuple[BlockSpec, ...]:
  return tuple(map(parse_v2_block, texts))


# B0-B3 scale this base as V1's B-models scale theirs.
BASE_BLOCKS = _stages(
    "r1_k3_s1_e1_i32_o16_c1",
    "r2_k3_s2_e4_i16_o32_c1",
    "r2_k3_s2_e4_i32_o48_c1",
    "r3_k3_s2_e4_i48_o96_se0.25",
    "r5_k3_s1_e6_i96_o112_se0.25",
    "r8_k3_s2_e6_i112_o192_se0.25",
)
S_BLOCKS = _stages(
    "r2_k3_s1_e1_i24_o24_c1",
    "r4_k3_s2_e4_i24_o48_c1",
    "r4_k3_s2_e4_i48_o64_c1",
    "r6_k3_s2_e4_i64_o128_se0.25",
    "r9_k3_s1_e6_i128_o160_se0.25",
    "r15_k3_s2_e6_i160_o256_se0.25",
)
M_BLOCKS = _stages(
    "r3_k3_s1_e1_i24_o24_c1",
    "r5_k3_s2_e4_i24_o48_c1",
    "r5_k3_s2_e4_i48_o80_c1",
    "r7_k3_s2_e4_i80_o160_se0.25",
    "r14_k3_s1_e6_i160_o176_se0.25",
    "r18_k3_s2_e6_i176_o304_se0.25",
    "r5_k3_s1_e6_i304_o512_se0.25",
)
L_BLOCKS = _stages(
    "r4_k3_s1_e1_i32_o32_c1",
    "r7_k3_s2_e4_i32_o64_c1",
    "r7_k3_s2_e4_i64_o96_c1",
    "r10_k3_s2_e4_i96_o192_se0.25",
    "r19_k3_s1_e6_i192_o224_se0.25",
    "r25_k3_s2_e6_i224_o384_se0.25",
    "r7_k3_s1_e6_i384_o640_se0.25",
)
# automl trains XL on ImageNet-21k only; keras.applications has no XL.
XL_BLOCKS = _stages(
    "r4_k3_s1_e1_i32_o32_c1",
    "r8_k3_s2_e4_i32_o64_c1",
    "r8_k3_s2_e4_i64_o96_c1",
    "r16_k3_s2_e4_i96_o192_se0.25",
    "r24_k3_s1_e6_i192_o256_se0.25",
    "r32_k3_s2_e6_i256_o512_se0.25",
    "r8_k3_s1_e6_i512_o640_se0.25",
)

# name: (blocks, width, depth, train size, eval size, dropout, input
# normalisation). B0-B3 were trained with V1's ImageNet mean/stddev, the
# others on x / 128 - 1 (keras.applications' `include_preprocessing`).
V2_VARIANTS: Mapping[str, Tuple] = {
    "efficientnetv2-b0": (BASE_BLOCKS, 1.0, 1.0, 192, 224, 0.2, "imagenet"),
    "efficientnetv2-b1": (BASE_BLOCKS, 1.0, 1.1, 192, 240, 0.2, "imagenet"),
    "efficientnetv2-b2": (BASE_BLOCKS, 1.1, 1.2, 208, 260, 0.3, "imagenet"),
    "efficientnetv2-b3": (BASE_BLOCKS, 1.2, 1.4, 240, 300, 0.3, "imagenet"),
    "efficientnetv2-s": (S_BLOCKS, 1.0, 1.0, 300, 384, 0.2, "v2"),
    "efficientnetv2-m": (M_BLOCKS, 1.0, 1.0, 384, 480, 0.3, "v2"),
    "efficientnetv2-l": (L_BLOCKS, 1.0, 1.0, 384, 480, 0.4, "v2"),
    "efficientnetv2-xl": (XL_BLOCKS, 1.0, 1.0, 384, 512, 0.4, "v2"),
}


def spec_fields(name: str) -> Dict[str, Any]:
  """The `specs.ModelSpec` fields of the row `name` of `V2_VARIANTS`."""
  blocks, width, depth, train_size, eval_size, dropout, normalization = (
      V2_VARIANTS[name])
  return dict(width_coefficient=width, depth_coefficient=depth,
              resolution=eval_size, dropout_rate=dropout, blocks=blocks,
              input_normalization=normalization,
              stem_base_filters=blocks[0].input_filters,
              train_resolution=train_size, width_floor=0.0)


# ImageNet-1k top-1 (%) published by automl (paper Table 7; B0-B3 from
# effnetv2_configs.py's comments), for the README and messages.
PUBLISHED_TOP1: Mapping[str, float] = {
    "efficientnetv2-b0": 78.7,
    "efficientnetv2-b1": 79.8,
    "efficientnetv2-b2": 80.5,
    "efficientnetv2-b3": 82.1,
    "efficientnetv2-s": 83.9,
    "efficientnetv2-m": 85.2,
    "efficientnetv2-l": 85.7,
}
