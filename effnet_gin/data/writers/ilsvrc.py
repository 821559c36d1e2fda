"""Converts raw ILSVRC2012 into the reference's ImageNet TFRecords.

Reads the layout that tensorflow/tpu's `tools/datasets/imagenet_to_gcs.py`
reads:

  RAW/train/<synset>/*.JPEG     training images, one folder per class
  RAW/validation/*.JPEG         validation images, flat
  RAW/synset_labels.txt         the synset of each validation image, one a
                                line, in sorted file name order

and writes what it writes: `train-XXXXX-of-01024` and
`validation-XXXXX-of-00128` shards of tf.Examples with its features
(`imagenet_example.serialize_imagenet_example` with the descriptive ones),
label = 1-based position of the synset in the sorted union of the training
and validation synsets. `bin/imagenet_to_tfrecords` runs it.

Where it differs from that script, on purpose:
- Whatever is not an RGB JPEG is re-encoded as one (quality 100, as the
  script does for its listed files), found by content: PNG and other
  formats, CMYK and grayscale JPEGs. The script converts 23 files it lists by
  name and keeps grayscale JPEGs as they are (labelled 'RGB').
- Training files are sorted, then shuffled with `random.Random(seed)`, so
  training shards mix classes. The script shuffles a copy of its index list
  and keeps the glob's order.
- Shard sizes differ by at most one (`tfrecord_shards.shard_bounds`); the
  script puts ceil(n / shards) files in each, so its last shard is shorter.
- Shards are written in parallel, each atomically, and a re-run skips the
  shards that exist: with the same input, seed and shard counts it finishes
  the same files an uninterrupted run writes. `imagenet_to_tfrecords.json`
  in the output records those, so a re-run with others stops.
"""
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import random
import sys
import threading

from absl import logging
import tensorflow as tf
import tqdm

from effnet_gin.data.sources import imagenet_example
from effnet_gin.data.writers import tfrecord_shards

TRAIN_DIR = "train"
VALIDATION_DIR = "validation"
LABELS_FILE = "synset_labels.txt"
TRAIN_SHARDS = 1024
VALIDATION_SHARDS = 128
RECORD_FILE = "imagenet_to_tfrecords.json"
_PATTERN = "*.JPEG"
_JPEG_QUALITY = 100
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic);
# not 0xC4 (Huffman tables), 0xC8 (reserved) or 0xCC (arithmetic tables).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class ConversionError(ValueError):
  """The input, the shard counts or the output directory cannot be used."""


class RawDataError(ConversionError):
  """The raw data is not the layout `imagenet_to_gcs` reads, has fewer
  images than shards, or holds an image that does not decode."""


@dataclasses.dataclass(frozen=True)
class RawImagenet:
  """The files of a raw ILSVRC2012 layout, in the order they are written.

  Attributes:
    synsets: the sorted synsets; synset i has label i + 1.
    train: (path, synset) of the training images, shuffled.
    validation: (path, synset) of the validation images, sorted by path.
  """
  synsets: tuple
  train: tuple
  validation: tuple


def find_raw_imagenet(raw_data_dir, *, seed=0):
  """Lists a raw ILSVRC2012 layout (see the module docstring).

  Args:
    raw_data_dir: directory (local or `gs://`) holding `train/`,
      `validation/` and `synset_labels.txt`.
    seed: seed of the shuffle of the training files.

  Returns:
    A `RawImagenet`.

  Raises:
    RawDataError: a folder or the label file is missing, a folder holds no
      `*.JPEG` file, or the label file's line count differs from the number
      of validation images.
  """
  if not tf.io.gfile.isdir(raw_data_dir):
    raise RawDataError(f"raw_data_dir {raw_data_dir!r} is not a directory")
  train = [(path, os.path.basename(os.path.dirname(path)))
           for path in _glob_images(raw_data_dir, TRAIN_DIR, "*", _PATTERN)]
  random.Random(seed).shuffle(train)
  paths = _glob_images(raw_data_dir, VALIDATION_DIR, _PATTERN)
  labels_path = os.path.join(raw_data_dir, LABELS_FILE)
  if not tf.io.gfile.exists(labels_path):
    raise RawDataError(f"validation label file {labels_path!r} is missing")
  with tf.io.gfile.GFile(labels_path) as f:
    labels = [line.strip() for line in f.read().splitlines()]
  while labels and not labels[-1]:
    labels.pop()
  if len(labels) != len(paths):
    raise RawDataError(
        f"{labels_path!r} has {len(labels)} synsets, but "
        f"{os.path.join(raw_data_dir, VALIDATION_DIR)!r} has {len(paths)} "
        f"{_PATTERN} files: it needs one synset per file, in sorted order")
  if "" in labels:
    raise RawDataError(f'{labels_path!r} line {labels.index("") + 1} is '
                       "empty: every line must name a synset")
  train_synsets = {synset for _, synset in train}
  if not set(labels) <= train_synsets:
    logging.warning(
        "Validation synsets without a training folder (they get "
        "labels too): %s", sorted(set(labels) - train_synsets))
  return RawImagenet(synsets=tuple(sorted(train_synsets | set(labels))),
                     train=tuple(train), validation=tuple(zip(paths, labels)))


