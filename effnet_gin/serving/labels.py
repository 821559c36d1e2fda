"""Class names for exported models and predictions.

Line i (0-based) of a labels file names class i, the model's label.
"""
import json

import tensorflow as tf


def checked_labels(labels_file, num_classes):
  names = read_labels(labels_file) if labels_file else None
  if names is not None and len(names) != num_classes:
    raise ValueError(
        f"labels file {labels_file!r} names {len(names)} classes but the "
        f"model has {num_classes} (one name per class, class 0 first, no "
        "background class)")
  return names


def read_labels(labels_file):
  """Reads class names: one per line, or a JSON list or {"0": name} map.

  Line i (0-based) names class i, the model's label (ImageNet's on-disk
  labels 1..1000 minus the offset 1; no background class).

  Raises:
    FileNotFoundError: when the file does not exist.
    ValueError: when a JSON map has a non-integer key.
  """
  if not tf.io.gfile.exists(labels_file):
    raise FileNotFoundError(f"labels file {labels_file!r} does not exist")
  with tf.io.gfile.GFile(labels_file) as f:
    text = f.read()
  try:
    parsed = json.loads(text)
  except json.JSONDecodeError:
    return [line.strip() for line in text.splitlines() if line.strip()]
  if isinstance(parsed, list):
    return [str(name) for name in parsed]
  if isinstance(parsed, dict):
    try:
      names = {int(key): str(name) for key, name in parsed.items()}
    except ValueError as e:
      raise ValueError(f"labels file {labels_file!r}: JSON keys must be "
                       f"class numbers ({e})") from e
    return [names.get(i, str(i)) for i in range(max(names, default=-1) + 1)]
  raise ValueError(f"labels file {labels_file!r}: expected lines, a JSON "
                   f"list or a JSON object, got {type(parsed).__name__}")
