"""Classifying image files: what `bin/predict` prints.

`predict` classifies with a SavedModel, or restores a run's checkpoint into
the exporter's serving module; `predict_exported` with a .tflite or .onnx
file through its runtime (`runtimes`). Both return the top-k classes of each
file; `format_predictions` renders them.

A file that cannot be classified (an image over the decode budget,
`Preprocessing.max_image_pixels`, refused from its header; or bytes that do
not decode) does not stop the others: its result is the error's message, a
string, in place of the classes.
"""
import json

import numpy as np
import tensorflow as tf

from effnet_gin.data import preprocessing as preprocessing_lib
from effnet_gin.model import build_model
from effnet_gin.serving import exporter
from effnet_gin.serving import formats
from effnet_gin.serving import labels
from effnet_gin.serving import runtimes


def predict(image_files, *, saved_model_dir=None, model_dir=None,
            checkpoint="latest", labels_file=None, top_k=5, use_ema=True,
            batch_size=32, model_builder=build_model, preprocessing=None):
  """Classifies image files with a SavedModel or a checkpoint.

  Args:
    image_files: paths (local or gs://) of JPEG or PNG files.
    saved_model_dir: an exported SavedModel; its `serving_default` is used.
    model_dir: without `saved_model_dir`, the run to restore `checkpoint`
      from (the model is built by `model_builder`).
    checkpoint: 'latest', 'best', or a checkpoint prefix or directory.
    labels_file: optional class names (see `read_labels`).
    top_k: how many classes to report per image.
    use_ema: with a checkpoint, use its EMA weights when present.
    batch_size: images per call of the signature.
    model_builder: with a checkpoint, builds the run's model.
    preprocessing: with a checkpoint, the crop and resize (a SavedModel
      carries its own).

  Returns:
    One `(image_file, [(class_id, class_name_or_None, probability), ...])`
    per image, the classes by decreasing probability; for an image that
    could not be classified, `(image_file, error_message)`.

  Raises:
    FileNotFoundError: for a missing image, labels file or model.
    ValueError: when neither a SavedModel nor a model_dir is given, or the
      labels do not match the class count.
  """
  if not image_files:
    raise ValueError("give at least one image file to classify")
  if saved_model_dir:
    if not tf.io.gfile.exists(f"{saved_model_dir}/saved_model.pb"):
      raise FileNotFoundError(f"no SavedModel in {saved_model_dir!r}")
    serve = tf.saved_model.load(saved_model_dir).signatures[
        exporter.SERVING_DEFAULT]
  elif model_dir or checkpoint not in (None, "latest", "best"):
    module, _ = exporter.load_serving_module(model_dir=model_dir,
                                             checkpoint=checkpoint,
                                             use_ema=use_ema,
                                             model_builder=model_builder,
                                             preprocessing=preprocessing)
    serve = module.serve_image_bytes
  else:
    raise ValueError("give a SavedModel directory or a model_dir to restore "
                     "a checkpoint from")
  encoded = []
  for path in image_files:
    if not tf.io.gfile.exists(path):
      raise FileNotFoundError(f"image file {path!r} does not exist")
    with tf.io.gfile.GFile(path, "rb") as f:
      encoded.append(f.read())
  probabilities = _classify_batches(serve, encoded, batch_size)
  classified = [p for p in probabilities if not isinstance(p, str)]
  names = None
  if classified:
    names = labels.checked_labels(labels_file, len(classified[0]))
  results = []
  for path, probs in zip(image_files, probabilities):
    if isinstance(probs, str):
      results.append((path, probs))
      continue
    top = probs.argsort()[::-1][:top_k]
    results.append((path, [
        (int(c), names[c] if names else None, float(probs[c])) for c in top
    ]))
  return results


def _classify_batches(serve, encoded, batch_size):
  """Each image's probabilities, or its error message.

  A batch the signature refuses (an image over the decode budget, or one
  that does not decode) is retried one image at a time, so only the images
  at fault fail.
  """
  probabilities = []
  for start in range(0, len(encoded), batch_size):
    batch = encoded[start:start + batch_size]
    try:
      outputs = serve(image_bytes=tf.constant(batch))
      probabilities.extend(outputs["probabilities"].numpy())
    except tf.errors.InvalidArgumentError as error:
      if len(batch) == 1:
        probabilities.append(error_line(error))
      else:
        probabilities.extend(_classify_batches(serve, batch, 1))
  return probabilities


