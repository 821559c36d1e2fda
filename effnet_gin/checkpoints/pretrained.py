"""Starts an effnet_gin model from published or foreign EfficientNet weights.

`load_pretrained(model, source)` assigns into a built model the weights of
  * a reference TF1 checkpoint (tensorflow/tpu models/official/efficientnet,
    e.g. the published `gs://cloud-tpu-checkpoints/efficientnet/...`
    tarballs, extracted): a directory or a `model.ckpt` prefix;
  * an automl EfficientNetV2 checkpoint (google/automl efficientnetv2, e.g.
    the published `gs://cloud-tpu-checkpoints/efficientnet/v2/
    efficientnetv2-*.tgz`, ImageNet-1k, 21k and 21k-ft1k, extracted): the
    same TF1 naming scheme under an `efficientnetv2-*` scope, EMA shadows
    included; a directory or its checkpoint prefix;
  * keras.applications EfficientNetB0-B7 or EfficientNetV2B0-B3/S/M/L
    weights: a Keras model, or a `.h5` / `.weights.h5` / `.keras` file;
  * an effnet_gin checkpoint (`model_dir/ckpt-N`, or model_dir).

Every model variable must receive a tensor of its exact shape and every
source tensor must land in the model, or nothing is assigned and a
ValueError names the tensors; only the classifier may be left at its
initialisation, and only when asked (fine-tuning on another class count).
"""
import dataclasses
from typing import Optional, Tuple

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from effnet_gin.checkpoints import averaging
from effnet_gin.checkpoints import checkpointing
from effnet_gin.checkpoints import weight_sources
from effnet_gin.model import specs

FORMATS = ("reference", "automl", "keras", "effnet_gin")
# Formats named like the reference, read by `weight_sources.read_reference`.
_REFERENCE_NAMED = ("reference", "automl")
_KERAS_SUFFIXES = (".h5", ".keras")
_MAX_LISTED_PROBLEMS = 6


@dataclasses.dataclass(frozen=True)
class LoadResult:
  """What `load_pretrained` did.

  Attributes:
    source: the path (or the Keras model's name) loaded from.
    source_format: one of `FORMATS`.
    variant: the variant the source is ("efficientnet-b0"; the reference's
      and automl's
      own scope name, else recognised from the shapes), or None when its
      shapes match no standard variant.
    num_classes: the source's classifier width (None without a classifier).
    tensors_mapped: how many model variables were assigned.
    ema: whether the EMA weights were loaded (False when the source has
      none, or use_ema=False).
    skipped: variable paths left at their initialisation (the classifier).
  """
  source: str
  source_format: str
  variant: Optional[str]
  num_classes: Optional[int]
  tensors_mapped: int
  ema: bool
  skipped: Tuple[str, ...]


def checkpoint_format(source) -> str:
  """Tells which of `FORMATS` a source is in.

  Args:
    source: a Keras model, a Keras file, or a checkpoint prefix/directory.

  Raises:
    FileNotFoundError: when the path holds no file or checkpoint.
    ValueError: when the checkpoint is unreadable or of no known format.
  """
  if isinstance(source, keras.Model):
    return "keras"
  if not isinstance(source, str):
    raise TypeError(f"source must be a path or a keras.Model, got "
                    f"{type(source).__name__}")
  if source.endswith(_KERAS_SUFFIXES):
    if not tf.io.gfile.exists(source):
      raise FileNotFoundError(f"Keras weights file {source!r} does not exist")
    return "keras"
  names = [name for name, _ in _list_checkpoint(source)]
  prefix = weight_sources.reference_prefix(names, source)
  if prefix:
    return "automl" if prefix.startswith("efficientnetv2") else "reference"
  if any(name.startswith(("model/", "ema/")) for name in names):
    return "effnet_gin"
  raise ValueError(
      f"checkpoint {source!r} is neither a reference or automl EfficientNet "
      f"checkpoint (no efficientnet*/stem/ tensors) nor an effnet_gin one (no model/ "
      f"tensors); it holds e.g. {sorted(names)[:3]}")


