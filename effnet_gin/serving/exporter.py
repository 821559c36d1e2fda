"""Export for serving: a SavedModel that classifies encoded images.

`export` (what `bin/exporter` runs) restores a checkpoint of a run — the
latest, the evaluator's best, or a given path — with its EMA weights, and
saves a `tf.Module` with two signatures:

  serving_default   image_bytes: tf.string [N] (JPEG or PNG files' bytes),
                    decoded and preprocessed exactly as the eval split
                    (the `Preprocessing` it is given, under gin the bound
                    one: by default the reference's center crop with
                    padding 32 and TF1 bicubic resize) inside the graph,
                    one image at a time with `tf.map_fn`. The sizes the
                    images' headers declare are checked first against the
                    decode budget (`Preprocessing.max_image_pixels` each,
                    `max_batch_pixels` in all): a request over it fails
                    with InvalidArgumentError before anything is decoded,
                    and the server goes on serving.
  serving_images    images: float32 [N, S, S, 3], RGB 0-255, already
                    preprocessed.

Both return `classes` (int64 [N], the top-1 class) and `probabilities`
(float32 [N, num_classes], softmax of the logits). The module's
`preprocess_image_bytes` function (image_bytes -> float32 [N, S, S, 3]) is
saved with it, the pixels serving_default classifies. `predict.predict`
classifies image files with such a SavedModel, or straight from a checkpoint
through the same module (`bin/predict`).
"""

from absl import logging
import tensorflow as tf

from effnet_gin.data import image_header
from effnet_gin.data import preprocessing as preprocessing_lib
from effnet_gin.model import build_model
from effnet_gin.model.inference import inference_model
from effnet_gin.checkpoints import averaging
from effnet_gin.checkpoints import checkpointing
from effnet_gin.serving import export_dirs
from effnet_gin.serving import converters
from effnet_gin.serving import endpoints as endpoints_lib
from effnet_gin.serving import formats
from effnet_gin.serving import labels
from effnet_gin.checkpoints import run_dir
from effnet_gin.checkpoints.checkpointing import checkpoint_num_classes

SERVING_DEFAULT = "serving_default"
SERVING_IMAGES = "serving_images"


