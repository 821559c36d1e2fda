"""The vocabulary of EfficientNet stage tables: `BlockSpec` and its parser.

A stage is declared as a `BlockSpec`, or as the reference's block string
(tensorflow/tpu models/official/efficientnet, `BlockDecoder`) through
`parse_block`; `specs.ModelSpec.block_sequence` scales the stages of a
variant into the `Block`s the builder and the cost model walk.
"""
import dataclasses
from typing import Optional, Tuple

ACTIVATIONS = ("swish", "relu6", "relu")
# Block kinds: the inverted bottleneck with a depthwise convolution, the
# fused one whose k x k expansion replaces 1x1 expansion + depthwise (`f1`),
# and the conv-only block without depthwise or squeeze-excite (`c1`).
CONV_TYPES = ("depthwise", "fused", "conv")


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One stage of blocks: `repeats` blocks sharing a shape.

  Only the first block of a stage uses `strides` and `input_filters`; the
  repeats that follow have stride 1 and take `output_filters` in. The
  reference's block-string letter of each field is given in brackets.

  Attributes:
    repeats: number of blocks in the stage, before depth scaling [r].
    kernel_size: kernel size of the depthwise (or fused) convolution [k].
    strides: stride of the stage's first block [s].
    expand_ratio: width of the inverted bottleneck relative to the block's
      declared input width [e].
    input_filters: channels into the stage (before width scaling) [i].
    output_filters: channels out of the stage (before width scaling) [o].
    se_ratio: squeeze-excite reduction relative to the block's input
      channels; 0 disables squeeze-excite [se].
    conv_type: one of `CONV_TYPES`: "depthwise", "fused" [f1] or "conv"
      (conv-only, no depthwise and no squeeze-excite) [c1].
    skip: whether blocks may add their input back; False is [noskip].
    space_to_depth: 0, 1 [d1]: the stage's first block starts with a 2x2,
      stride-2 convolution to 4x the channels, and the stage runs at 4x
      width with kernels halved (rounded up); or 2 [d2]: the stage follows a
      d1 stage, so its stride-2 first block runs at stride 1 instead.
    condconv: convolutions are conditionally parameterised: per-example
      kernels mixed from the variant's experts [cc].
    activation: the stage's own activation, None for the variant's: "relu"
      [a0] or "swish" [a1].
  """
  repeats: int
  kernel_size: int
  strides: int
  expand_ratio: int
  input_filters: int
  output_filters: int
  se_ratio: float = 0.25
  conv_type: str = "depthwise"
  skip: bool = True
  space_to_depth: int = 0
  condconv: bool = False
  activation: Optional[str] = None

  def __post_init__(self):
    if self.conv_type not in CONV_TYPES:
      raise ValueError(f"conv_type must be one of {CONV_TYPES}, got "
                       f"{self.conv_type!r}.")
    if self.space_to_depth not in (0, 1, 2):
      raise ValueError(f"space_to_depth must be 0, 1 or 2, got "
                       f"{self.space_to_depth!r}.")
    if self.space_to_depth and self.strides != self.space_to_depth:
      raise ValueError(f"a space_to_depth={self.space_to_depth} stage has "
                       f"stride {self.space_to_depth}, got "
                       f"{self.strides!r}.")
    if self.activation not in (None,) + ACTIVATIONS:
      raise ValueError(f"activation must be None or one of {ACTIVATIONS}, "
                       f"got {self.activation!r}.")


_BLOCK_OPTION_ACTIVATIONS = {"0": "relu", "1": "swish"}


def parse_block(text: str) -> BlockSpec:
  """A stage from the reference's block string, e.g. "r2_k3_s22_e6_i16_o24".

  Options, joined by "_": r repeats, k kernel, s stride (written twice, as
  "s22"), e expansion, i/o input/output filters, se squeeze-excite ratio
  (none without it), c1 conv-only, f1 fused, d1/d2 space-to-depth, a0/a1
  ReLU/swish, cc CondConv, noskip.

  Args:
    text: the block string.

  Returns:
    The `BlockSpec`.

  Raises:
    ValueError: for an unknown or missing option, naming it.
  """
  options, flags = {}, set()
  for part in text.split("_"):
    if part in ("noskip", "cc"):
      flags.add(part)
      continue
    key = part[:2] if part.startswith("se") else part[:1]
    if key not in ("r", "k", "s", "e", "i", "o", "se", "c", "f", "d", "a"):
      raise ValueError(f"unknown option {part!r} in block string {text!r}")
    options[key] = part[len(key):]
  try:
    strides = options["s"]
    if len(strides) != 2 or strides[0] != strides[1]:
      raise ValueError(f"stride {strides!r} of block string {text!r} must "
                       "be two equal digits")
    conv_type = ("conv" if options.get("c") == "1" else
                 "fused" if options.get("f") == "1" else "depthwise")
    return BlockSpec(
        int(options["r"]), int(options["k"]), int(strides[0]),
        int(options["e"]), int(options["i"]), int(options["o"]),
        se_ratio=float(options.get("se",
                                   0.0)), conv_type=conv_type, skip="noskip"
        not in flags, space_to_depth=int(options.get("d", 0)), condconv="cc"
        in flags, activation=(_BLOCK_OPTION_ACTIVATIONS[options["a"]]
                              if "a" in options else None))
  except KeyError as missing:
    raise ValueError(f"block string {text!r} lacks or misspells option "
                     f"{missing}") from None


@dataclasses.dataclass(frozen=True)
class Block:
  """One block of a built network, all scaling applied (`block_sequence`).

  Attributes:
    stage: 0-based stage index.
    index_in_stage: 0-based index of the block in its stage.
    kernel_size: kernel of the depthwise (or fused / conv-only) convolution.
    strides: the block's stride.
    input_filters: the block's declared input width (its expansion and
      squeeze-excite widths scale it; the real input may differ, e.g. after
      a fixed-width Lite stem or a space-to-depth block).
    expanded_filters: width inside the block.
    output_filters: channels out.
    se_filters: squeeze-excite bottleneck width; 0 for none.
    conv_type: one of `CONV_TYPES`.
    skip: whether the block may add its input back (if shapes allow).
    space_to_depth: the block starts with the 2x2 stride-2 convolution.
    condconv: its convolutions are CondConv ones.
    activation: the block's activation.
  """
  stage: int
  index_in_stage: int
  kernel_size: int
  strides: int
  input_filters: int
  expand_ratio: int
  expanded_filters: int
  output_filters: int
  se_filters: int
  conv_type: str
  skip: bool
  space_to_depth: bool
  condconv: bool
  activation: str


def sequence(spec) -> Tuple[Block, ...]:
  """Every block of a variant's network, as the reference builds them.

  A space-to-depth [d1] stage runs at 4x its width with kernels halved
  (rounded up), its first block starting with the 2x2 stride-2
  convolution; the stride-2 first block of the [d2] stage after it runs at
  stride 1. A squeeze-excite bottleneck is
  int(declared input width x se_ratio x se_coefficient), divided by 4 in
  the space-to-depth block (it is meant for the width before the 4x).
  Blocks add their input back only with stride 1, equal real input and
  output widths and no space-to-depth.

  Args:
    spec: the variant's `specs.ModelSpec`.

  Returns:
    The `Block`s in network order.
  """
  blocks, channels = [], spec.stem_filters
  for stage, block in enumerate(spec.scaled_blocks()):
    factor = 4 if block.space_to_depth == 1 else 1
    kernel = (block.kernel_size + 1) // 2 if factor == 4 else (
        block.kernel_size)
    for index in range(block.repeats):
      first = index == 0
      strides = block.strides if first and block.space_to_depth != 2 else 1
      in_filters = factor * (block.input_filters
                             if first else block.output_filters)
      out_filters = factor * block.output_filters
      s2d = first and factor == 4
      # Without expansion, the block works on its real input width.
      expanded = (in_filters * block.expand_ratio if block.expand_ratio != 1
                  else in_filters if s2d else channels)
      se_filters = 0
      if block.se_ratio > 0 and block.conv_type != "conv":
        se_filters = max(
            1,
            int(in_filters * block.se_ratio * spec.se_coefficient) //
            (4 if s2d else 1))
      blocks.append(
          Block(
              stage, index, kernel, strides, in_filters, block.expand_ratio,
              expanded, out_filters, se_filters, block.conv_type, block.skip and
              strides == 1 and not s2d and channels == out_filters, s2d,
              block.condconv, block.activation or spec.activation))
      channels = out_filters
  return tuple(blocks)
