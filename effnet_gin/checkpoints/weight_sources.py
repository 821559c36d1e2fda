"""Readers of other programs' EfficientNet weights, keyed by effnet_gin names.

Each reader returns a `SourceWeights`: numpy arrays keyed by the `path` of
the effnet_gin variable they belong to (`stem_conv/kernel`,
`block2a_expand_bn/moving_mean`, `predictions/bias`, ...), which
`pretrained.load_pretrained` validates and assigns. Two formats live here:

* the reference's TF1 checkpoints (tensorflow/tpu
  models/official/efficientnet, `gs://cloud-tpu-checkpoints/efficientnet/`),
  whose names are translated from the model's own layers, and automl's
  EfficientNetV2 checkpoints (google/automl efficientnetv2,
  `gs://cloud-tpu-checkpoints/efficientnet/v2/`), whose Keras layers
  (`stem`, `blocks_N`, `head`; `conv2d`, `tpu_batch_normalization`,
  `depthwise_conv2d`, `se/conv2d` numbered in creation order) give the
  same names under an `efficientnetv2-*` scope;
* keras.applications EfficientNetB0-B7 and EfficientNetV2B0-B3/S/M/L
  (whose depthwise layers are `block*_dwconv2`, effnet_gin's `block*_dwconv`):
  a Keras model object, a legacy
  `.h5` file (mapped by layer name), a Keras 3 `.weights.h5` file (which
  stores weights by position, so Keras loads it into the matching
  keras.applications model first) or a `.keras` file.
"""
import contextlib
import dataclasses
import re
from typing import Dict, Optional, Tuple

import h5py
import keras
import numpy as np
import tensorflow as tf

from effnet_gin.model import specs
from effnet_gin.model.reference_names import reference_names

EMA_SUFFIX = "/ExponentialMovingAverage"
_WEIGHT_NAMES = ("kernel", "depthwise_kernel", "condconv_kernel",
                 "depthwise_condconv_kernel", "bias", "gamma", "beta",
                 "moving_mean", "moving_variance")
_BLOCK_LAYER = re.compile(r"^(block\d+[a-z]+)_(.+)$")
_KERAS_V2_DWCONV = re.compile(r"^(block\d+[a-z]+)_dwconv2/")

# keras.applications builders by effnet_gin variant.
_KERAS_BUILDERS = {
    **{
        f"efficientnet-b{i}": f"EfficientNetB{i}" for i in range(8)
    },
    **{
        f"efficientnetv2-b{i}": f"EfficientNetV2B{i}" for i in range(4)
    },
    **{
        f"efficientnetv2-{s}": f"EfficientNetV2{s.upper()}" for s in "sml"
    },
}

# keras.applications' published EfficientNet files store the ImageNet
# *standard deviation* as the Normalization layer's variance, and the model
# divides by sqrt(stddev) once more (see keras/applications/efficientnet.py).
_KERAS_PUBLISHED_VARIANCE = (0.229, 0.224, 0.225)


@dataclasses.dataclass
class SourceWeights:
  """Weights read from a source, keyed by effnet_gin variable path.

  Attributes:
    source_format: "reference" (also for automl's V2 checkpoints), "keras"
      or "effnet_gin".
    tensors: variable path -> array.
    names: variable path -> the source's name for it (for messages).
    unexpected: source tensors that no model variable takes.
    ema: whether the tensors are EMA shadows.
    variant: the variant the source names itself, if it does.
    signature: `Signature` of the source's architecture, if known.
    input_normalization: (mean, stddev) on the 0..255 scale that the
      source's own input layers apply, if it has them (Keras).
  """
  source_format: str
  tensors: Dict[str, np.ndarray]
  names: Dict[str, str] = dataclasses.field(default_factory=dict)
  unexpected: Tuple[str, ...] = ()
  ema: bool = False
  variant: Optional[str] = None
  signature: Optional["Signature"] = None
  input_normalization: Optional[Tuple[Tuple[float, ...], Tuple[float,
                                                               ...]]] = None