class ServingModule(tf.Module):
  """A classifier with serving signatures over encoded and decoded images.

  Args:
    model: a Keras model mapping float32 RGB 0-255 [N, S, S, 3] to logits.
    image_size: S, the resolution images are preprocessed to.
    preprocessing: the eval crop and resize, a `Preprocessing` (give the one
      the eval pipeline uses); None takes the reference's.
    output_name: what `model` outputs (`endpoints.output_model`): None or
      'logits' (logits: the signatures return `classes` and
      `probabilities`, or `classes` and `logits` when 'logits' was asked),
      'probabilities' (returned as `classes` and `probabilities`), or an
      endpoint name (returned alone, under that name).
  """

  def __init__(self, model, image_size, preprocessing=None, output_name=None):
    super().__init__(name="efficientnet_serving")
    self.model = model
    self.output_name = output_name
    self.image_size = image_size
    self.preprocessing = preprocessing or preprocessing_lib.REFERENCE
    self.preprocess_image_bytes = tf.function(
        self._preprocess_image_bytes,
        input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    self.serve_image_bytes = tf.function(
        self._serve_image_bytes,
        input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    self.serve_images = tf.function(
        self._classify, input_signature=[
            tf.TensorSpec([None, image_size, image_size, 3], tf.float32,
                          name="images")
        ])

  def signatures(self):
    """The signatures to save, keyed by signature name."""
    return {
        SERVING_DEFAULT: self.serve_image_bytes,
        SERVING_IMAGES: self.serve_images
    }

  def _classify(self, images):
    outputs = tf.cast(self.model(images, training=False), tf.float32)
    if self.output_name not in (None, "logits", "probabilities"):
      return {self.output_name: outputs}
    classes = tf.argmax(outputs, axis=-1, output_type=tf.int64)
    if self.output_name == "logits":
      return {"classes": classes, "logits": outputs}
    if self.output_name is None:
      outputs = tf.nn.softmax(outputs)
    return {"classes": classes, "probabilities": outputs}

  def _preprocess_image_bytes(self, image_bytes):
    size = self.image_size
    checked = image_header.check_batch_budget(
        image_bytes, self.preprocessing.max_image_pixels,
        self.preprocessing.max_batch_pixels)
    with tf.control_dependencies([checked]):
      image_bytes = tf.identity(image_bytes)
    return tf.map_fn(
        lambda encoded: preprocessing_lib.preprocess_for_eval(
            encoded, size, self.preprocessing), image_bytes,
        fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))

  def _serve_image_bytes(self, image_bytes):
    return self._classify(self.preprocess_image_bytes(image_bytes))


# ---------------------------------------------------------------------------
# Restoring a checkpoint for serving.
# ---------------------------------------------------------------------------


def resolve_serving_checkpoint(model_dir, checkpoint="latest"):
  """Finds the checkpoint prefix to serve.

  Args:
    model_dir: the training run's directory; needed for 'latest' and 'best'.
    checkpoint: 'latest' (or None) for model_dir's newest checkpoint,
      'best' for the evaluator's best (model_dir/best, see `run_dir`), or a
      checkpoint prefix or directory.

  Returns:
    A checkpoint prefix.

  Raises:
    FileNotFoundError: when there is no such checkpoint.
    ValueError: when 'latest' or 'best' is asked without a model_dir.
  """
  checkpoint = checkpoint or "latest"
  if checkpoint in ("latest", "best"):
    if not model_dir:
      raise ValueError(f"checkpoint={checkpoint!r} needs a model_dir")
    if checkpoint == "best":
      best_dir = run_dir.path(model_dir, run_dir.BEST_DIR)
      best = tf.train.latest_checkpoint(best_dir)
      if best is None:
        raise FileNotFoundError(
            f"no best checkpoint in {best_dir!r}: bin/evaluator writes it "
            "there as it evaluates the run")
      return best
    return checkpointing.resolve_checkpoint(model_dir)
  return checkpointing.resolve_checkpoint(checkpoint)


def restore_for_serving(path, *, use_ema=True, num_classes=None,
                        model_builder=build_model):
  """Builds the model with `model_builder` and restores `path` into it.

  Args:
    path: a checkpoint prefix following the trainer's contract.
    use_ema: load the EMA weights when the checkpoint has them (a checkpoint
      trained without EMA is served with its raw weights, with a warning).
    num_classes: the classifier width; None reads it from the checkpoint, so
      a fine-tuned run exports without restating its class count.
    model_builder: `model_builder(num_classes=)` builds the run's model.

  Returns:
    The Keras model holding the weights to serve.
  """
  num_classes = num_classes or checkpoint_num_classes(path)
  model = model_builder(num_classes=num_classes)
  ema = None
  if use_ema and checkpointing.has_ema(path):
    ema = averaging.ExponentialMovingAverage(model)
  elif use_ema:
    logging.warning(
        "Checkpoint %s has no EMA weights; serving its raw "
        "weights", path)
  checkpointing.build_checkpoint(
      model=model,
      ema=ema).read(path).assert_existing_objects_matched().expect_partial()
  if ema is not None:
    ema.copy_to_model()
  logging.info("Restored %s%s for serving", path,
               " (EMA weights)" if ema is not None else "")
  return model


def load_serving_module(*, model_dir=None, checkpoint="latest", image_size=None,
                        use_ema=True, num_classes=None,
                        model_builder=build_model, preprocessing=None):
  """Restores a checkpoint into a `ServingModule`.

  Args:
    model_dir: the training run's directory (for 'latest' and 'best').
    checkpoint: 'latest', 'best', or a checkpoint prefix or directory.
    image_size: the serving resolution; None takes the model's input size.
    use_ema: serve the EMA weights when the checkpoint has them.
    num_classes: the classifier width; None reads it from the checkpoint.
    model_builder: builds the run's model (see `restore_for_serving`).
    preprocessing: the serving crop and resize (see `ServingModule`).

  Returns:
    A `(ServingModule, checkpoint_path)` pair.
  """
  path = resolve_serving_checkpoint(model_dir, checkpoint)
  model = restore_for_serving(path, use_ema=use_ema, num_classes=num_classes,
                              model_builder=model_builder)
  image_size = image_size or model.input_shape[1]
  if not image_size or image_size <= 0:
    raise ValueError(f"image_size must be a positive number of pixels, got "
                     f"{image_size!r}")
  return ServingModule(model, image_size, preprocessing), path


def export(
    *,
    model_dir,
    export_dir,
    image_size=None,
    checkpoint="latest",
    use_ema=True,
    num_classes=None,
    overwrite=False,
    format="saved_model",
    batch_size=1,
    labels_file=None,  # pylint: disable=redefined-builtin
    endpoint=None,
    output=None,
    model_builder=build_model,
    preprocessing=None,
    lite_exporter=converters.export_lite):
  """Exports a checkpoint of a run for serving or for a device.

  Every format exports the inference graph (`inference_model`: batch norm
  folded, plain swish, no dropout) and writes export_dir/metadata.json
  (`formats.build_metadata`). The export is written beside export_dir
  and moved into place only when complete (`export_dirs.staged_export`).

  Args:
    model_dir: the training run's directory (local or gs://).
    export_dir: where to write the export (local or gs://).
    image_size: the serving resolution; None takes the model's input size.
    checkpoint: 'latest' (default), 'best' (the evaluator's best by top-1,
      model_dir/best), or a checkpoint prefix or directory.
    use_ema: export the EMA weights (as the reference does) when present.
    num_classes: the classifier width; None reads it from the checkpoint.
    overwrite: replace a model export_dir already holds, once the new one
      is complete.
    format: one of `formats.FORMATS`: 'saved_model' (default), 'tflite',
      'tflite_float16', 'tflite_int8' or 'onnx' (see `lite_export`).
    batch_size: the fixed batch size of a TFLite or ONNX model.
    labels_file: optional class names recorded in metadata.json (see
      `read_labels`).
    endpoint: export this endpoint of the network instead of the logits
      (the reference's `--endpoint_name`: 'pooled_features',
      'reduction_1' …; see `endpoints`).
    output: 'logits' or 'probabilities' (their softmax, as the
      reference's TFLite export). None keeps each format's default: a
      SavedModel returns `classes` and `probabilities`, TFLite and ONNX
      return logits.
    model_builder: `model_builder(num_classes=)` builds the run's model.
    preprocessing: the serving signature's crop and resize, a
      `Preprocessing` (give the eval pipeline's); None takes the reference's.
    lite_exporter: `lite_exporter(model, format_name=, output_dir=,
      image_size=, batch_size=, output_name=)` writes the TFLite and ONNX formats
      (`converters.export_lite`; int8 needs its `dataset_builder`).

  Returns:
    export_dir.

  Raises:
    FileNotFoundError: when the checkpoint does not exist.
    FileExistsError: when export_dir already holds a model and `overwrite`
      is False.
    ValueError: for an unknown format, endpoint or output, int8 without
      calibration data, or labels that do not match the class count.
  """
  formats.check_format(format)
  endpoints_lib.check_output(endpoint, output)
  export_dirs.check_destination(export_dir, overwrite)
  module, path = load_serving_module(model_dir=model_dir, checkpoint=checkpoint,
                                     image_size=image_size, use_ema=use_ema,
                                     num_classes=num_classes,
                                     model_builder=model_builder,
                                     preprocessing=preprocessing)
  model = inference_model(module.model)
  names = labels.checked_labels(labels_file, model.output_shape[-1])
  output_name = _output_name(endpoint, output, format)
  exported = inference_model(
      endpoints_lib.output_model(
          module.model, endpoint=endpoint, output=output,
          endpoints_builder=lambda: model_builder(
              num_classes=model.output_shape[-1], return_endpoints=True)))
  with export_dirs.staged_export(export_dir, overwrite=overwrite) as staging:
    extra = {"output_name": output_name or "probabilities"}
    if format == formats.SAVED_MODEL:
      module = ServingModule(exported, module.image_size, module.preprocessing,
                             output_name=output_name)
      tf.saved_model.save(module, staging, signatures=module.signatures())
    else:
      extra.update(
          lite_exporter(exported, format_name=format, output_dir=staging,
                        image_size=module.image_size, batch_size=batch_size,
                        output_name=output_name))
    formats.write_metadata(
        staging,
        formats.build_metadata(model, format_name=format,
                               image_size=module.image_size, checkpoint=path,
                               labels=names,
                               resize_method=module.preprocessing.resize_method,
                               ema=use_ema and checkpointing.has_ema(path),
                               extra=extra))
  logging.info("Exported %s%s as %s (%dx%d) in %s", path,
               f" ({output_name})" if output_name else "", format,
               module.image_size, module.image_size, export_dir)
  return export_dir


def _output_name(endpoint, output, format_name):
  """The exported output's name: an endpoint, 'logits' or 'probabilities'.

  None for a SavedModel of the default output (classes and probabilities).
  """
  if endpoint not in (None, "logits", "head"):
    return endpoint
  if output is None and format_name != formats.SAVED_MODEL:
    return "logits"
  return output
