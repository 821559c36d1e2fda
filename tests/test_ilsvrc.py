"""bin/imagenet_to_tfrecords: raw ILSVRC2012 → the reference's TFRecords.

A miniature raw layout is generated here: 3 synsets of 6 training images,
a flat folder of 9 validation images with synset_labels.txt, and three
files named .JPEG that are not RGB JPEGs (a PNG, a CMYK JPEG, a grayscale
JPEG). Image number i is a flat colour whose red level is
`_BASE + _STEP * i`, so an image read back through any path names the file
it came from.
"""
import io
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from effnet_gin.data.sources import imagenet_example
from effnet_gin.data.sources import tfrecord
from effnet_gin.data.writers import ilsvrc

BIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   "bin", "imagenet_to_tfrecords")
# Sorted: synset k has 1-based label k + 1, 0-based label k.
SYNSETS = ("n01440764", "n01443537", "n02102040")
VALIDATION_SYNSETS = ("n02102040", "n01440764", "n01443537", "n01443537",
                      "n02102040", "n01440764", "n01440764", "n02102040",
                      "n01443537")
PNG_FILE = "n01440764_2.JPEG"
CMYK_FILE = "n01443537_3.JPEG"
GRAY_FILE = "ILSVRC2012_val_00000004.JPEG"
HEIGHT, WIDTH = 30, 40
TRAIN_SHARDS, VALIDATION_SHARDS = 3, 2
_BASE, _STEP = 12, 8
# What tensorflow/tpu's tools/datasets/imagenet_to_gcs.py writes per record
# (its _convert_to_example): feature key → kind, one value each.
REFERENCE_FEATURES = {
    "image/height": "int64_list",
    "image/width": "int64_list",
    "image/colorspace": "bytes_list",
    "image/channels": "int64_list",
    "image/class/label": "int64_list",
    "image/class/synset": "bytes_list",
    "image/format": "bytes_list",
    "image/filename": "bytes_list",
    "image/encoded": "bytes_list",
}


def _colour(index):
  red = _BASE + _STEP * index
  return (red, 255 - red, 100)


def _image_bytes(index, name):
  """The file content of image `index`; `name` picks the odd formats."""
  image = Image.new("RGB", (WIDTH, HEIGHT), _colour(index))
  out = io.BytesIO()
  if name == PNG_FILE:
    image.save(out, "PNG")
  elif name == CMYK_FILE:
    image.convert("CMYK").save(out, "JPEG", quality=95)
  elif name == GRAY_FILE:
    Image.new("L", (WIDTH, HEIGHT),
              _colour(index)[0]).save(out, "JPEG", quality=95)
  else:
    image.save(out, "JPEG", quality=95)
  return out.getvalue()


def _write_layout(root):
  """Writes the raw layout; returns {file name: (index, synset)}."""
  files = {}
  for k, synset in enumerate(SYNSETS):
    os.makedirs(root / "train" / synset)
    for j in range(6):
      files[f"{synset}_{j}.JPEG"] = (len(files), synset)
      (root / "train" / synset / f"{synset}_{j}.JPEG").write_bytes(
          _image_bytes(len(files) - 1, f"{synset}_{j}.JPEG"))
  os.makedirs(root / "validation")
  for j, synset in enumerate(VALIDATION_SYNSETS):
    name = f"ILSVRC2012_val_{j + 1:08d}.JPEG"
    files[name] = (len(files), synset)
    (root / "validation" / name).write_bytes(_image_bytes(len(files) - 1, name))
  (root / "synset_labels.txt").write_text("".join(
      synset + "\n" for synset in VALIDATION_SYNSETS))
  return files


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
  root = tmp_path_factory.mktemp("raw")
  return root, _write_layout(root)


@pytest.fixture(scope="module")
def converted(raw, tmp_path_factory):
  output_dir = tmp_path_factory.mktemp("records")
  result = ilsvrc.convert_raw_imagenet(str(raw[0]), str(output_dir),
                                       train_shards=TRAIN_SHARDS,
                                       validation_shards=VALIDATION_SHARDS,
                                       num_workers=2, progress=False)
  return output_dir, result