@dataclasses.dataclass(frozen=True)
class Signature:
  """What tells EfficientNet variants apart, read from weight shapes."""
  stem_filters: int
  head_filters: int
  num_blocks: int
  last_block_filters: int
  squeeze_excite: bool
  experts: int = 0
  space_to_depth: bool = False
  fused: bool = False

  def describe(self) -> str:
    extras = [] if self.squeeze_excite else ["no squeeze-excite"]
    extras += [f"CondConv with {self.experts} experts"] if self.experts else []
    extras += ["space-to-depth"] if self.space_to_depth else []
    extras += ["k x k expansions (fused blocks)"] if self.fused else []
    return (f"stem {self.stem_filters}, {self.num_blocks} blocks, last block "
            f"{self.last_block_filters}, head {self.head_filters}" +
            "".join(f", {extra}" for extra in extras))


def spec_signature(spec: specs.ModelSpec) -> Signature:
  """The `Signature` of a spec, computed without building it."""
  sequence = spec.block_sequence()
  return Signature(
      spec.stem_filters, spec.head_filters, len(sequence),
      sequence[-1].output_filters, any(b.se_filters for b in sequence),
      spec.condconv_experts if any(b.condconv for b in sequence) else 0,
      any(b.space_to_depth for b in sequence),
      any(b.conv_type != "depthwise" and b.expand_ratio != 1 for b in sequence))


def signature_of(shapes) -> Optional[Signature]:
  """The `Signature` of weights keyed by effnet_gin path, or None."""
  try:
    stem = shapes["stem_conv/kernel"][-1]
    head = shapes["top_conv/kernel"]
  except KeyError:
    return None
  blocks = {
      m.group(1) for m in map(_BLOCK_LAYER.match, (k.split("/")[0]
                                                   for k in shapes)) if m
  }
  experts = {
      int(s[-1]) for k, s in shapes.items() if k.endswith("_routing/kernel")
  }
  return Signature(
      int(stem), int(head[-1]), len(blocks), int(head[-2]),
      any("_se_reduce/" in k for k in shapes), max(experts, default=0),
      any("_space_to_depth_conv/" in k for k in shapes),
      any(
          k.endswith("_expand_conv/kernel") and len(s) == 4 and s[0] > 1
          for k, s in shapes.items()))


def variant_named_by(signature: Optional[Signature]) -> Optional[str]:
  """The standard variant with this signature, or None."""
  for name, spec in specs.VARIANTS.items():
    if signature is not None and spec_signature(spec) == signature:
      return name
  return None


# ---------------------------------------------------------------------------
# The reference's TF1 checkpoints.
# ---------------------------------------------------------------------------


def reference_prefix(names, path):
  """The one `efficientnet-...` scope of a reference checkpoint, or None.

  Raises:
    ValueError: if the checkpoint holds several models.
  """
  prefixes = {
      n.split("/")[0]
      for n in names
      if n.startswith("efficientnet") and "/stem/" in n
  }
  if len(prefixes) > 1:
    raise ValueError(f"checkpoint {path!r} holds several models: "
                     f"{sorted(prefixes)}")
  return prefixes.pop() if prefixes else None


def reference_signature(shapes):
  """The `Signature` of reference names (without prefix) -> shapes, or None."""
  try:
    stem, head = shapes["stem/conv2d/kernel"], shapes["head/conv2d/kernel"]
  except KeyError:
    return None
  blocks = {n.split("/")[0] for n in shapes if n.startswith("blocks_")}
  experts = {
      int(s[0]) for n, s in shapes.items() if n.endswith("condconv_kernel")
  }
  return Signature(
      int(stem[-1]), int(head[-1]), len(blocks), int(head[-2]),
      any("/se/" in n for n in shapes), max(experts, default=0),
      any("/space2depth/" in n for n in shapes),
      any(
          re.match(r"^blocks_\d+/conv2d(_\d+)?/kernel$", n) and s[0] > 1
          for n, s in shapes.items()))


