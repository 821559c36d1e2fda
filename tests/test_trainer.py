"""The training loop in-process: shipped configs, resume, NaN, summaries."""
import glob
import logging
import os

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from effnet_gin import cli
from effnet_gin.model import build_model
from effnet_gin.train import checkpointing
from effnet_gin.train import loop
from effnet_gin.train import averaging
from effnet_gin.train import optim
import trainer_helpers

SHIPPED = sorted(os.path.basename(p) for p in glob.glob(
    os.path.join(cli.shipped_gin_dir(), "*.gin")))
# Experiment files name a whole run; overlays are given after one of them on
# the command line (--gin_file=b0_tpu.gin --gin_file=smoke.gin); the others
# are per-axis parts that experiment files include.
RUNNABLE = [name for name in SHIPPED
            if name == "demo.gin" or name.split("_")[0][:1] == "b"]
# finetune.gin also needs an imported model.gin and INIT_CHECKPOINT:
# test_import_checkpoint.py parses and trains it that way.
STANDALONE_OVERLAYS = ["smoke.gin", "autoaugment.gin", "randaugment.gin"]
OVERLAYS = STANDALONE_OVERLAYS + ["finetune.gin"]


@pytest.fixture(autouse=True)
def _float32_policy():
  yield
  trainer_helpers.reset_precision()


def _train(model_dir, *params, gin_file="demo.gin"):
  """Trains `gin_file` shrunk by the shipped smoke.gin, plus `params`."""
  gin.clear_config()
  cli.configure([gin_file, "smoke.gin"], list(params))
  return loop.train(model_dir=str(model_dir), command="test")


def test_runnable_configs_cover_every_variant():
  assert {f"b{i}_tpu.gin" for i in range(8)} <= set(RUNNABLE)
  assert {"b0_gpu.gin", "b0_cpu.gin", "demo.gin"} <= set(RUNNABLE)


@pytest.mark.parametrize("name", RUNNABLE)
def test_every_runnable_config_parses(name):
  cli.configure([name])
  assert gin.config_is_locked()


def test_every_part_file_is_included_by_a_runnable_config():
  # Part files use macros defined in others, so they parse only when
  # included; each must be reached from some experiment file.
  included = set()
  for name in RUNNABLE:
    with open(os.path.join(cli.shipped_gin_dir(), name)) as f:
      included.update(line.split("'")[1] for line in f
                      if line.startswith("include "))
  assert set(SHIPPED) - set(RUNNABLE) - set(OVERLAYS) == included


@pytest.mark.parametrize("overlay", STANDALONE_OVERLAYS)
@pytest.mark.parametrize("name", RUNNABLE)
def test_every_overlay_parses_after_every_runnable_config(name, overlay):
  cli.configure([name, overlay])
  assert gin.config_is_locked()


@pytest.mark.parametrize("name", RUNNABLE)
def test_every_runnable_config_trains_two_steps(name, tmp_path):
  # smoke.gin after the config, as a user would run it on a laptop. The TPU
  # configs keep mixed_bfloat16 and jit_compile=True: this runs the
  # XLA-compiled bfloat16 step on the CPU, our proxy for the TPU.
  result = _train(tmp_path, gin_file=name)
  assert result["step"] == 2
  assert np.isfinite(result["loss"])
  assert trainer_helpers.latest_step(str(tmp_path)) == 2


@pytest.mark.parametrize("overlay", ["randaugment.gin", "autoaugment.gin"])
def test_augmentation_overlays_train_with_smoke(overlay, tmp_path):
  gin.clear_config()
  cli.configure(["b5_tpu.gin", overlay, "smoke.gin"],
                ["effnet_gin.train.train.precision = 'float32'",
                 "effnet_gin.train.train.jit_compile = False"])
  result = loop.train(model_dir=str(tmp_path), command="test")
  assert result["step"] == 2 and np.isfinite(result["loss"])


def test_tpu_config_uses_bfloat16_and_xla():
  cli.configure(["b0_tpu.gin"])
  assert gin.query_parameter("effnet_gin.train.train.precision") == (
      "mixed_bfloat16")
  assert gin.query_parameter("effnet_gin.train.train.jit_compile") is True
  assert gin.query_parameter("TRAIN_BATCH_SIZE/macro.value") == 2048
  # The derived TRAIN_STEPS (350 epochs at 2048) is pinned in test_configs.
  assert gin.query_parameter("STEPS_PER_LOOP/macro.value") == 1251


