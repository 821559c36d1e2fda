"""The EfficientNet Keras model builder (gin binds it as `build_model`).

`build_model` turns a variant of `specs.VARIANTS` (optionally with overridden
coefficients) into a Keras 3 functional model: float32 RGB pixels in 0..255,
shaped [N, S, S, 3], to float32 logits [N, num_classes] (no softmax). Input
normalisation is part of the model, so exported models take raw pixels.

Layer names are stable and follow Keras applications: `stem_conv`,
`stem_bn`, `stem_activation`, `block{stage}{letter}_{part}` (e.g.
`block1a_dwconv`, `block3b_se_reduce`, `block2a_expand_conv`,
`block4c_project_bn`), `top_conv`, `top_bn`, `top_activation`, `avg_pool`,
`top_dropout`, `predictions`.
"""
import dataclasses
import string
from typing import Optional

from absl import logging
import keras

from effnet_gin.model import blocks
from effnet_gin.model import layers
from effnet_gin.model import specs

_OVERRIDES = ("width_coefficient", "depth_coefficient", "resolution",
              "dropout_rate", "survival_prob", "input_normalization")


def resolve_spec(variant: str = "efficientnet-b0",
                 **overrides) -> specs.ModelSpec:
  """A variant's spec with the non-None `overrides` replacing its fields.

  Args:
    variant: a name in `specs.VARIANTS`.
    **overrides: any of width_coefficient, depth_coefficient, resolution,
      dropout_rate, survival_prob, input_normalization; None keeps the
      variant's value.

  Returns:
    The resulting `ModelSpec`.

  Raises:
    ValueError: for an unknown variant or an out-of-range override.
  """
  unknown = set(overrides) - set(_OVERRIDES)
  if unknown:
    raise ValueError(f"Cannot override {sorted(unknown)}; overridable: "
                     f"{_OVERRIDES}.")
  spec = specs.get_variant(variant)
  overrides = {k: v for k, v in overrides.items() if v is not None}
  resolution = overrides.get("resolution", spec.resolution)
  if isinstance(resolution, bool) or not isinstance(resolution, int):
    raise ValueError(f"resolution must be a positive int, got {resolution!r}.")
  return dataclasses.replace(spec, **overrides)


def variant_resolution(variant: str) -> int:
  """The input size a variant was designed for (the configs' IMAGE_SIZE).

  For EfficientNetV2 this is its eval size; see `variant_train_resolution`.

  Raises:
    ValueError: for an unknown variant.
  """
  return specs.default_resolution(variant)


def variant_train_resolution(variant: str) -> int:
  """The image size a variant trains at (EfficientNetV2: below its eval size).

  Equal to `variant_resolution` for every variant but EfficientNetV2's, which
  automl trains smaller than it evaluates (e.g. efficientnetv2-s: 300 to
  train, 384 to evaluate).

  Raises:
    ValueError: for an unknown variant.
  """
  return specs.default_train_resolution(variant)


def variant_resize_method(variant: str) -> str:
  """The resize the reference trains, evaluates and exports a variant with.

  "tf1_bilinear" for EfficientNet-Lite and -EdgeTPU, else "tf1_bicubic"
  (the configs bind it as `Preprocessing.resize_method`).

  Raises:
    ValueError: for an unknown variant.
  """
  return specs.default_resize_method(variant)


# (variant, resolution) pairs already reported, so each is logged once.
_REPORTED_RESOLUTIONS = set()


def _report_resolution(variant: str, resolution: int) -> None:
  """Logs, once per process, a variant built at another than its own size."""
  own = specs.default_resolution(variant)
  if resolution != own and (variant, resolution) not in _REPORTED_RESOLUTIONS:
    _REPORTED_RESOLUTIONS.add((variant, resolution))
    logging.warning(
        "%s runs at %dx%d pixels, not its own %dx%d (IMAGE_SIZE "
        "overrides the variant table)", variant, resolution, resolution, own,
        own)