def load_pretrained(model, source, *, use_ema=True,
                    skip_mismatched_classifier=False) -> LoadResult:
  """Assigns a checkpoint's weights into a built effnet_gin model.

  Args:
    model: a model from `build_model` of the source's architecture (variant
      and any width/depth overrides); its input normalisation must be the
      one the weights were trained with.
    source: see the module docstring and `checkpoint_format`.
    use_ema: load the exponential moving averages (what the reference
      evaluates and publishes) when the source has them; sources without
      any load their raw weights. A reference checkpoint holding only EMA
      weights (NoisyStudent, L2) cannot be loaded with use_ema=False.
    skip_mismatched_classifier: leave the classifier (`predictions`) at its
      initialisation when the source's is missing or of another size,
      instead of failing.

  Returns:
    A `LoadResult`.

  Raises:
    FileNotFoundError: when the source does not exist.
    ValueError: when the source is no checkpoint, is another variant
      ("... holds efficientnet-b3, the model is efficientnet-b0"), misses a
      tensor, has one the model lacks or of another shape (each named), or
      when Keras weights expect another input normalisation.
  """
  source_format = checkpoint_format(source)
  label = source if isinstance(source, str) else f"Keras model {source.name!r}"
  if source_format in _REFERENCE_NAMED:
    weights = weight_sources.read_reference(model, _resolve(source),
                                            use_ema=use_ema)
  elif source_format == "keras":
    weights = weight_sources.read_keras(source)
    _check_input_normalization(model, weights, label)
  else:
    weights = _read_effnet_gin(model, source, use_ema=use_ema)
  skipped = _assign(model, weights, label, skip_mismatched_classifier)
  classifier = weights.tensors.get("predictions/kernel")
  result = LoadResult(
      source=label, source_format=source_format, variant=weights.variant or
      weight_sources.variant_named_by(weights.signature),
      num_classes=None if classifier is None else int(classifier.shape[-1]),
      tensors_mapped=len(model.weights) - len(skipped), ema=weights.ema,
      skipped=tuple(skipped))
  if use_ema and not weights.ema and source_format != "keras":
    logging.warning("%s has no EMA weights: loaded its raw weights", label)
  logging.info("Loaded %s", result)
  return result


@dataclasses.dataclass(frozen=True)
class SourceInfo:
  """What a source says about the model that takes it (`describe_source`)."""
  source_format: str
  variant: Optional[str]
  num_classes: Optional[int]
  input_normalization: Optional[str]
  signature: Optional[weight_sources.Signature]


def describe_source(source) -> SourceInfo:
  """Reads a source's format, variant, class count and input normalisation.

  The variant of a reference or automl checkpoint is its scope name; Keras and
  effnet_gin weights are recognised by their shapes (None when they match no
  standard variant). The input normalisation is the variant's default for
  reference and automl checkpoints, the one the Keras model applies for Keras weights
  (None when it is none of `specs.INPUT_NORMALIZATIONS`), and unknown (None)
  for effnet_gin checkpoints.

  Raises:
    FileNotFoundError, ValueError: as `checkpoint_format`.
  """
  source_format = checkpoint_format(source)
  if source_format == "keras":
    weights = weight_sources.read_keras(source)
    shapes = {k: v.shape for k, v in weights.tensors.items()}
    return SourceInfo("keras", weights.variant,
                      _classifier_width(shapes, "predictions/kernel"),
                      _normalization_name(weights.input_normalization),
                      weights.signature)
  shapes = dict(_list_checkpoint(source))
  if source_format == "effnet_gin":
    widths = {s[1] for s in shapes.values() if len(s) == 2}
    return SourceInfo("effnet_gin", None,
                      widths.pop() if len(widths) == 1 else None, None, None)
  prefix = weight_sources.reference_prefix(shapes, source)
  bases = {
      n[len(prefix) + 1:].replace(weight_sources.EMA_SUFFIX, ""): s
      for n, s in shapes.items()
      if n.startswith(prefix + "/")
  }
  default = (specs.VARIANTS[prefix].input_normalization
             if prefix in specs.VARIANTS else None)
  return SourceInfo(source_format, prefix,
                    _classifier_width(bases, "head/dense/kernel"), default,
                    weight_sources.reference_signature(bases))


def _classifier_width(shapes, key):
  return int(shapes[key][-1]) if key in shapes else None


def _normalization_name(normalization):
  if normalization is None:
    return None
  for name, expected in specs.INPUT_NORMALIZATIONS.items():
    if np.allclose(normalization, expected, rtol=1e-4, atol=1e-3):
      return name
  return None


def _resolve(path):
  return checkpointing.resolve_checkpoint(path)


def _list_checkpoint(path):
  resolved = _resolve(path)
  try:
    return tf.train.list_variables(resolved)
  except (tf.errors.OpError, ValueError) as error:
    raise ValueError(f"{path!r} is not a readable TensorFlow checkpoint: "
                     f"{error}") from None


def _read_effnet_gin(model, path, *, use_ema):
  """Restores an effnet_gin checkpoint into a copy of `model`'s architecture."""
  path = _resolve(path)
  try:
    source, ema = checkpointing.restore_source(
        path, model_builder=lambda n: _rebuild(model, n), use_ema=use_ema,
        ema_factory=averaging.ExponentialMovingAverage)
  except (ValueError, AssertionError, tf.errors.OpError) as error:
    raise ValueError(f"effnet_gin checkpoint {path!r} does not fit the "
                     f"architecture of model {model.name!r}: {error}") from None
  tensors = {v.path: np.asarray(v.numpy()) for v in source.weights}
  signature = weight_sources.signature_of({
      k: v.shape for k, v in tensors.items()
  })
  return weight_sources.SourceWeights(
      "effnet_gin", tensors, ema=ema,
      variant=weight_sources.variant_named_by(signature), signature=signature)


def _rebuild(model, num_classes):
  """A fresh model of `model`'s architecture with `num_classes` logits."""
  config = model.get_config()
  for layer in config["layers"]:
    if layer["name"] == "predictions":
      layer["config"]["units"] = num_classes
  return keras.Model.from_config(config)


