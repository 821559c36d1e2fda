"""bin/import_checkpoint and fine-tuning from its output (and from a reference
checkpoint directly), with the shipped finetune.gin."""
import json
import os
import re

import gin
import numpy as np
import pytest
import tensorflow as tf

from effnet_gin import configurables
from effnet_gin import cli
from effnet_gin.data import parse_imagenet_example
from effnet_gin.data import write_fake_imagenet
from effnet_gin.model import build_model
from effnet_gin.checkpoints import load_pretrained
from effnet_gin.checkpoints import averaging
from effnet_gin.checkpoints import checkpointing
from effnet_gin.checkpoints import importer
from test_pretrained import write_reference_copy
import trainer_helpers

TINY_B0 = os.path.join(os.path.dirname(__file__), "fixtures",
                       "reference_checkpoints", "tiny_b0")
# Width 0.1 and depth 0.5 (meta.json) are inferred from the shapes; the
# resolution is not in the weights.
TINY_B0_FLAGS = ["--image_size=64"]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  """tiny_b0 imported by bin/import_checkpoint; returns the model_dir."""
  model_dir = str(tmp_path_factory.mktemp("imported") / "b0")
  output = trainer_helpers.run_logged(
      trainer_helpers.script("import_checkpoint") +
      [f"--source={TINY_B0}", f"--model_dir={model_dir}"] + TINY_B0_FLAGS,
      model_dir + ".log")
  assert "efficientnet-b0 (reference format, EMA weights" in output
  with open(f"{model_dir}/model.gin") as f:
    bindings = f.read()
  assert "build_model.width_coefficient = 0.1\n" in bindings
  assert "build_model.depth_coefficient = 0.5\n" in bindings
  return model_dir


def fixture_logits():
  images = np.load(os.path.join(TINY_B0, "inputs_0_255.npy"))
  return images, np.load(os.path.join(TINY_B0, "logits.npy"))


def test_imported_checkpoint_holds_the_ema_weights_as_weights_and_ema(imported):
  assert sorted(os.listdir(imported)) == [
      "checkpoint", "ckpt-0.data-00000-of-00001", "ckpt-0.index", "model.gin"
  ]
  assert tf.train.latest_checkpoint(imported) == f"{imported}/ckpt-0"
  gin.parse_config_file(f"{imported}/model.gin")
  model = configurables.build_model()
  ema = averaging.ExponentialMovingAverage(model)
  checkpointing.build_checkpoint(model=model, ema=ema).read(
      f"{imported}/ckpt-0").assert_existing_objects_matched().expect_partial()
  images, expected = fixture_logits()
  assert np.abs(model(images).numpy() - expected).max() <= 1e-4
  for variable, average in zip(averaging.averaged_variables(model),
                               ema.averages):
    np.testing.assert_array_equal(variable.numpy(), average.numpy())


def test_evaluator_exporter_and_predict_run_on_the_import(imported, tmp_path):
  data_dir = str(tmp_path / "data")
  write_fake_imagenet(data_dir, num_train=8, num_eval=12, num_classes=10,
                      image_size=72, train_shards=1, eval_shards=1,
                      kind="learnable")
  flags = [
      "--gin_file=b0_cpu.gin", f"--gin_file={imported}/model.gin",
      f"--model_dir={imported}", f"--data_dir={data_dir}",
      "--gin_param=NUM_EVAL_IMAGES = 12", "--gin_param=EVAL_BATCH_SIZE = 4",
      "--gin_param=effnet_gin.train.build_strategy.kind = 'cpu'"
  ]
  trainer_helpers.run_logged(
      trainer_helpers.script("evaluator") + flags +
      [f"--checkpoint={imported}/ckpt-0"], str(tmp_path / "evaluator.log"))
  with open(os.path.join(imported, "eval", "results.jsonl")) as f:
    result = json.loads(f.readline())
  assert result["checkpoint"] == f"{imported}/ckpt-0"
  assert result["num_examples"] == 12
  assert 0.0 <= result["top_1_accuracy"] <= result["top_5_accuracy"] <= 1.0

  export_dir = str(tmp_path / "serving")
  trainer_helpers.run_logged(
      trainer_helpers.script("exporter") + flags +
      [f"--export_dir={export_dir}", f"--checkpoint={imported}/ckpt-0"],
      str(tmp_path / "exporter.log"))
  files = tf.io.gfile.glob(os.path.join(data_dir, "validation-*"))
  serialized = next(iter(tf.data.TFRecordDataset(files)))
  image = str(tmp_path / "image.jpg")
  tf.io.write_file(image, parse_imagenet_example(serialized)["image"])
  output = trainer_helpers.run_logged(
      trainer_helpers.script("predict") +
      [f"--saved_model={export_dir}", image], str(tmp_path / "predict.log"))
  assert image in output
  assert re.findall(r"^  (\d)\. \d+", output,
                    flags=re.MULTILINE) == ["1", "2", "3", "4", "5"]