def error_line(error):
  """A TensorFlow error in one line: an assertion's message, else line 1."""
  message = error.message
  marker = "assertion failed: ["
  if marker in message:
    message = message.split(marker, 1)[1].split("\n", 1)[0]
    return message[:-1] if message.endswith("]") else message
  return message.strip().splitlines()[0]


def format_predictions(results):
  """Renders `predict`'s results as text, one block per image.

  An image that could not be classified gets an `error:` line instead.
  """
  lines = []
  for path, classes in results:
    lines.append(path)
    if isinstance(classes, str):
      lines.append(f"  error: {classes}")
      continue
    for rank, (class_id, name, probability) in enumerate(classes, start=1):
      label = f"{class_id} ({name})" if name else f"{class_id}"
      lines.append(f"  {rank}. {label}: {probability:.4f}")
  return "\n".join(lines)


def classify_files(classifier, image_files, *, names=None, top_k=5,
                   preprocessing=None, outputs_probabilities=False):
  """The top-k classes of image files, as `exporter.predict` returns them.

  Each file is decoded and preprocessed as the eval split (center crop,
  bicubic resize to the model's resolution) with `preprocessing` (a
  `Preprocessing`; None takes the reference's).

  Returns:
    One `(image_file, [(class_id, name_or_None, probability), ...])` per
    image, by decreasing probability; `(image_file, error_message)` for an
    image that does not decode or is over the decode budget.

  Raises:
    FileNotFoundError: for a missing image.
  """
  results = []
  for path in image_files:
    try:
      image = preprocessing_lib.preprocess_for_eval(
          _read_image(path), classifier.image_size, preprocessing or
          preprocessing_lib.REFERENCE)
    except tf.errors.InvalidArgumentError as error:
      results.append((path, error_line(error)))
      continue
    logits = classifier.logits(image.numpy()[None])[0]
    probabilities = (logits if outputs_probabilities else
                     tf.nn.softmax(logits).numpy())
    top = np.argsort(-probabilities, kind="stable")[:top_k]
    results.append(
        (path, [(int(c), names[c] if names else None, float(probabilities[c]))
                for c in top]))
  return results


def _read_image(path):
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"image file {path!r} does not exist")
  return tf.io.read_file(path)


def predict_exported(model_path, image_files, *, labels_file=None, top_k=5,
                     num_threads=None, preprocessing=None):
  """`bin/predict --tflite/--onnx`: the top-k of image files.

  Class names come from `labels_file`, else from the labels recorded in the
  metadata.json beside the model (when the export was given labels).

  Raises:
    FileNotFoundError: for a missing model, image or labels file.
    ValueError: when the labels do not match the class count.
  """
  if not image_files:
    raise ValueError("give at least one image file to classify")
  classifier = runtimes.load_classifier(model_path, num_threads=num_threads)
  names = labels.read_labels(labels_file) if labels_file else None
  metadata_path = f"{_model_dir(model_path)}/{formats.METADATA_FILE}"
  metadata = {}
  if tf.io.gfile.exists(metadata_path):
    with tf.io.gfile.GFile(metadata_path) as f:
      metadata = json.load(f)
  output_name = metadata.get("output_name", "logits")
  if output_name not in ("logits", "probabilities"):
    raise ValueError(f"{model_path!r} outputs the endpoint {output_name!r}, "
                     "not classes: export it without --endpoint to classify")
  if names is None:
    names = metadata.get("labels")
  if names is not None and len(names) != classifier.num_classes:
    raise ValueError(f"{len(names)} class names for a model of "
                     f"{classifier.num_classes} classes")
  return classify_files(classifier, image_files, names=names, top_k=top_k,
                        preprocessing=preprocessing,
                        outputs_probabilities=output_name == "probabilities")


def _model_dir(model_path):
  if tf.io.gfile.isdir(model_path):
    return model_path
  return model_path.rsplit("/", 1)[0] if "/" in model_path else "."
