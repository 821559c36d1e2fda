"""On-device formats: TFLite (float32, float16, int8) and ONNX.

`export_lite` converts the inference graph of a restored model
(`effnet_gin.model.inference.inference_model`: batch norm folded, plain
swish, no dropout or stochastic depth) and writes into a directory:

  model.tflite or model.onnx   input "images" [batch, S, S, 3] RGB pixels,
                               0-255, resized as the eval split (center crop,
                               bicubic); the input normalisation is inside.
                               Output "logits" [batch, num_classes].
      tflite, onnx       float32 in and out.
      tflite_float16     float32 in and out, float16 weights (half the size).
      tflite_int8        full-integer post-training quantization: uint8
                         pixels in (scale 1, zero point 0: the pixels as
                         they are), uint8 logits out (dequantize with the
                         output scale and zero point in metadata.json),
                         calibrated on images of the run's own eval
                         pipeline (`build_dataset`).
  metadata.json          see `build_metadata`.

Each converted model is checked with its runtime before it is kept: float
models must reproduce the Keras logits, and an int8 export is scored against
the float network on the eval split, with a warning when it loses more than
`max_int8_drop` points of top-1 (swish and squeeze-excite B-models quantize
badly; the Lite variants were designed for int8).
"""

from absl import logging
import numpy as np
import tensorflow as tf

from effnet_gin.data import build_dataset
from effnet_gin.serving import formats
from effnet_gin.serving import runtimes

# Largest |runtime - Keras| / max |Keras logit| a float export may show
# before it is refused: a guard against broken conversions, ten times what
# float32 exports show (about 1e-6 for B0; float16 3e-4).
_TOLERANCE = {"tflite": 1e-3, "onnx": 1e-3, "tflite_float16": 2e-2}


def logits_function(model, batch_size, image_size=None, output_name="logits"):
  """A tf.function from images [batch_size, S, S, 3] to {output_name: ...}.

  S is `image_size`, by default the model's input size; the output is the
  model's (logits, or what `endpoints.output_model` made it output).
  """
  size = image_size or int(model.input_shape[1])
  spec = tf.TensorSpec([batch_size, size, size, 3], tf.float32, name="images")

  @tf.function(input_signature=[spec])
  def logits(images):
    return {output_name: tf.cast(model(images, training=False), tf.float32)}

  return logits


# ---------------------------------------------------------------------------
# Calibration data: the run's own eval pipeline.
# ---------------------------------------------------------------------------

# Images int8 is calibrated on by default: the reference's export_model.py
# runs `--num_steps` (1000) calibration steps of `--batch_size` (1) eval
# images, i.e. its first 1,000 validation images.
CALIBRATION_IMAGES = 1000


def calibration_batches(*, image_size, batch_size, num_images,
                        dataset_builder=build_dataset):
  """Batches of eval-preprocessed images for int8 calibration.

  The first `num_images` images (or all, if fewer) come from
  `dataset_builder(split='eval', …)` (`build_dataset` with the run's source), are rounded and clipped to 0..255 (the uint8 pixels a device
  feeds), and the first batch has one pixel at 0 and one at 255 so that the
  input's calibrated range, and thus its quantization (scale 1, zero
  point 0), covers every uint8 value.

  Raises:
    ValueError: when no data source is configured or it yields no image.
  """
  if not num_images or num_images < 1:
    raise ValueError(f"int8 calibration needs at least one image, got "
                     f"calibration_images={num_images!r}")
  try:
    dataset = dataset_builder(split="eval", global_batch_size=batch_size,
                              image_size=image_size)
  except TypeError as e:
    if "'source'" not in str(e):
      raise
    raise ValueError(
        "tflite_int8 needs images to calibrate on, and no data source is "
        "configured: give --data_dir (or bind build_dataset.source) to the "
        f"run's data ({e})") from e
  batches, count = [], 0
  for images, _, weights in dataset.as_numpy_iterator():
    real = images[weights > 0][:num_images - count]
    batches.append(np.clip(np.round(real), 0, 255).astype(np.float32))
    count += len(real)
    if count >= num_images:
      break
  if not count:
    raise ValueError("tflite_int8 needs images to calibrate on, and the "
                     "configured eval split yielded none")
  images = np.concatenate(batches)
  images[0, 0, 0, :] = 0.0
  images[0, -1, -1, :] = 255.0
  padding = (-len(images)) % batch_size
  images = np.concatenate([images, images[:padding]])
  logging.info("Calibrating int8 on %d eval images", len(images) - padding)
  return [images[i:i + batch_size] for i in range(0, len(images), batch_size)]