def _check_input_normalization(model, weights, label):
  """Keras models normalise inputs themselves; ours must do the same."""
  try:
    ours = model.get_layer("normalization")
  except ValueError:
    return
  theirs = weights.input_normalization
  if theirs is None or np.allclose(theirs, (ours.mean, ours.stddev), rtol=1e-4,
                                   atol=1e-3):
    return
  name = _normalization_name(theirs)
  hint = (f"build the model with input_normalization={name!r}"
          if name else "none of effnet_gin's input normalisations "
          f"{sorted(specs.INPUT_NORMALIZATIONS)} matches it")
  raise ValueError(
      f"{label} normalises its 0..255 inputs with mean "
      f"{np.round(theirs[0], 3).tolist()} and stddev "
      f"{np.round(theirs[1], 3).tolist()}, model {model.name!r} with mean "
      f"{list(ours.mean)} and stddev {list(ours.stddev)}: {hint}")


def _assign(model, weights, label, skip_mismatched_classifier):
  """Validates the whole mapping, then assigns; returns the skipped paths."""
  variables = {v.path: v for v in model.weights}
  skipped, problems = [], []
  for key, variable in variables.items():
    value = weights.tensors.get(key)
    if value is not None and tuple(value.shape) == tuple(variable.shape):
      continue
    if skip_mismatched_classifier and key.startswith("predictions/"):
      skipped.append(key)
      continue
    name = weights.names.get(key, key)
    problems.append(f"{name} is missing (for {key})" if value is None else
                    f"{name} has shape {list(value.shape)}, the model's {key} "
                    f"{list(variable.shape)}")
  unexpected = list(
      weights.unexpected) + sorted(set(weights.tensors) - set(variables))
  problems += [f"{name} has no counterpart in the model" for name in unexpected]
  if problems:
    raise ValueError(_mismatch_message(model, weights, label, problems))
  for key, variable in variables.items():
    if key not in skipped:
      variable.assign(weights.tensors[key].astype(variable.dtype))
  return skipped


def _mismatch_message(model, weights, label, problems):
  model_signature = weight_sources.signature_of(
      {v.path: tuple(v.shape) for v in model.weights})
  if (weights.signature and model_signature and
      weights.signature != model_signature):
    head = (f"{label} holds {_describe(weights.variant, weights.signature)}, "
            f"the model is {_describe(None, model_signature, model.name)}")
  else:
    head = f"{label} does not fit model {model.name!r}"
  if all("predictions/" in p for p in problems):
    head += (" (only the classifier differs: pass "
             "skip_mismatched_classifier=True to fine-tune a new one)")
  listed = problems[:_MAX_LISTED_PROBLEMS]
  more = len(problems) - len(listed)
  return (f"{head}: " + "; ".join(listed) +
          (f"; and {more} more" if more > 0 else ""))


def _describe(variant, signature, fallback="an EfficientNet"):
  standard = weight_sources.variant_named_by(signature)
  if standard and (variant is None or variant == standard):
    return standard
  return (f"{variant or fallback} with non-standard shapes "
          f"({signature.describe()})")


def initialize_from(model, path, *, model_builder, use_ema=True,
                    ema_factory=None):
  """Initialises `model` from another run's checkpoint (fine-tuning).

  An effnet_gin checkpoint's source model is rebuilt with the checkpoint's
  own class count, restored (with its EMA weights when asked and present),
  and copied into `model` layer by layer by name; a layer whose weights
  differ in shape — the classifier, when the class count changed — keeps its
  fresh initialisation. Any other format `load_pretrained` reads
  (a reference or automl TF1 checkpoint, Keras weights) is loaded by it, strictly but
  for the classifier.

  Args:
    model: the freshly built model to initialise.
    path: a checkpoint prefix or a directory holding checkpoints, or a Keras
      weights file.
    model_builder: callable(num_classes) building the source architecture.
    use_ema: take the EMA weights when the checkpoint has them.
    ema_factory: callable(model) building an EMA for the source model.

  Returns:
    The names of the layers left at their initialisation.

  Raises:
    FileNotFoundError: when `path` holds no checkpoint.
    ValueError: when a foreign checkpoint does not fit the model.
  """
  if checkpoint_format(path) != "effnet_gin":
    result = load_pretrained(model, path, use_ema=use_ema,
                             skip_mismatched_classifier=True)
    return sorted({key.split("/")[0] for key in result.skipped})
  path = checkpointing.resolve_checkpoint(path)
  source, used_ema = checkpointing.restore_source(path,
                                                  model_builder=model_builder,
                                                  use_ema=use_ema,
                                                  ema_factory=ema_factory)
  skipped = []
  for layer in model.layers:
    try:
      source_layer = source.get_layer(layer.name)
    except ValueError:
      skipped.append(layer.name)
      continue
    pairs = list(zip(layer.weights, source_layer.weights))
    if (len(layer.weights) != len(source_layer.weights) or
        any(t.shape != s.shape for t, s in pairs)):
      skipped.append(layer.name)
      continue
    for target, value in pairs:
      target.assign(value)
  logging.info("Initialised from %s%s; left at initialisation: %s", path,
               " (EMA weights)" if used_ema else "", skipped)
  return skipped