def _glob_images(raw_data_dir, folder, *pattern):
  """Sorted paths matching `raw_data_dir/folder/*pattern`; raises if none."""
  directory = os.path.join(raw_data_dir, folder)
  if not tf.io.gfile.isdir(directory):
    raise RawDataError(
        f"{folder}/ folder {directory!r} is missing: raw_data_dir must hold "
        f"{TRAIN_DIR}/<synset>/{_PATTERN}, {VALIDATION_DIR}/{_PATTERN} and "
        f"{LABELS_FILE}")
  paths = sorted(tf.io.gfile.glob(os.path.join(directory, *pattern)))
  if not paths:
    raise RawDataError(f"no {os.path.join(*pattern)} files in {directory!r}")
  return paths


def jpeg_components(data):
  """The colour component count a JPEG's frame header declares.

  Args:
    data: bytes of a file.

  Returns:
    int (1 grayscale, 3 YCbCr/RGB, 4 CMYK/YCCK), or None when `data` is not
    a JPEG or its header ends before a frame header.
  """
  if data[:3] != b"\xff\xd8\xff":
    return None
  i = 2
  while i + 4 <= len(data) and data[i] == 0xFF:
    marker = data[i + 1]
    if marker == 0xFF:  # Fill byte.
      i += 1
    elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # No length field.
      i += 2
    elif marker in _SOF_MARKERS:
      # Length (2), precision (1), height (2), width (2), components (1).
      return data[i + 9] if i + 9 < len(data) else None
    elif marker == 0xDA:  # Start of scan before any frame header.
      return None
    else:
      i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
  return None


def rgb_jpeg(data):
  """An image file's bytes as an RGB JPEG, re-encoded only if needed.

  RGB (YCbCr) JPEGs are kept byte for byte; anything else (PNG, GIF, BMP,
  CMYK or grayscale JPEG) is decoded to RGB and encoded as a quality-100
  JPEG. Every image is decoded, so a corrupt one is found here.

  Args:
    data: bytes of an image file.

  Returns:
    (jpeg bytes, height, width, reason): `reason` says what was re-encoded
    ('PNG', 'CMYK JPEG', ...), None when the bytes are kept.

  Raises:
    tf.errors.InvalidArgumentError: the bytes do not decode as an image.
  """
  components = jpeg_components(data)
  if components == 3:
    height, width, _ = tf.io.decode_jpeg(data, channels=3).shape
    return data, height, width, None
  if components is not None:
    reason = {
        1: "grayscale JPEG",
        4: "CMYK JPEG"
    }.get(components, f"{components}-component JPEG")
  elif data[:8] == b"\x89PNG\r\n\x1a\n":
    reason = "PNG"
  else:
    reason = "not a JPEG"
  image = tf.io.decode_image(data, channels=3, expand_animations=False)
  encoded = tf.io.encode_jpeg(image, format="rgb", quality=_JPEG_QUALITY)
  height, width, _ = image.shape
  return encoded.numpy(), height, width, reason


def convert_raw_imagenet(raw_data_dir, output_dir, *, train_shards=TRAIN_SHARDS,
                         validation_shards=VALIDATION_SHARDS, seed=0,
                         num_workers=None, progress=True):
  """Writes raw ILSVRC2012 as the reference's TFRecords, resuming a run.

  Shards that exist in `output_dir` are skipped. `imagenet_to_tfrecords.json`
  there records the seed, the shard counts and a digest of the file list, so
  a re-run with other input or settings stops instead of mixing two
  orders.

  Args:
    raw_data_dir: the raw layout (see the module docstring), local or
      `gs://`.
    output_dir: where the shards go (created if missing), local or `gs://`.
    train_shards: number of `train-*` files.
    validation_shards: number of `validation-*` files.
    seed: seed of the shuffle of the training files.
    num_workers: shards written at once (threads); default: the CPU count.
    progress: show a progress bar (images) on stderr.

  Returns:
    dict with 'synsets' (label i + 1 is synsets[i]), 'train_files' and
    'validation_files' (all shard paths, in order), 'written' (the shards
    this run wrote) and 'reencoded' (sorted (file name, reason) pairs of
    the images this run re-encoded).

  Raises:
    RawDataError: see `find_raw_imagenet`; or fewer images than shards, or
      an image that does not decode (the shards written so far stay).
    ConversionError: `output_dir` holds shards of another conversion, or
      `num_workers` < 1.
  """
  if num_workers is not None and num_workers < 1:
    raise ConversionError(f"num_workers must be >= 1, got {num_workers}")
  raw = find_raw_imagenet(raw_data_dir, seed=seed)
  counts = {TRAIN_DIR: train_shards, VALIDATION_DIR: validation_shards}
  plan = {
      prefix: _plan_shards(output_dir, prefix, images, counts[prefix])
      for prefix, images in ((TRAIN_DIR, raw.train), (VALIDATION_DIR,
                                                      raw.validation))
  }
  tf.io.gfile.makedirs(output_dir)
  _check_record(output_dir, raw_data_dir, raw, seed, counts)
  existing = {
      os.path.basename(path)
      for path in tf.io.gfile.glob(os.path.join(output_dir, "*-*-of-*"))
  }
  todo = [
      shard for shards in plan.values() for shard in shards
      if os.path.basename(shard[0]) not in existing
  ]
  logging.info(
      "%d synsets, %d training and %d validation images; %d of %d "
      "shards already written, writing %d.", len(raw.synsets), len(raw.train),
      len(raw.validation),
      sum(map(len, plan.values())) - len(todo), sum(map(len, plan.values())),
      len(todo))
  label_of = {synset: i + 1 for i, synset in enumerate(raw.synsets)}
  reencoded = _write_shards(todo, label_of, num_workers or os.cpu_count(),
                            progress)
  logging.info("Wrote %d shards to %s (%d images re-encoded as RGB JPEG).",
               len(todo), output_dir, len(reencoded))
  return {
      "synsets": list(raw.synsets),
      "train_files": [path for path, _ in plan[TRAIN_DIR]],
      "validation_files": [path for path, _ in plan[VALIDATION_DIR]],
      "written": [path for path, _ in todo],
      "reencoded": sorted(reencoded)
  }