def _records(path):
  return [
      tf.train.Example.FromString(record)
      for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator()
  ]


def _index_of(encoded):
  red = float(np.mean(tf.io.decode_jpeg(encoded, channels=3)[..., 0]))
  return round((red - _BASE) / _STEP)


def test_tfrecord_source_reads_every_image_once_with_its_label(raw, converted):
  files = raw[1]
  synset_of = {index: synset for index, synset in files.values()}
  source = tfrecord.TFRecordSource(str(converted[0]))
  for split, is_training, count in (("train", True, 18), ("eval", False, 9)):
    seen = []
    for example in source.examples(split, is_training=is_training, seed=1):
      index = _index_of(example["image"].numpy())
      seen.append(index)
      assert int(example["label"]) == SYNSETS.index(synset_of[index])
    assert len(seen) == count
    assert len(set(seen)) == count
  assert converted[1]["synsets"] == list(SYNSETS)


def test_every_record_has_the_reference_features(raw, converted):
  output_dir, result = converted
  assert sorted(os.listdir(output_dir)) == [
      "imagenet_to_tfrecords.json", "train-00000-of-00003",
      "train-00001-of-00003", "train-00002-of-00003",
      "validation-00000-of-00002", "validation-00001-of-00002"
  ]
  names = []
  for path in result["train_files"] + result["validation_files"]:
    for example in _records(path):
      feature = example.features.feature
      assert {key: feature[key].WhichOneof("kind") for key in feature} == \
          REFERENCE_FEATURES
      value = {
          key: getattr(feature[key], kind).value[0]
          for key, kind in REFERENCE_FEATURES.items()
      }
      assert all(
          len(getattr(feature[key], kind).value) == 1
          for key, kind in REFERENCE_FEATURES.items())
      name = value["image/filename"].decode()
      names.append(name)
      index, synset = raw[1][name]
      assert value["image/class/synset"] == synset.encode()
      assert value["image/class/label"] == SYNSETS.index(synset) + 1
      assert (value["image/height"], value["image/width"]) == (HEIGHT, WIDTH)
      assert value["image/channels"] == 3
      assert value["image/colorspace"] == b"RGB"
      assert value["image/format"] == b"JPEG"
      encoded = value["image/encoded"]
      image = Image.open(io.BytesIO(encoded))
      assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (WIDTH,
                                                                        HEIGHT))
      pixels = np.asarray(image, np.float32).reshape(-1, 3).mean(0)
      expected = _colour(
          index) if name != GRAY_FILE else (_colour(index)[0],) * 3
      np.testing.assert_allclose(pixels, expected, atol=3)
      if name not in (PNG_FILE, CMYK_FILE, GRAY_FILE):
        original = raw[0] / ("validation" if name.startswith("ILSVRC") else
                             f"train/{synset}") / name
        assert encoded == original.read_bytes(), name
  assert sorted(names) == sorted(raw[1])
  assert result["reencoded"] == sorted([(PNG_FILE, "PNG"),
                                        (CMYK_FILE, "CMYK JPEG"),
                                        (GRAY_FILE, "grayscale JPEG")])


def test_validation_keeps_file_order_and_training_shards_mix_classes(converted):
  _, result = converted
  validation = [
      example.features.feature["image/filename"].bytes_list.value[0]
      for path in result["validation_files"]
      for example in _records(path)
  ]
  assert validation == [
      f"ILSVRC2012_val_{j:08d}.JPEG".encode() for j in range(1, 10)
  ]
  train = [[
      example.features.feature["image/class/synset"].bytes_list.value[0]
      for example in _records(path)
  ]
           for path in result["train_files"]]
  assert [len(shard) for shard in train] == [6, 6, 6]
  assert all(len(set(shard)) >= 2 for shard in train), train


