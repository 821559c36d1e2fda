"""Export formats, the files they write, and what metadata.json records.

`FORMATS` are the names `bin/exporter --format` takes; `MODEL_FILES` the file
each writes, by which an export directory is recognised; metadata.json (see
`build_metadata`) sits beside the model file.
"""
import json

import tensorflow as tf

SAVED_MODEL = "saved_model"
FORMATS = (SAVED_MODEL, "tflite", "tflite_float16", "tflite_int8", "onnx")
TFLITE_FILE = "model.tflite"
ONNX_FILE = "model.onnx"
MODEL_FILES = {
    SAVED_MODEL: "saved_model.pb",
    "tflite": TFLITE_FILE,
    "tflite_float16": TFLITE_FILE,
    "tflite_int8": TFLITE_FILE,
    "onnx": ONNX_FILE
}
METADATA_FILE = "metadata.json"


def check_format(format_name):
  """Raises ValueError unless `format_name` is one of `FORMATS`."""
  if format_name not in FORMATS:
    raise ValueError(f"unknown export format {format_name!r}; choose one of "
                     f"{', '.join(FORMATS)}")


def model_file(format_name):
  """The file a format's export is recognised by."""
  check_format(format_name)
  return MODEL_FILES[format_name]


def format_comparison(comparison):
  """One line: float and int8 top-1/top-5 and the top-1 drop."""
  f, q = comparison["float"], comparison["int8"]
  return (f"float top-1 {100 * f['top_1_accuracy']:.2f}% top-5 "
          f"{100 * f['top_5_accuracy']:.2f}% | int8 top-1 "
          f"{100 * q['top_1_accuracy']:.2f}% top-5 "
          f"{100 * q['top_5_accuracy']:.2f}% | drop "
          f"{comparison['top_1_drop_points']:.2f} points "
          f"({q['num_examples']} images)")


def build_metadata(model, *, format_name, image_size, checkpoint, ema,
                   resize_method, labels=None, extra=None):
  """What metadata.json records about an export.

  Keys: format, variant, image_size, num_classes, labels (or null),
  normalization (mean and stddev on the 0-255 scale, applied inside the
  model), preprocessing (with `resize_method`, the eval pipeline's resize:
  see `Preprocessing`), checkpoint, ema (whether its EMA weights were
  exported), and the format's extra keys
  (input/output tensors, size, the int8 comparison).
  """
  normalization = model.get_layer("normalization")
  return {
      "format": format_name,
      "variant": model.name,
      "image_size": int(image_size),
      "num_classes": int(model.output_shape[-1]),
      "labels": labels,
      "normalization": {
          "mean": list(normalization.mean),
          "stddev": list(normalization.stddev),
          "inside_model": True
      },
      "preprocessing": ("decode, center crop of S / (S + 32) of the shorter "
                        f"side, {resize_method} resize to S x S; RGB 0-255"),
      "checkpoint": checkpoint,
      "ema": bool(ema),
      **(extra or {}),
  }


def write_metadata(output_dir, metadata):
  """Writes `metadata` as output_dir/metadata.json."""
  with tf.io.gfile.GFile(f"{output_dir}/{METADATA_FILE}", "w") as f:
    json.dump(metadata, f, indent=2)
    f.write("\n")


def read_metadata(export_dir):
  """The metadata.json of an export directory, or None when absent."""
  path = f"{export_dir}/{METADATA_FILE}"
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def describe_export(export_dir):
  """A few lines on an export: format, model file and size, int8 vs float."""
  metadata = read_metadata(export_dir)
  if metadata is None:
    return f"{export_dir}: no {METADATA_FILE}"
  lines = [
      f"{export_dir}: {metadata['format']} of {metadata['variant']} "
      f"at {metadata['image_size']}x{metadata['image_size']}, "
      f"{metadata['num_classes']} classes"
  ]
  if "size_bytes" in metadata:
    lines.append(f"  {metadata['model_file']}: "
                 f"{metadata['size_bytes'] / 2**20:.2f} MiB")
  if "int8_vs_float" in metadata:
    lines.append("  " + format_comparison(metadata["int8_vs_float"]))
  return "\n".join(lines)