def _plan_shards(output_dir, prefix, images, num_shards):
  """[(shard path, its (path, synset) images)] of one split."""
  try:
    tfrecord_shards.check_num_shards(prefix, num_shards, len(images))
  except ValueError as e:
    raise RawDataError(str(e)) from None
  plan = []
  for shard in range(num_shards):
    begin, end = tfrecord_shards.shard_bounds(shard, len(images), num_shards)
    plan.append((tfrecord_shards.shard_path(output_dir, prefix, shard,
                                            num_shards), images[begin:end]))
  return plan


def _check_record(output_dir, raw_data_dir, raw, seed, counts):
  """Writes the run's record, or checks it against an earlier run's."""
  digest = hashlib.sha256()
  for path, synset in sorted(raw.train) + list(raw.validation):
    digest.update(f"{os.path.relpath(path, raw_data_dir)}\t{synset}\n".encode())
  record = {
      "seed": seed,
      "train_shards": counts[TRAIN_DIR],
      "validation_shards": counts[VALIDATION_DIR],
      "num_train": len(raw.train),
      "num_validation": len(raw.validation),
      "files_sha256": digest.hexdigest()
  }
  path = os.path.join(output_dir, RECORD_FILE)
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      earlier = json.load(f)
    changed = sorted(key for key in record if record[key] != earlier.get(key))
    if changed:
      raise ConversionError(
          f"output_dir {output_dir!r} holds shards of a conversion with other "
          f'{", ".join(changed)} ({path}); use a new output_dir, or the '
          "earlier input and settings")
    return
  others = [
      name for prefix in counts
      for name in tf.io.gfile.glob(os.path.join(output_dir, prefix + "-*"))
  ]
  if others:
    raise ConversionError(
        f"output_dir {output_dir!r} holds shards ({os.path.basename(others[0])}"
        f", ...) but no {RECORD_FILE} of this tool; use a new output_dir")
  partial = os.path.join(output_dir,
                         tfrecord_shards.PARTIAL_PREFIX + RECORD_FILE)
  with tf.io.gfile.GFile(partial, "w") as f:
    f.write(json.dumps(record, indent=1, sort_keys=True) + "\n")
  tf.io.gfile.rename(partial, path, overwrite=True)


def _write_shards(shards, label_of, num_workers, progress):
  """Writes [(path, images)] shards in `num_workers` threads.

  Returns:
    list of (file name, reason) of the re-encoded images.
  """
  reencoded = []
  lock = threading.Lock()
  # Redrawn often on a terminal, seldom into a log file.
  with tqdm.tqdm(total=sum(len(images) for _, images in shards), unit="img",
                 disable=not progress, desc="ILSVRC to TFRecords",
                 mininterval=0.5 if sys.stderr.isatty() else 60) as bar:

    def advance():
      with lock:
        bar.update(1)

    def write(path, images):
      tfrecord_shards.write_shard(
          path, _examples(images, label_of, advance, reencoded))
      logging.debug("Wrote %s (%d images).", path, len(images))

    with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
      futures = [pool.submit(write, *shard) for shard in shards]
      try:
        for future in concurrent.futures.as_completed(futures):
          future.result()
      except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
  return reencoded


def _examples(images, label_of, on_image, reencoded):
  """Yields the serialized examples of (path, synset) images, in order."""
  for path, synset in images:
    with tf.io.gfile.GFile(path, "rb") as f:
      data = f.read()
    try:
      encoded, height, width, reason = rgb_jpeg(data)
    except tf.errors.InvalidArgumentError as e:
      raise RawDataError(
          f"{path!r} does not decode as an image: {e.message}") from None
    name = os.path.basename(path)
    if reason:
      logging.info("Re-encoding %s (%s) as an RGB JPEG.", path, reason)
      reencoded.append((name, reason))
    yield imagenet_example.serialize_imagenet_example(encoded, label_of[synset],
                                                      synset=synset,
                                                      filename=name,
                                                      height=height,
                                                      width=width)
    on_image()