def _run(*flags, **kwargs):
  return subprocess.Popen([
      sys.executable, BIN, "--progress=false", "--num_workers=2",
      f"--train_shards={TRAIN_SHARDS}",
      f"--validation_shards={VALIDATION_SHARDS}", *flags
  ], stdout=subprocess.DEVNULL, text=True, **kwargs)


def test_killed_conversion_resumes_to_the_same_files(raw, converted, tmp_path):
  """One training image is a FIFO no one writes: reading it blocks, so the
  run finishes the other shards and hangs in the middle of that one, where
  it is killed. The rerun, with the real image back, resumes."""
  reference_dir, result = converted
  root = tmp_path / "raw"
  shutil.copytree(raw[0], root)
  middle = _records(result["train_files"][1])[3].features.feature
  synset = middle["image/class/synset"].bytes_list.value[0].decode()
  name = middle["image/filename"].bytes_list.value[0].decode()
  blocking = root / "train" / synset / name
  os.remove(blocking)
  os.mkfifo(blocking)
  output_dir = tmp_path / "records"
  others = sorted(set(os.listdir(reference_dir)) - {"train-00001-of-00003"})
  with open(tmp_path / "stderr", "w+") as stderr:
    process = _run(f"--raw_data_dir={root}", f"--output_dir={output_dir}",
                   stderr=stderr)
    deadline = time.monotonic() + 60
    while not all((output_dir / other).exists() for other in others):
      assert process.poll() is None, stderr.seek(0) or stderr.read()
      assert time.monotonic() < deadline, "the other shards never appeared"
      time.sleep(0.05)  # Polling for the files, not waiting for a state.
    process.send_signal(signal.SIGKILL)
    process.wait()
  assert sorted(
      os.listdir(output_dir)) == sorted(others +
                                        [".partial-train-00001-of-00003"])
  finished = {
      other: os.stat(output_dir / other).st_mtime_ns for other in others
  }

  os.remove(blocking)
  shutil.copy(raw[0] / "train" / synset / name, blocking)
  # Resumed in-process (one TensorFlow start-up fewer).
  resumed = ilsvrc.convert_raw_imagenet(str(root), str(output_dir),
                                        train_shards=TRAIN_SHARDS,
                                        validation_shards=VALIDATION_SHARDS,
                                        num_workers=2, progress=False)
  assert resumed["written"] == [str(output_dir / "train-00001-of-00003")]
  assert sorted(os.listdir(output_dir)) == sorted(os.listdir(reference_dir))
  for other in os.listdir(reference_dir):
    assert (output_dir / other).read_bytes() == \
        (reference_dir / other).read_bytes(), other
  assert {
      other: os.stat(output_dir / other).st_mtime_ns for other in others
  } == finished


def test_a_missing_train_folder_stops_the_script_with_one_line(raw, tmp_path):
  root = tmp_path / "raw"
  shutil.copytree(raw[0], root)
  shutil.rmtree(root / "train")
  # The output named as the reference script names it: were that not an
  # alias, the script would stop on a missing --output_dir instead.
  process = _run(f"--raw_data_dir={root}",
                 f'--gcs_output_path={tmp_path / "records"}',
                 stderr=subprocess.PIPE)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 1
  assert "Traceback" not in stderr
  assert stderr.strip().splitlines()[-1] == (
      f"bin/imagenet_to_tfrecords: train/ folder '{root}/train' is missing: "
      "raw_data_dir must hold train/<synset>/*.JPEG, validation/*.JPEG and "
      "synset_labels.txt")
  assert not (tmp_path / "records").exists()


