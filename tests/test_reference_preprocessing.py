"""effnet_gin's eval pixels against the reference implementation's own.

tests/fixtures/reference_preprocessing/eval_224.npy is what the reference's
preprocessing returns for the four JPEGs there (see its README). A published
checkpoint keeps its accuracy only if it sees those pixels, through the input
pipeline and through the exported SavedModel alike.
"""
import os

import gin
import numpy as np
import pytest
import tensorflow as tf

from effnet_gin import configurables
from effnet_gin.data import build_dataset
from effnet_gin.data import Preprocessing
from effnet_gin.data import serialize_imagenet_example
from effnet_gin.data import TFRecordSource
from effnet_gin.model import build_model
from effnet_gin.checkpoints import checkpointing

import data_helpers

from effnet_gin.serving import exporter as export_lib

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures",
                        "reference_preprocessing")
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
SIZE = 224
TOLERANCE = 0.5  # levels of 0..255


@pytest.fixture(scope="module")
def jpegs():
  encoded = []
  for name in PHOTOS:
    with open(os.path.join(FIXTURES, f"{name}.jpg"), "rb") as f:
      encoded.append(f.read())
  return encoded


@pytest.fixture(scope="module")
def reference():
  return np.load(os.path.join(FIXTURES, "eval_224.npy"))


@pytest.fixture(name="data_dir")
def data_dir_fixture(jpegs, tmp_path):
  """One validation TFRecord file of the photographs, photo i labelled i."""
  data_helpers.write_records(tmp_path / "validation-00000-of-00001", [
      serialize_imagenet_example(jpeg, label)
      for label, jpeg in enumerate(jpegs)
  ])
  return str(tmp_path)


@pytest.fixture(name="checkpoint")
def checkpoint_fixture(tmp_path):
  """The prefix of a checkpoint of a tiny model."""
  gin.parse_config("""
      build_model.width_coefficient = 0.1
      build_model.depth_coefficient = 0.1
      build_model.num_classes = 5
      build_model.image_size = 224
  """)
  return checkpointing.build_checkpoint(
      model=configurables.build_model()).write(str(tmp_path / "run" / "ckpt-1"))


def export(checkpoint, export_dir):
  """Exports `checkpoint` at 224 px; returns the loaded SavedModel."""
  configurables.export(model_dir=None, export_dir=export_dir,
                       checkpoint=checkpoint, image_size=SIZE)
  return tf.saved_model.load(export_dir)


def eval_images(data_dir, preprocessing=None):
  """The eval split's images, ordered by label, via build_dataset."""
  dataset = build_dataset(split="eval", global_batch_size=len(PHOTOS),
                          image_size=SIZE, num_classes=len(PHOTOS),
                          source=TFRecordSource(data_dir, label_offset=0),
                          preprocessing=preprocessing)
  (images, labels, weights), = list(dataset)
  assert weights.numpy().tolist() == [1.0] * len(PHOTOS)
  return images.numpy()[np.argsort(labels.numpy())]


def assert_matches_reference(images, reference):
  for name, actual, expected in zip(PHOTOS, images, reference):
    difference = np.abs(actual - expected)
    assert difference.max() <= TOLERANCE, (
        f"{name}: mean {difference.mean():.3f}, max {difference.max():.3f}")


def test_input_pipeline_eval_matches_reference(data_dir, reference):
  assert_matches_reference(eval_images(data_dir), reference)


def test_saved_model_image_bytes_matches_reference(checkpoint, jpegs, reference,
                                                   tmp_path):
  loaded = export(checkpoint, str(tmp_path / "serving"))
  image_bytes = tf.constant(jpegs)
  assert_matches_reference(
      loaded.preprocess_image_bytes(image_bytes).numpy(), reference)
  # The signature classifies those pixels: as if fed the reference's.
  by_bytes = loaded.signatures["serving_default"](image_bytes=image_bytes)
  by_images = loaded.signatures["serving_images"](images=tf.constant(reference))
  np.testing.assert_allclose(by_bytes["probabilities"],
                             by_images["probabilities"], atol=1e-4)


def test_tf2_bicubic_is_not_the_reference(data_dir, reference):
  images = eval_images(data_dir, Preprocessing(resize_method="bicubic"))
  assert np.abs(images - reference).mean() > 1.0


def test_gin_preprocessing_reaches_pipeline_and_export_alike(
    checkpoint, data_dir, jpegs, reference):
  gin.parse_config("""
      effnet_gin.data.Preprocessing.eval_crop_padding = 0
      effnet_gin.data.Preprocessing.resize_method = 'bilinear'
  """)
  from_pipeline = eval_images(data_dir, configurables.Preprocessing())
  module, _ = export_lib.load_serving_module(
      checkpoint=checkpoint, image_size=SIZE,
      model_builder=configurables.build_model,
      preprocessing=configurables.Preprocessing())
  served = module.preprocess_image_bytes(tf.constant(jpegs)).numpy()
  np.testing.assert_allclose(served, from_pipeline, atol=1e-4)
  # The bindings took effect: a wider crop, another resize.
  assert np.abs(from_pipeline - reference).mean() > 5.0


def test_build_dataset_takes_no_preprocessing_of_its_own_from_gin():
  # One source of truth: a binding here would bypass the exporter.
  with pytest.raises(ValueError, match="preprocessing"):
    gin.parse_config("effnet_gin.data.build_dataset.preprocessing = "
                     "@effnet_gin.data.Preprocessing()")