def test_resume_continues_the_step_count(tmp_path):
  first = _train(tmp_path, "TRAIN_STEPS = 4", "STEPS_PER_LOOP = 2")
  assert (first["start_step"], first["step"]) == (0, 4)
  second = _train(tmp_path, "TRAIN_STEPS = 8", "STEPS_PER_LOOP = 2")
  assert (second["start_step"], second["step"]) == (4, 8)
  assert trainer_helpers.latest_step(str(tmp_path)) == 8
  # A finished model_dir runs nothing more.
  third = _train(tmp_path, "TRAIN_STEPS = 8")
  assert (third["start_step"], third["step"]) == (8, 8)


def test_writes_command_configs_and_summaries(tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="absl")
  _train(tmp_path, "TRAIN_STEPS = 3")
  # The derived durations are logged at start (smoke.gin: 64 images at
  # batch 8 are 8 steps per epoch).
  assert any(r.getMessage().startswith(
      "Durations: 3 train steps (0.38 epochs of 8.00 steps)")
             for r in caplog.records)
  assert (tmp_path / "command").read_text() == "test"
  assert "TRAIN_STEPS = 3" in (tmp_path / "config.gin").read_text()
  operative = (tmp_path / "operative_config.gin").read_text()
  assert "train.train_batch_size = %TRAIN_BATCH_SIZE" in operative
  assert "TRAIN_BATCH_SIZE = 8" in operative
  tags = set()
  for path in glob.glob(str(tmp_path / "train" / "events.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(value.tag for value in event.summary.value)
  assert {"loss", "learning_rate", "epoch", "top_1_accuracy",
          "images_per_sec", "step_time_sec"} <= tags
  assert any(tag.startswith("operative_config") for tag in tags)


def test_nan_loss_stops_with_the_step_and_keeps_checkpoints(tmp_path):
  _train(tmp_path, "TRAIN_STEPS = 2")
  with pytest.raises(loop.NonFiniteLossError, match=r"at step \d+"):
    _train(tmp_path, "TRAIN_STEPS = 6",
           "effnet_gin.train.build_schedule.base_learning_rate = 1e30",
           "effnet_gin.train.build_schedule.warmup_epochs = 0")
  assert trainer_helpers.latest_step(str(tmp_path)) == 2
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path)))
  for name in reader.get_variable_to_shape_map():
    value = reader.get_tensor(name)
    if np.issubdtype(np.asarray(value).dtype, np.floating):
      assert np.all(np.isfinite(value)), name


def test_invalid_settings_name_the_value(tmp_path):
  with pytest.raises(ValueError, match="schedule"):
    _train(tmp_path, "effnet_gin.train.train.schedule = 'train_then_eval'")
  with pytest.raises(ValueError, match="TRAIN_BATCH_SIZE|train_batch_size"):
    _train(tmp_path, "TRAIN_BATCH_SIZE = 0")


def test_learns_the_generated_task(tmp_path):
  # demo.gin's model and schedule on the in-graph version of its data, for a
  # quarter of its steps: the loss must fall well below its start (≈3.0;
  # chance level with label smoothing is ≈2.3) and the EMA weights must
  # classify well above chance (10%). `train.seed` fixes the initial weights,
  # dropout, stochastic depth, the data order and the crops, so every run
  # gives the same numbers: unseeded, a run once ended at exactly 0.3.
  result = _train(
      tmp_path, "effnet_gin.train.train.seed = 7", "TRAIN_STEPS = 300", "STEPS_PER_LOOP = 50",
      "TRAIN_BATCH_SIZE = 32", "IMAGE_SIZE = 64", "NUM_EVAL_IMAGES = 200",
      "EVAL_BATCH_SIZE = 100", "NUM_TRAIN_IMAGES = 2000",
      "effnet_gin.model.build_model.width_coefficient = 0.5",
      "effnet_gin.model.build_model.depth_coefficient = 0.5",
      "effnet_gin.data.build_dataset.source = "
      "@effnet_gin.data.LearnableShapesSource()",
      "effnet_gin.data.LearnableShapesSource.image_size = 64",
      "effnet_gin.data.LearnableShapesSource.num_classes = 10",
      "effnet_gin.train.train.steps_per_eval = 300")
  assert result["loss"] < 1.8, result
  assert result["eval"]["num_examples"] == 200
  assert result["eval"]["top_1_accuracy"] > 0.3, result