@pytest.mark.parametrize("labels, message", [
    ("n01440764\n" * 8, r"synset_labels.txt' has 8 synsets, but .*"
     r"validation' has 9 \*.JPEG files"),
    ("n01440764\n" * 10, "has 10 synsets, but"),
    ("n01440764\n\n" * 4 + "n01440764\n", "line 2 is empty"),
], ids=["too_few", "too_many", "empty_line"])
def test_a_bad_label_file_is_named(raw, tmp_path, labels, message):
  root = tmp_path / "raw"
  shutil.copytree(raw[0], root)
  (root / "synset_labels.txt").write_text(labels)
  with pytest.raises(ilsvrc.RawDataError, match=message):
    ilsvrc.convert_raw_imagenet(str(root), str(tmp_path / "records"),
                                train_shards=TRAIN_SHARDS,
                                validation_shards=VALIDATION_SHARDS)
  assert not (tmp_path / "records").exists()


def test_an_image_that_does_not_decode_is_named(raw, tmp_path):
  root = tmp_path / "raw"
  shutil.copytree(raw[0], root)
  broken = root / "validation" / "ILSVRC2012_val_00000007.JPEG"
  broken.write_bytes(broken.read_bytes()[:200])
  with pytest.raises(ilsvrc.RawDataError, match="val_00000007.JPEG"):
    ilsvrc.convert_raw_imagenet(str(root), str(tmp_path / "records"),
                                train_shards=TRAIN_SHARDS,
                                validation_shards=VALIDATION_SHARDS,
                                num_workers=2, progress=False)
  assert not (tmp_path / "records" / "validation-00001-of-00002").exists()


def test_a_rerun_with_other_settings_stops_before_writing(raw, converted):
  output_dir, _ = converted
  before = sorted(os.listdir(output_dir))
  with pytest.raises(ilsvrc.ConversionError, match="other seed, train_shards "):
    ilsvrc.convert_raw_imagenet(str(raw[0]), str(output_dir), train_shards=2,
                                validation_shards=VALIDATION_SHARDS, seed=1,
                                progress=False)
  assert sorted(os.listdir(output_dir)) == before


def _pil_file(mode, fmt, **options):
  out = io.BytesIO()
  Image.new(mode, (WIDTH, HEIGHT), 90 if mode == "L" else
            (90,) * len(mode)).save(out, fmt, **options)
  return out.getvalue()


@pytest.mark.parametrize(
    "data, components", [
        (_pil_file("RGB", "JPEG"), 3),
        (_pil_file("RGB", "JPEG", progressive=True), 3),
        (_pil_file("L", "JPEG"), 1),
        (_pil_file("CMYK", "JPEG"), 4),
        (_pil_file("RGB", "PNG"), None),
        (_pil_file("RGB", "JPEG")[:20], None),
    ], ids=["baseline", "progressive", "grayscale", "cmyk", "png", "truncated"])
def test_jpeg_components_reads_the_frame_header(data, components):
  assert ilsvrc.jpeg_components(data) == components


def test_descriptive_features_come_all_or_none():
  with pytest.raises(ValueError, match="all of synset, filename"):
    imagenet_example.serialize_imagenet_example(b"x", 1, synset="n01440764")


def test_non_local_directories_go_through_tf_io_gfile(raw, converted):
  """TensorFlow's in-memory ram:// file system stands in for gs://."""
  reference_dir, result = converted
  root = "ram://test_ilsvrc/raw"
  for directory, _, names in os.walk(raw[0]):
    relative = os.path.relpath(directory, raw[0])
    target = root if relative == "." else f"{root}/{relative}"
    tf.io.gfile.makedirs(target)
    for name in names:
      tf.io.gfile.copy(os.path.join(directory, name),
                       os.path.join(target, name))
  output_dir = "ram://test_ilsvrc/records"
  ram_result = ilsvrc.convert_raw_imagenet(root, output_dir,
                                           train_shards=TRAIN_SHARDS,
                                           validation_shards=VALIDATION_SHARDS,
                                           progress=False)
  assert sorted(tf.io.gfile.listdir(output_dir)) == sorted(
      os.listdir(reference_dir))
  for name in os.listdir(reference_dir):
    with tf.io.gfile.GFile(os.path.join(output_dir, name), "rb") as f:
      assert f.read() == (reference_dir / name).read_bytes(), name
  assert ram_result["reencoded"] == result["reencoded"]
