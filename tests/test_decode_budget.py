"""Tests of the decode budget: images are refused from their header.

Bomb-like files (large, single-colour, so small on disk) are refused by the
three decoders, the input pipeline's preprocessing, the exported serving
signature and `bin/predict`, before they are decoded. The budgets here are
small (1 megapixel against 2,000 x 2,000 images) to keep the test's memory
low; one JPEG declares 13,000 x 13,000 in its header and must be refused
without the ~500 MB its decoding would take.
"""
import os
import resource
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from effnet_gin.data import image_header
from effnet_gin.data import preprocessing
from effnet_gin.serving import exporter
from effnet_gin.serving import predict as predict_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZE = 32
BUDGET = 1_000_000
SMALL_BUDGET = preprocessing.Preprocessing(max_image_pixels=BUDGET,
                                           max_batch_pixels=3 * BUDGET)
BUDGET_TEXT = "over the decode budget of 1,000,000 pixels per image"


def _flat_image(height, width):
  return np.full((height, width, 3), (30, 120, 200), np.uint8)


def _jpeg_declaring(height, width):
  """A small JPEG whose frame header is rewritten to height x width."""
  data = bytearray(tf.io.encode_jpeg(_flat_image(16, 16)).numpy())
  sof = data.index(b"\xff\xc0")  # Baseline frame: length, precision, H, W.
  data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
  return bytes(data)


@pytest.fixture(scope="module", name="files")
def files_fixture(tmp_path_factory):
  """Bombs at the test budget (JPEG, PNG), a 13k header and a normal image."""
  folder = tmp_path_factory.mktemp("images")
  big = _flat_image(2000, 2000)
  contents = {
      "bomb.jpg": tf.io.encode_jpeg(big).numpy(),
      "bomb.png": tf.io.encode_png(big).numpy(),
      "huge.jpg": _jpeg_declaring(13000, 13000),
      "good.jpg": tf.io.encode_jpeg(_flat_image(600, 800)).numpy(),
      "good.png": tf.io.encode_png(_flat_image(300, 200)).numpy(),
  }
  paths = {}
  for name, data in contents.items():
    paths[name] = str(folder / name)
    with open(paths[name], "wb") as f:
      f.write(data)
  return paths


def _read(path):
  with open(path, "rb") as f:
    return f.read()


def test_header_sizes_of_jpeg_and_png_without_decoding(files):
  assert image_header.header_shape(_read(
      files["bomb.jpg"])).numpy().tolist() == [2000, 2000]
  assert image_header.header_shape(_read(
      files["good.png"])).numpy().tolist() == [300, 200]
  assert image_header.header_shape(_read(
      files["huge.jpg"])).numpy().tolist() == [13000, 13000]
  gif = tf.io.encode_png(_flat_image(4, 4)).numpy().replace(
      b"\x89PNG", b"GIF8", 1)
  assert image_header.header_shape(gif).numpy().tolist() == [-1, -1]


@pytest.mark.parametrize("name", ["bomb.jpg", "bomb.png"])
def test_input_pipeline_refuses_an_image_over_budget(files, name):
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="2000 x 2000 pixels .4.0 megapixels.*" +
                     BUDGET_TEXT):
    preprocessing.preprocess_for_eval(tf.constant(_read(files[name])),
                                      IMAGE_SIZE, SMALL_BUDGET)
  dataset = tf.data.Dataset.from_tensor_slices([
      _read(files["good.jpg"]), _read(files[name])
  ]).map(lambda image: preprocessing.preprocess_for_train(
      image, IMAGE_SIZE, [1, 2], SMALL_BUDGET))
  iterator = iter(dataset)
  assert next(iterator).shape == [IMAGE_SIZE, IMAGE_SIZE, 3]
  with pytest.raises(tf.errors.InvalidArgumentError, match=BUDGET_TEXT):
    next(iterator)
  # The default budget (40 megapixels) lets the same image through.
  image = preprocessing.preprocess_for_eval(tf.constant(_read(files[name])),
                                            IMAGE_SIZE)
  assert image.shape == [IMAGE_SIZE, IMAGE_SIZE, 3]


