"""Turns a published checkpoint into an ordinary effnet_gin model_dir.

`import_checkpoint` (what `bin/import_checkpoint` runs) writes
  model_dir/ckpt-0      a `tf.train.Checkpoint(step, model, ema)` whose
                        weights and EMA weights are the imported ones, so
                        bin/evaluator, bin/exporter, bin/predict and
                        `train.init_checkpoint` read it unchanged;
  model_dir/model.gin   the bindings that build exactly that model
(the run directory's layout: `run_dir`). Everything is validated and written
into a scratch directory first, then moved: on any error model_dir is left
untouched.
"""
import dataclasses
import os

from absl import logging
import tensorflow as tf

from effnet_gin.model import build_model
from effnet_gin.checkpoints import pretrained
from effnet_gin.model import specs
from effnet_gin.checkpoints.weight_sources import spec_signature
from effnet_gin.checkpoints import averaging
from effnet_gin.checkpoints import checkpointing
from effnet_gin.checkpoints import run_dir


def import_checkpoint(*, source, model_dir, variant=None, num_classes=None,
                      advprop=False, width_coefficient=None,
                      depth_coefficient=None, image_size=None, use_ema=True):
  """Imports a reference or automl checkpoint or Keras weights into model_dir.

  Args:
    source: a reference TF1 checkpoint or an automl EfficientNetV2 one
      (directory or prefix), or a Keras weights file (see
      `effnet_gin.checkpoints.load_pretrained`).
    model_dir: the directory to write; must hold no checkpoint yet.
    variant: overrides the detected variant name.
    num_classes: the model's class count; by default the source's (21,843
      for automl's ImageNet-21k checkpoints). Another count leaves a freshly
      initialised classifier.
    advprop: the source is an AdvProp checkpoint (inputs scaled to [-1, 1]).
    width_coefficient, depth_coefficient: for sources of non-standard width
      or depth; when both are None they are inferred from the shapes
      (`infer_scaling`).
    image_size: the resolution to evaluate at; the variant's by default.
    use_ema: import the EMA weights (the published ones) when present.

  Returns:
    The `LoadResult`, with the path of the written checkpoint added as
    `checkpoint`, as a dict.

  Raises:
    FileNotFoundError, ValueError: for a source that does not load (see
      `load_pretrained`), one whose variant cannot be told, or a model_dir
      that already holds a checkpoint.
  """
  info = pretrained.describe_source(source)
  if info.source_format == "effnet_gin":
    raise ValueError(f"{source!r} is already an effnet_gin checkpoint: use it "
                     "directly (train.init_checkpoint, --checkpoint)")
  variant = variant or info.variant
  if variant not in specs.VARIANTS:
    found = info.signature.describe() if info.signature else "unknown shapes"
    raise ValueError(f"cannot tell which variant {source!r} is "
                     f"({variant or found}); pass --variant (the known "
                     f"families: {specs.describe_families()}) "
                     "and, for non-standard shapes, --width_coefficient and "
                     "--depth_coefficient")
  if width_coefficient is None and depth_coefficient is None:
    width_coefficient, depth_coefficient = infer_scaling(
        variant, info.signature)
  normalization = "advprop" if advprop else info.input_normalization
  if normalization is None:
    raise ValueError(f"{source!r} normalises its inputs in none of "
                     f"effnet_gin's ways {sorted(specs.INPUT_NORMALIZATIONS)}")
  if tf.io.gfile.exists(model_dir) and tf.train.latest_checkpoint(model_dir):
    raise ValueError(f"model_dir {model_dir!r} already holds a checkpoint; "
                     "import into a new directory")
  model_kwargs = dict(
      variant=variant, num_classes=num_classes or info.num_classes,
      width_coefficient=width_coefficient, depth_coefficient=depth_coefficient,
      image_size=image_size or specs.default_resolution(variant),
      input_normalization=normalization)
  model = build_model(**model_kwargs)
  try:
    result = pretrained.load_pretrained(
        model, source, use_ema=use_ema,
        skip_mismatched_classifier=model_kwargs["num_classes"]
        != info.num_classes)
  except ValueError as error:
    raise ValueError(f"{error} (a checkpoint of non-standard shapes needs "
                     "--width_coefficient and --depth_coefficient)") from None
  # The averages start equal to the imported weights.
  ema = averaging.ExponentialMovingAverage(model)
  step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
  checkpoint = checkpointing.build_checkpoint(step=step, model=model, ema=ema)
  path = _write_then_move(model_dir, checkpoint,
                          model_gin(source, result, **model_kwargs))
  logging.info("Imported %s into %s", source, path)
  return dict(vars(result), checkpoint=path)