def test_import_errors_write_nothing(tmp_path):
  model_dir = tmp_path / "out"
  with pytest.raises(
      ValueError, match="holds efficientnet-b0 .*, the model "
      "is efficientnet-lite0"):
    importer.import_checkpoint(source=TINY_B0, model_dir=str(model_dir),
                               variant="efficientnet-lite0",
                               width_coefficient=0.1, depth_coefficient=0.5)
  gone = "efficientnet-b0/blocks_4/se/conv2d_1/bias"
  (tmp_path / "src").mkdir()
  broken = write_reference_copy(
      "tiny_b0", tmp_path / "src" / "model.ckpt",
      lambda t: [t.pop(n) for n in list(t) if n.startswith(gone)])
  with pytest.raises(ValueError, match=f"{gone}/ExponentialMovingAverage is "
                     "missing"):
    importer.import_checkpoint(source=broken, model_dir=str(model_dir))
  with pytest.raises(FileNotFoundError, match="nope"):
    importer.import_checkpoint(source=str(tmp_path / "nope"),
                               model_dir=str(model_dir))
  assert os.listdir(tmp_path) == ["src"]  # No model_dir, no scratch copy.


def test_import_refuses_a_model_dir_with_a_checkpoint(imported):
  before = sorted(os.listdir(imported))
  with pytest.raises(ValueError, match="already holds a checkpoint"):
    importer.import_checkpoint(source=TINY_B0, model_dir=imported,
                               width_coefficient=0.1, depth_coefficient=0.5)
  assert sorted(os.listdir(imported)) == before


def finetune(model_dir, model_gin, init_checkpoint, *params):
  """finetune.gin over b0_cpu.gin and an imported model.gin, shrunk."""
  gin.clear_config()
  cli.configure(["b0_cpu.gin", model_gin, "finetune.gin"], [
      f"INIT_CHECKPOINT = '{init_checkpoint}'", "NUM_CLASSES = 5",
      "NUM_TRAIN_IMAGES = 32", "NUM_EVAL_IMAGES = 8", "TRAIN_BATCH_SIZE = 8",
      "EVAL_BATCH_SIZE = 8", "TRAIN_STEPS = 2", "STEPS_PER_LOOP = 1",
      "STEPS_PER_EVAL = 2", "effnet_gin.train.build_strategy.kind = 'cpu'",
      "effnet_gin.data.build_dataset.source = "
      "@effnet_gin.data.RandomNoiseSource()",
      "effnet_gin.data.RandomNoiseSource.num_train = 32",
      "effnet_gin.data.RandomNoiseSource.num_eval = 8",
      "effnet_gin.data.RandomNoiseSource.num_classes = 5",
      "effnet_gin.data.RandomNoiseSource.image_size = 72"
  ] + list(params))
  return configurables.train(model_dir=str(model_dir), command="test")


def test_finetune_gin_trains_a_new_class_count_from_the_import(
    imported, tmp_path):
  result = finetune(tmp_path / "run", f"{imported}/model.gin", imported)
  assert result["step"] == 2 and np.isfinite(result["loss"])
  assert result["eval"]["num_examples"] == 8


def read_run_checkpoint(path):
  """The model (under the gin config) and EMA averages of a run's checkpoint."""
  model = configurables.build_model()
  ema = averaging.ExponentialMovingAverage(model)
  checkpointing.build_checkpoint(
      model=model,
      ema=ema).read(path).assert_existing_objects_matched().expect_partial()
  averages = {
      v.path: a.numpy()
      for v, a in zip(averaging.averaged_variables(model), ema.averages)
  }
  return {v.path: v.numpy() for v in model.weights}, averages


def test_frozen_backbone_from_a_reference_checkpoint_keeps_every_weight(
    imported, tmp_path):
  # The reference checkpoint itself as train.init_checkpoint.
  run_dir = tmp_path / "run"
  finetune(run_dir, f"{imported}/model.gin", TINY_B0,
           "effnet_gin.model.build_model.freeze_backbone = True",
           "effnet_gin.train.train.checkpoint_every_steps = 1")
  reference = configurables.build_model(num_classes=10, freeze_backbone=False)
  load_pretrained(reference, TINY_B0)
  expected = {
      v.path: v.numpy()
      for v in reference.weights
      if not v.path.startswith("predictions/")
  }
  first, _ = read_run_checkpoint(str(run_dir / "ckpt-1"))
  last, averages = read_run_checkpoint(str(run_dir / "ckpt-2"))
  # Every backbone weight and moving statistic, and its EMA, as imported.
  assert set(expected) == {k for k in last if not k.startswith("predictions/")}
  for key, value in expected.items():
    np.testing.assert_array_equal(last[key], value)
    np.testing.assert_array_equal(averages[key], value)
  # The classifier (5 classes) trains.
  assert last["predictions/kernel"].shape == (128, 5)
  assert not np.array_equal(first["predictions/kernel"],
                            last["predictions/kernel"])


def test_frozen_and_unfrozen_models_average_the_same_variables():
  # So an EMA checkpoint of either restores into the other (fine-tuning
  # with a frozen backbone from an imported or trained checkpoint).
  kwargs = dict(width_coefficient=0.1, depth_coefficient=0.1, image_size=32)
  frozen = build_model(freeze_backbone=True, **kwargs)
  unfrozen = build_model(**kwargs)
  assert [v.path for v in frozen.trainable_variables
         ] == ["predictions/kernel", "predictions/bias"]
  assert ([v.path for v in averaging.averaged_variables(frozen)
          ] == [v.path for v in averaging.averaged_variables(unfrozen)])
  assert [v.path for v in averaging.averaged_variables(unfrozen)
         ][:-len([v for v in unfrozen.weights if "moving_" in v.path])] == [
             v.path for v in unfrozen.trainable_variables
         ]