def test_13k_jpeg_is_refused_before_it_is_decoded(files):
  encoded = tf.constant(_read(files["huge.jpg"]))
  before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  with pytest.raises(
      tf.errors.InvalidArgumentError,
      match="13000 x 13000 pixels .169.0 megapixels.*"
      "40,000,000 pixels per image"):
    preprocessing.preprocess_for_eval(encoded, IMAGE_SIZE)
  grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss -
              before) / 1024
  # Decoding it would take 13000 * 13000 * 3 bytes, about 507 MB.
  assert grown_mb < 100


def test_budget_settings_are_checked():
  for value in (0, -1, 2.5, True, "40M"):
    with pytest.raises(ValueError, match="max_image_pixels"):
      preprocessing.Preprocessing(max_image_pixels=value)
  assert preprocessing.Preprocessing(
      max_image_pixels=None, max_batch_pixels=None).max_image_pixels is None


@pytest.fixture(scope="module", name="saved_model")
def saved_model_fixture(tmp_path_factory):
  """A tiny classifier exported with the test budget, as the exporter does."""
  model = keras.Sequential([
      keras.Input([IMAGE_SIZE, IMAGE_SIZE, 3]),
      keras.layers.GlobalAveragePooling2D(),
      keras.layers.Dense(3)
  ])
  module = exporter.ServingModule(model, IMAGE_SIZE, SMALL_BUDGET)
  export_dir = str(tmp_path_factory.mktemp("serving"))
  tf.saved_model.save(module, export_dir, signatures=module.signatures())
  return export_dir


def test_serving_signature_fails_the_request_and_keeps_serving(
    files, saved_model):
  serve = tf.saved_model.load(saved_model).signatures[exporter.SERVING_DEFAULT]
  good = _read(files["good.jpg"])
  for name in ("bomb.jpg", "bomb.png", "huge.jpg"):
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="image 1 of the batch declares .*" + BUDGET_TEXT):
      serve(image_bytes=tf.constant([good, _read(files[name])]))
  # Images of 0.48 MP, each within budget: seven (3.36 MP) are over the
  # batch's 3 MP, four and a PNG (1.98 MP) are not.
  with pytest.raises(
      tf.errors.InvalidArgumentError,
      match="a batch of 7 images declares 3360000 pixels in "
      "all, over the decode budget of 3,000,000 pixels per "
      "batch"):
    serve(image_bytes=tf.constant([good] * 7))
  outputs = serve(image_bytes=tf.constant([good] * 4 +
                                          [_read(files["good.png"])]))
  assert outputs["probabilities"].shape == [5, 3]


def test_bin_predict_reports_the_bomb_and_classifies_the_rest(
    files, saved_model):
  paths = [files["good.jpg"], files["bomb.jpg"], files["good.png"]]
  completed = subprocess.run([
      sys.executable,
      os.path.join(REPO, "bin", "predict"), f"--saved_model={saved_model}",
      "--top_k=2"
  ] + paths, capture_output=True, text=True, timeout=120, check=False,
                             env=dict(os.environ, PYTHONPATH=REPO))
  assert completed.returncode == 1, completed.stderr[-3000:]
  lines = completed.stdout.splitlines()
  bomb = lines.index(paths[1])
  assert lines[bomb + 1].startswith("  error: image 0 of the batch declares "
                                    "2000 x 2000 pixels (4.0 megapixels)")
  assert BUDGET_TEXT in lines[bomb + 1]
  for path in (paths[0], paths[2]):
    block = lines.index(path)
    assert lines[block + 1].startswith("  1. ")
    assert lines[block + 2].startswith("  2. ")
  assert "1 of 3 images could not be classified" in completed.stderr