# Coefficients tried when a checkpoint's shapes are not its variant's own.
_COEFFICIENT_GRID = tuple(round(0.05 * i, 2) for i in range(1, 121))


def infer_scaling(variant, signature):
  """Width and depth coefficients that give `variant` these weight shapes.

  Args:
    variant: a name in `specs.VARIANTS`.
    signature: the source's `Signature`, or None when unknown.

  Returns:
    (None, None) when the variant's own coefficients fit (or the signature
    is unknown), else the fitting (width, depth) on a 0.05 grid closest to
    the variant's own; every fitting value builds the same weight shapes.
    Nothing fitting is left to `load_pretrained` to report.
  """
  spec = specs.get_variant(variant)
  if signature is None or spec_signature(spec) == signature:
    return None, None

  def fits(**coefficients):
    scaled = spec_signature(dataclasses.replace(spec, **coefficients))
    return all(
        getattr(scaled, field) == getattr(signature, field)
        for field in (_DEPTH_FIELDS if "depth_coefficient" in
                      coefficients else _WIDTH_FIELDS))

  widths = [w for w in _COEFFICIENT_GRID if fits(width_coefficient=w)]
  depths = [d for d in _COEFFICIENT_GRID if fits(depth_coefficient=d)]
  if not widths or not depths:
    return None, None
  return (min(widths, key=lambda w: abs(w - spec.width_coefficient)),
          min(depths, key=lambda d: abs(d - spec.depth_coefficient)))


_WIDTH_FIELDS = ("stem_filters", "head_filters", "last_block_filters")
_DEPTH_FIELDS = ("num_blocks",)


def model_gin(source, result, *, variant, num_classes, width_coefficient,
              depth_coefficient, image_size, input_normalization):
  """The text of model.gin: the bindings that build the imported model."""
  weights = "EMA" if result.ema else "raw"
  return f"""\
# The model of ckpt-0 in this directory, written by bin/import_checkpoint
# from {source}
# ({result.source_format} format, {weights} weights,
# {result.tensors_mapped} tensors).
# Give it after the experiment's .gin files, e.g.
#   bin/evaluator --gin_file=b0_cpu.gin --gin_file=<this dir>/model.gin \\
#       --model_dir=<this dir> --checkpoint=<this dir>/ckpt-0 --data_dir=...

MODEL_NAME = {variant!r}
NUM_CLASSES = {num_classes!r}
IMAGE_SIZE = {image_size!r}

effnet_gin.model.build_model.variant = %MODEL_NAME
effnet_gin.model.build_model.num_classes = %NUM_CLASSES
effnet_gin.model.build_model.image_size = %IMAGE_SIZE
effnet_gin.model.build_model.input_normalization = {input_normalization!r}
effnet_gin.model.build_model.width_coefficient = {width_coefficient!r}
effnet_gin.model.build_model.depth_coefficient = {depth_coefficient!r}
"""


def _write_then_move(model_dir, checkpoint, gin_text):
  """Writes ckpt-0 and model.gin beside model_dir, then moves them in."""
  scratch = f"{model_dir.rstrip('/')}.import-{os.getpid()}"
  try:
    checkpointing.Manager(checkpoint, scratch, max_to_keep=1).save(0)
    run_dir.write_text(scratch, run_dir.MODEL_GIN_FILE, gin_text)
    tf.io.gfile.makedirs(model_dir)
    for name in tf.io.gfile.listdir(scratch):
      tf.io.gfile.rename(f"{scratch}/{name}", f"{model_dir}/{name}",
                         overwrite=True)
  finally:
    if tf.io.gfile.exists(scratch):
      tf.io.gfile.rmtree(scratch)
  return run_dir.checkpoint_path(model_dir, 0)