def _image_size_of(image_size, resolution):
  """`image_size`, or its deprecated alias `resolution` (warned once)."""
  if resolution is None:
    return image_size
  if image_size is not None and image_size != resolution:
    raise ValueError(f"build_model got image_size={image_size!r} and its "
                     f"deprecated alias resolution={resolution!r}; give only "
                     "image_size")
  if "resolution" not in _REPORTED_ALIASES:
    _REPORTED_ALIASES.add("resolution")
    logging.warning("build_model.resolution is deprecated and goes in "
                    "effnet_gin 0.3.0: it is called image_size now, as in "
                    "the data pipeline and IMAGE_SIZE")
  return resolution


_REPORTED_ALIASES = set()


def _pool(x, local_pooling):
  """Averages the head over its feature map: [N, s, s, C] -> [N, C]."""
  if not local_pooling:
    return keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
  # An average pooling as large as the map: what the Edge TPU compiler
  # maps (the reference's EdgeTPU `local_pooling`).
  x = keras.layers.AveragePooling2D(tuple(x.shape[1:3]), name="avg_pool")(x)
  return keras.layers.Flatten(name="avg_pool_flatten")(x)


def block_name(stage: int, index_in_stage: int) -> str:
  """Layer-name prefix of a block, e.g. (2, 1) -> "block3b" (0-based args)."""
  letters = string.ascii_lowercase
  suffix = letters[index_in_stage % 26] * (index_in_stage // 26 + 1)
  return f"block{stage + 1}{suffix}"


def build_model(variant: str = "efficientnet-b0",
                num_classes: Optional[int] = None, *,
                width_coefficient: Optional[float] = None,
                depth_coefficient: Optional[float] = None,
                image_size: Optional[int] = None,
                dropout_rate: Optional[float] = None,
                survival_prob: Optional[float] = None,
                input_normalization: Optional[str] = None,
                batch_norm_momentum: float = 0.99,
                batch_norm_epsilon: float = 1e-3, batch_norm_group_size="auto",
                include_top: bool = True, return_endpoints: bool = False,
                freeze_backbone: bool = False, name: Optional[str] = None,
                resolution: Optional[int] = None) -> keras.Model:
  """Builds an EfficientNet as a Keras functional model.

  Under the `mixed_bfloat16` Keras policy the network computes in bfloat16
  with float32 variables; input normalisation and the logits stay float32.

  Args:
    variant: name in `VARIANTS`, e.g. "efficientnet-b0" or
      "efficientnet-lite0".
    num_classes: number of logits (>= 1); defaults to the variant's own
      (1001 for EdgeTPU, whose class 0 is the background class; else
      1000).
    width_coefficient: overrides the variant's channel multiplier.
    depth_coefficient: overrides the variant's depth multiplier.
    image_size: input height and width (IMAGE_SIZE in the configs, as
      `image_size` in the data pipeline); defaults to the variant's.
    dropout_rate: overrides the dropout before the classifier, in [0, 1).
    survival_prob: overrides the stochastic depth survival probability of the
      last block (default 0.8), in (0, 1]; 1 disables stochastic depth.
    input_normalization: overrides the variant's input normalisation, a key
      of `specs.INPUT_NORMALIZATIONS` ("imagenet" mean/std for B-models,
      "lite", or "advprop" for AdvProp checkpoints, which expect [-1, 1]).
    batch_norm_momentum: moving-statistics momentum of every BatchNorm.
    batch_norm_epsilon: epsilon of every BatchNorm.
    batch_norm_group_size: replicas that share batch statistics in training
      (cross-replica batch norm): 'auto' (TPU: the reference's groups,
      none up to 8 cores, else max(8, cores // 8); Mirrored and
      MultiWorkerMirrored: all replicas), 'all', or an int (1 = each replica
      alone).
    include_top: if False the model ends at the head activation
      [N, s, s, head_filters] (no pooling, dropout or classifier).
    return_endpoints: if True the model outputs a dict: "reduction_1" ..
      "reduction_5" (the last block output at strides 2, 4, 8, 16, 32),
      "features" (the head activation) and, with include_top, "logits".
    freeze_backbone: make every layer but the classifier (`predictions`)
      non-trainable, for fine-tuning only the classifier: the optimizer then
      sees only its weights, and the frozen batch norms normalise with their
      moving statistics in training too, leaving them unchanged.
    name: model name; defaults to the variant name.
    resolution: deprecated name of `image_size` (removed in effnet_gin 0.3.0).

  Returns:
    A `keras.Model` with its weights created.

  Raises:
    ValueError: for an unknown variant or an out-of-range argument.
  """
  if num_classes is None:
    num_classes = specs.get_variant(variant).num_classes
  if isinstance(num_classes,
                bool) or not isinstance(num_classes, int) or (num_classes < 1):
    raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}.")
  spec = resolve_spec(variant, width_coefficient=width_coefficient,
                      depth_coefficient=depth_coefficient,
                      resolution=_image_size_of(image_size, resolution),
                      dropout_rate=dropout_rate, survival_prob=survival_prob,
                      input_normalization=input_normalization)
  _report_resolution(variant, spec.resolution)
  bn_args = dict(batch_norm_momentum=batch_norm_momentum,
                 batch_norm_epsilon=batch_norm_epsilon,
                 batch_norm_group_size=batch_norm_group_size)
  # Fail on bad batch-norm arguments before building any layer.
  layers.BatchNorm(batch_norm_momentum, batch_norm_epsilon,
                   group_size=batch_norm_group_size)

  inputs = keras.Input((spec.resolution, spec.resolution, 3), name="images",
                       dtype="float32")
  mean, stddev = specs.INPUT_NORMALIZATIONS[spec.input_normalization]
  x = layers.InputNormalization(mean, stddev, name="normalization")(inputs)
  x = layers.conv_bn_act(x, spec.stem_filters, 3, 2, spec.activation,
                         name="stem_conv", bn_name="stem_bn",
                         act_name="stem_activation", **bn_args)

  x, endpoints = _blocks(x, spec, bn_args)
  x = layers.conv_bn_act(x, spec.head_filters, 1, 1, spec.activation,
                         name="top_conv", bn_name="top_bn",
                         act_name="top_activation", **bn_args)
  endpoints["features"] = x
  outputs = x
  if include_top:
    x = _pool(x, spec.local_pooling)
    x = layers.Dropout(spec.dropout_rate, name="top_dropout")(x)
    # float32 logits under mixed precision: the loss needs full precision.
    outputs = keras.layers.Dense(
        num_classes, kernel_initializer=layers.dense_kernel_initializer(),
        dtype="float32", name="predictions")(x)
    endpoints["logits"] = outputs
  if return_endpoints:
    outputs = endpoints
  model = keras.Model(inputs, outputs, name=name or variant)
  if freeze_backbone:
    for layer in model.layers:
      layer.trainable = layer.name == "predictions"
  return model


def _blocks(x, spec: specs.ModelSpec, bn_args):
  """Applies every block of `spec` to `x`.

  Args:
    x: the stem output.
    spec: the variant.
    bn_args: batch_norm_momentum, _epsilon and _group_size for every block.

  Returns:
    The last block's output and a dict of "reduction_i" endpoints: the
    tensor just before each block that halves the resolution, and the last
    block's output.
  """
  endpoints = {}
  sequence = spec.block_sequence()
  for index, block in enumerate(sequence):
    if block.strides > 1 or block.space_to_depth:
      endpoints[f"reduction_{len(endpoints) + 1}"] = x
    # Deeper blocks are dropped more often: linear decay from 1 at the
    # first block towards survival_prob (Huang et al. 2016).
    drop_fraction = (1.0 - spec.survival_prob) * index / len(sequence)
    x = blocks.efficientnet_block(
        x, block, name=block_name(block.stage, block.index_in_stage),
        survival_prob=1.0 - drop_fraction, num_experts=spec.condconv_experts,
        **bn_args)
  endpoints[f"reduction_{len(endpoints) + 1}"] = x
  return x, endpoints