def test_seeded_runs_repeat_exactly(tmp_path):
  # Dropout and stochastic depth on, so their draws are covered too.
  params = ("effnet_gin.train.train.seed = 3", "TRAIN_STEPS = 3",
            "effnet_gin.model.build_model.dropout_rate = 0.5")
  first = _train(tmp_path / "first", *params)
  second = _train(tmp_path / "second", *params)
  assert first["loss"] == second["loss"]
  other = _train(tmp_path / "other", *params[1:],
                 "effnet_gin.train.train.seed = 4")
  assert other["loss"] != first["loss"]


def test_fine_tuning_skips_a_classifier_of_another_size(tmp_path):
  source_dir = tmp_path / "source"
  _train(source_dir, "TRAIN_STEPS = 2")
  source_ckpt = tf.train.latest_checkpoint(str(source_dir))
  gin.clear_config()
  cli.configure(["demo.gin", "smoke.gin"])
  model = build_model(num_classes=5)
  skipped = checkpointing.initialize_from(
      model, str(source_dir), use_ema=True,
      model_builder=lambda n: build_model(num_classes=n),
      ema_factory=averaging.ExponentialMovingAverage)
  assert skipped == ["predictions"]
  reader = tf.train.load_checkpoint(source_ckpt)
  stem = model.get_layer("stem_conv").kernel.numpy()
  stored = [reader.get_tensor(name) for name, shape
            in reader.get_variable_to_shape_map().items()
            if name.startswith("ema/") and list(shape) == list(stem.shape)]
  assert any(np.array_equal(stem, value) for value in stored)
  # Through the trainer: a 5-class run starts from the 10-class checkpoint.
  result = _train(tmp_path / "target", "NUM_CLASSES = 5",
                  "effnet_gin.data.RandomNoiseSource.num_classes = 5",
                  f"effnet_gin.train.train.init_checkpoint = '{source_ckpt}'")
  assert result["step"] == 2


def test_mirrored_two_replicas_match_one_device(mirrored_strategy):
  """Two replicas over a global batch give the loss of one device.

  Every replica sees the same 8 examples, and the single device sees them
  twice in one batch of 16: per-replica batch-norm statistics then agree, so
  the losses and updates must match up to float32 reduction order.
  """
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
  labels = rng.integers(0, 10, 8).astype(np.int32)

  def run(strategy, per_replica_images, per_replica_labels):
    keras.utils.set_random_seed(1)
    with strategy.scope():
      model = build_model("efficientnet-b0", 10, width_coefficient=0.1,
                          depth_coefficient=0.1, resolution=32,
                          dropout_rate=0.0, survival_prob=1.0)
      optimizer = optim.build_optimizer(0.01)
      optimizer.build(model.trainable_variables)
      ema = averaging.ExponentialMovingAverage(model)
      step = tf.Variable(0, dtype=tf.int64,
                         aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    dataset = strategy.distribute_datasets_from_function(
        lambda ctx: tf.data.Dataset.from_tensors(
            (per_replica_images, per_replica_labels)).repeat())
    host_loop = loop.build_host_loop(
        strategy=strategy, model=model, optimizer=optimizer, ema=ema,
        step=step, global_batch_size=16, label_smoothing=0.1,
        weight_decay=1e-5, jit_compile=False)
    iterator = iter(dataset)
    step_losses = [float(host_loop(iterator, tf.constant(1))[0])
                   for _ in range(3)]
    return step_losses, model.get_layer("stem_conv").kernel.numpy()

  mirrored = mirrored_strategy
  assert mirrored.num_replicas_in_sync == 2
  two_losses, two_kernel = run(mirrored, images, labels)
  one_losses, one_kernel = run(tf.distribute.get_strategy(),
                               np.concatenate([images, images]),
                               np.concatenate([labels, labels]))
  # Tolerance: float32 sums in a different order over 3 steps.
  np.testing.assert_allclose(two_losses, one_losses, rtol=1e-4)
  np.testing.assert_allclose(two_kernel, one_kernel, rtol=1e-3, atol=1e-5)
  assert two_losses[2] != two_losses[0]  # Training moved the weights.


def test_train_and_eval_evaluates_at_each_interval_and_the_end(tmp_path):
  result = _train(tmp_path, "TRAIN_STEPS = 5",
                  "effnet_gin.train.train.schedule = 'train_and_eval'",
                  "effnet_gin.train.train.steps_per_eval = 2")
  assert result["eval"]["num_examples"] == 16
  steps = []
  for path in glob.glob(str(tmp_path / "train_eval" / "events.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      if any(value.tag == "top_1_accuracy" for value in event.summary.value):
        steps.append(event.step)
  assert sorted(steps) == [2, 4, 5]