# ---------------------------------------------------------------------------
# Converters.
# ---------------------------------------------------------------------------


def convert_tflite(model, format_name, *, batch_size=1, image_size=None,
                   calibration=None, output_name="logits"):
  """The .tflite flatbuffer of `model` (an inference model) in a format.

  Args:
    model: a Keras model from images 0-255 to logits.
    format_name: 'tflite', 'tflite_float16' or 'tflite_int8'.
    batch_size: the model's fixed batch size.
    image_size: the input resolution; None takes the model's.
    calibration: for int8, a list of float32 image batches
      [batch_size, S, S, 3] (see `calibration_batches`).
    output_name: the output tensor's name.

  Returns:
    The model as bytes.
  """
  function = logits_function(model, batch_size, image_size, output_name)
  # Without a trackable object the converter freezes the variables into
  # constants, so the kernels are folded and int8 calibration can run; with
  # one (the recommended route, and from_saved_model), TF 2.21 kept them as
  # VAR_HANDLE/READ_VARIABLE ops with runtime transposes, and calibration
  # failed on them ("variable != nullptr was not true").
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [function.get_concrete_function()])
  _configure_converter(converter, format_name, calibration)
  return converter.convert()


def _configure_converter(converter, format_name, calibration):
  if format_name == "tflite_float16":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
  elif format_name == "tflite_int8":
    if not calibration:
      raise ValueError("tflite_int8 needs calibration images")
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([batch]
                                                for batch in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8


def convert_onnx(model, *, batch_size=1, image_size=None, opset=17,
                 output_name="logits"):
  """The serialized ONNX model of `model` (an inference model), via tf2onnx."""
  import tf2onnx  # pylint: disable=g-import-not-at-top
  function = logits_function(model, batch_size, image_size, output_name)
  proto, _ = tf2onnx.convert.from_function(
      function, input_signature=function.input_signature, opset=opset)
  return proto.SerializeToString()


def check_against_keras(classifier, model, format_name):
  """Fails when a float export's logits differ from the Keras model's.

  Raises:
    RuntimeError: when the largest difference, relative to the largest
      Keras logit, exceeds the format's tolerance.
  """
  size = classifier.image_size
  images = tf.random.stateless_uniform([classifier.batch_size, size, size, 3],
                                       [0, 1], maxval=255.0).numpy()
  expected = np.asarray(model(images, training=False))
  error = (np.max(np.abs(classifier.logits(images) - expected)) /
           max(np.max(np.abs(expected)), 1e-6))
  if error > _TOLERANCE[format_name]:
    raise RuntimeError(f"the {format_name} export's logits differ from the "
                       f"Keras model's by {error:.2e} (relative), more than "
                       f"{_TOLERANCE[format_name]:.0e}; not exporting it")
  logging.info("%s export matches the Keras logits (relative error %.2e)",
               format_name, error)


def compare_int8(model, classifier, *, max_drop, dataset_builder=build_dataset):
  """Scores the float network and the int8 model on the eval split.

  Returns:
    {"float": metrics, "int8": metrics, "top_1_drop_points": float}; logs a
    warning when the drop exceeds `max_drop` points.
  """
  float_metrics = runtimes.evaluate_classifier(
      runtimes.KerasClassifier(model, image_size=classifier.image_size),
      dataset_builder=dataset_builder)
  int8_metrics = runtimes.evaluate_classifier(classifier,
                                              dataset_builder=dataset_builder)
  drop = 100.0 * (float_metrics["top_1_accuracy"] -
                  int8_metrics["top_1_accuracy"])
  comparison = {
      "float": float_metrics,
      "int8": int8_metrics,
      "top_1_drop_points": drop
  }
  logging.info("int8 vs float on %d eval images: %s",
               int8_metrics["num_examples"],
               formats.format_comparison(comparison))
  if drop > max_drop:
    logging.warning(
        "int8 loses %.2f points of top-1 (more than "
        "max_int8_drop=%.2f). %s", drop, max_drop, _int8_advice(model))
  return comparison


def _int8_advice(model):
  if "lite" in model.name:
    return ("Calibrate on more images (--calibration_images), or ship the "
            "float16 model.")
  return ("Swish and squeeze-excite B-models quantize badly: for int8 on a "
          "device train an EfficientNet-Lite variant (ReLU6, no SE, made "
          "for int8), or ship the float16 model.")


# ---------------------------------------------------------------------------
# The export.
# ---------------------------------------------------------------------------


def export_lite(model, *, format_name, output_dir, image_size=None,
                batch_size=1, calibration_images=CALIBRATION_IMAGES,
                compare_on_eval=True, max_int8_drop=2.0, num_threads=2,
                opset=17, output_name="logits", dataset_builder=build_dataset):
  """Converts `model` into `output_dir/model.tflite` or `model.onnx`.

  Args:
    model: the inference model (see `inference_model`).
    format_name: one of formats.FORMATS other than 'saved_model'.
    output_dir: an existing directory to write the model file into.
    image_size: the input resolution; None takes the model's.
    batch_size: the exported model's fixed batch size.
    calibration_images: eval images to calibrate int8 on.
    compare_on_eval: after an int8 export of the logits or probabilities,
      score it and the float network on the whole eval split (an
      endpoint's features have no accuracy to compare).
    max_int8_drop: warn when int8 loses more top-1 points than this.
    num_threads: LiteRT/onnxruntime threads for the checks.
    opset: the ONNX opset.
    output_name: what `model` outputs: 'logits', 'probabilities' or an
      endpoint's name (see `endpoints.output_model`); names the output.
    dataset_builder: `dataset_builder(split='eval', global_batch_size=,
      image_size=)` gives the eval images int8 calibrates on and is compared
      on (`build_dataset` with the run's source bound).

  Returns:
    A dict for metadata.json: input and output tensors and, for int8, the
    comparison with float.

  Raises:
    ValueError: for a bad format, or int8 without calibration data.
    RuntimeError: when a float export does not reproduce the Keras logits.
  """
  formats.check_format(format_name)
  if format_name == formats.SAVED_MODEL:
    raise ValueError("export_lite writes TFLite and ONNX; a SavedModel is "
                     "written by export")
  if isinstance(batch_size,
                bool) or not isinstance(batch_size, int) or (batch_size < 1):
    raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
  size = image_size or int(model.input_shape[1])
  if format_name == "onnx":
    content = convert_onnx(model, batch_size=batch_size, image_size=size,
                           opset=opset, output_name=output_name)
  else:
    calibration = None
    if format_name == "tflite_int8":
      calibration = calibration_batches(image_size=size, batch_size=batch_size,
                                        num_images=calibration_images,
                                        dataset_builder=dataset_builder)
    content = convert_tflite(model, format_name, batch_size=batch_size,
                             image_size=size, calibration=calibration,
                             output_name=output_name)
  path = f"{output_dir}/{formats.model_file(format_name)}"
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(content)
  classifier = runtimes.load_classifier(path, num_threads=num_threads)
  extra = {
      "model_file":
          formats.model_file(format_name),
      "size_bytes":
          len(content),
      **tensor_metadata(classifier, format_name, output_name=output_name, output_shape=model.output_shape)
  }
  if format_name in _TOLERANCE:
    check_against_keras(classifier, model, format_name)
  elif compare_on_eval and output_name in ("logits", "probabilities"):
    extra["int8_vs_float"] = compare_int8(model, classifier,
                                          max_drop=max_int8_drop,
                                          dataset_builder=dataset_builder)
  return extra


def tensor_metadata(classifier, format_name, *, output_name="logits",
                    output_shape=None):
  """The input and output tensors' shapes, types and quantization.

  `output_shape` is the model's (batch dimension ignored); None: [batch,
  classes].
  """
  shape = [
      classifier.batch_size, classifier.image_size, classifier.image_size, 3
  ]
  entry = {
      "input": {
          "name": "images",
          "shape": shape,
          "layout": "NHWC, RGB",
          "dtype": "float32",
          "range": [0, 255]
      },
      "output": {
          "name": output_name,
          "shape": [
              classifier.batch_size,
              *(output_shape[1:] if output_shape else [classifier.num_classes])
          ],
          "dtype": "float32"
      }
  }
  if format_name == "tflite_int8":
    # pylint: disable=protected-access
    for key, details in (("input", classifier._input), ("output",
                                                        classifier._output)):
      scale, zero_point = details["quantization"]
      entry[key].update(
          dtype=np.dtype(details["dtype"]).name, quantization={
              "scale": float(scale),
              "zero_point": int(zero_point)
          })
  return entry