def read_reference(model, path, *, use_ema):
  """Reads a reference TF1 checkpoint, or an automl V2 one, for `model`.

  With `use_ema` the EMA shadows (`<name>/ExponentialMovingAverage`, which
  cover the batch-norm statistics too) are read, or the raw weights when the
  checkpoint has no shadows at all. Without it the raw weights are read; an
  EMA-only checkpoint (published NoisyStudent / L2 ones) is then an error,
  not a silent fall-back.

  Raises:
    ValueError: for an EMA-only checkpoint with use_ema=False.
  """
  reader = tf.train.load_checkpoint(path)
  prefix = reference_prefix(reader.get_variable_to_shape_map(), path)
  raw, shadows = {}, {}
  for name, shape in reader.get_variable_to_shape_map().items():
    if not name.startswith(prefix + "/"):
      continue
    base = name[len(prefix) + 1:]
    if base.endswith(EMA_SUFFIX):
      shadows[base[:-len(EMA_SUFFIX)]] = shape
    elif base.rsplit("/", 1)[-1] in _WEIGHT_NAMES:
      raw[base] = shape
  if not use_ema and not raw:
    raise ValueError(
        f"checkpoint {path!r} holds only EMA weights "
        f"(<name>{EMA_SUFFIX}), as the published NoisyStudent and L2 ones "
        "do: load it with use_ema=True")
  ema = bool(use_ema and shadows)
  available, suffix = (shadows, EMA_SUFFIX) if ema else (raw, "")
  batch_norm = ("tpu_batch_normalization"
                if "stem/tpu_batch_normalization/gamma" in available else
                "batch_normalization")
  mapping = reference_names(model, batch_norm)
  names = {key: f"{prefix}/{base}{suffix}" for key, base in mapping.items()}
  tensors = {
      key: reader.get_tensor(names[key])
      for key, base in mapping.items()
      if base in available
  }
  unexpected = sorted(f"{prefix}/{base}{suffix}" for base in set(available) -
                      set(mapping.values()))
  return SourceWeights("reference", tensors, names, tuple(unexpected), ema,
                       prefix, reference_signature(available))


# ---------------------------------------------------------------------------
# keras.applications EfficientNetB0-B7 and EfficientNetV2B0-B3/S/M/L.
# ---------------------------------------------------------------------------


def read_keras(source):
  """Reads keras.applications EfficientNet or EfficientNetV2 weights.

  Args:
    source: a Keras model, or the path of a `.keras`, legacy `.h5` or Keras 3
      `.weights.h5` file.

  Raises:
    ValueError: if the file holds no keras.applications EfficientNet.
  """
  if isinstance(source, str) and source.endswith(".keras"):
    source = keras.models.load_model(source, compile=False)
  if isinstance(source, keras.Model):
    # Keras' own input Normalization is measured, not mapped: effnet_gin's
    # InputNormalization holds constants.
    tensors = {
        v.path: np.asarray(v.numpy()) for layer in source.layers
        if not isinstance(layer, keras.layers.Normalization)
        for v in layer.weights
    }
    normalization = _probe_input_normalization(source)
  else:
    with _open_h5(source) as h5:
      legacy = h5.get("model_weights", h5)
      is_legacy = "layer_names" in legacy.attrs
      tensors = _read_legacy_h5(legacy) if is_legacy else None
    if tensors is None:
      return read_keras(_keras_application_for(source))
    normalization = _stored_input_normalization(tensors)
  tensors = {
      _KERAS_V2_DWCONV.sub(r"\1_dwconv/", k): v for k, v in tensors.items()
  }
  shapes = {k: v.shape for k, v in tensors.items()}
  signature = signature_of(shapes)
  return SourceWeights("keras", tensors, {}, (), False,
                       variant_named_by(signature), signature, normalization)


@contextlib.contextmanager
def _open_h5(path):
  """Opens an HDF5 file through tf.io.gfile (so gs:// works)."""
  with tf.io.gfile.GFile(path, "rb") as f:
    try:
      h5 = h5py.File(f, "r")
    except OSError as error:
      raise ValueError(f"{path!r} is not a Keras weights file (HDF5): "
                       f"{error}") from None
    with h5:
      yield h5


def _read_legacy_h5(group):
  """Keras 2 weights: one group per layer name, its weight_names in order."""
  tensors = {}
  for layer in group.attrs["layer_names"]:
    layer = layer.decode() if isinstance(layer, bytes) else layer
    for weight in group[layer].attrs.get("weight_names", []):
      weight = weight.decode() if isinstance(weight, bytes) else weight
      short = weight.rsplit("/", 1)[-1].split(":")[0]
      if short == "depthwise_kernel":  # Keras 2's name; Keras 3 says kernel.
        short = "kernel"
      tensors[f"{layer}/{short}"] = np.asarray(group[layer][weight])
  return tensors


def _keras_layer_counts(spec):
  """(depthwise, Conv2D) layer counts of keras.applications' build of `spec`."""
  sequence = spec.block_sequence()
  convs = 2 + sum(
      int(b.expand_ratio != 1) + 1 + 2 * int(b.se_filters > 0)
      for b in sequence)
  return sum(b.conv_type == "depthwise" for b in sequence), convs


def _keras_application_for(path):
  """The keras.applications EfficientNet(V2) into which `path` loads.

  Keras 3 `.weights.h5` files key weights by layer position, not name, so
  Keras itself loads them into a freshly built model of the right size,
  chosen by its counts of depthwise and other convolutions.
  """
  with _open_h5(path) as h5:
    layers = h5.get("layers", {})
    kinds = [name.rstrip("0123456789_") for name in layers]
    counts = (kinds.count("depthwise_conv2d"), kinds.count("conv2d"))
    preprocessing = "rescaling" in kinds
    dense = layers.get("dense")
    num_classes = dense["vars"]["0"].shape[1] if dense is not None else None
  tried = []
  for variant, builder_name in _KERAS_BUILDERS.items():
    if _keras_layer_counts(specs.get_variant(variant)) != counts:
      continue
    options = dict(
        include_preprocessing=preprocessing) if "v2" in variant else {}
    builder = getattr(keras.applications, builder_name)
    model = builder(weights=None, include_top=num_classes is not None,
                    classes=num_classes or 1000, classifier_activation=None,
                    **options)
    try:
      model.load_weights(path)
      return model
    except ValueError as error:
      tried.append(f"{builder_name}: {error}")
  raise ValueError(f"{path!r} holds no keras.applications EfficientNetB0-B7 "
                   f"or EfficientNetV2B0-B3/S/M/L weights ({counts[0]} "
                   f"depthwise and {counts[1]} other convolutions; "
                   f"{'; '.join(tried) or 'no model has those counts'})")


def _stored_input_normalization(tensors):
  """Pops a file's Normalization layer; its (mean, stddev) on 0..255."""
  if "normalization/mean" not in tensors:
    return None
  mean = tensors.pop("normalization/mean")
  variance = tensors.pop("normalization/variance")
  tensors.pop("normalization/count", None)
  stddev = (variance if np.allclose(variance, _KERAS_PUBLISHED_VARIANCE,
                                    atol=1e-6) else np.sqrt(variance))
  return (tuple(float(m) * 255 for m in mean),
          tuple(float(s) * 255 for s in stddev))


def _probe_input_normalization(model):
  """The affine map a Keras model applies before its stem, measured.

  Runs the layers before `stem_conv_pad` (EfficientNet) or `stem_conv`
  (EfficientNetV2, which pads inside it) on all-0 and all-255 images; None
  when the model has no Keras Rescaling layer there (an effnet_gin model, or
  EfficientNetV2 built without `include_preprocessing`).
  """
  names = [layer.name for layer in model.layers]
  if "stem_conv_pad" in names:
    stem = model.get_layer("stem_conv_pad")
  elif "stem_conv" in names and any(
      isinstance(layer, keras.layers.Rescaling)
      for layer in model.layers[:names.index("stem_conv")]):
    stem = model.get_layer("stem_conv")
  else:
    return None
  prelude = keras.Model(model.input, stem.input)
  shape = [1] + [d or 32 for d in model.input_shape[1:]]
  low = np.asarray(prelude(np.zeros(shape, np.float32)))[0, 0, 0]
  high = np.asarray(prelude(np.full(shape, 255.0, np.float32)))[0, 0, 0]
  scale = (high - low) / 255.0
  return (tuple(float(m) for m in -low / scale),
          tuple(float(s) for s in 1.0 / scale))
