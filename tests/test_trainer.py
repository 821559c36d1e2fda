"""The training loop in-process: shipped configs, resume, NaN, summaries."""
import glob
import logging
import os

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from effnet_gin import configurables
from effnet_gin import cli
from effnet_gin.model import build_model
from effnet_gin.checkpoints import checkpointing
from effnet_gin.checkpoints import pretrained
from effnet_gin.train import train_step
from effnet_gin.evaluation import records
from effnet_gin.train import trainer
from effnet_gin.checkpoints import averaging
from effnet_gin.train import optim
from effnet_gin.train import progress as progress_lib
import trainer_helpers

# `effnet_gin.train.evaluate` the attribute is the function; this is the module.

SHIPPED = sorted(
    os.path.basename(p)
    for p in glob.glob(os.path.join(cli.shipped_gin_dir(), "*.gin")))
# Experiment files name a whole run; overlays are given after one of them on
# the command line (--gin_file=b0_tpu.gin --gin_file=smoke.gin); the others
# are per-axis parts that experiment files include.
RUNNABLE = [
    name for name in SHIPPED
    if name == "demo.gin" or name.split("_")[0][:1] == "b" or name.startswith((
        "edgetpu_", "v2_"))
]
# finetune.gin also needs an imported model.gin and INIT_CHECKPOINT:
# test_import_checkpoint.py parses and trains it that way.
STANDALONE_OVERLAYS = ["smoke.gin", "autoaugment.gin", "randaugment.gin"]
OVERLAYS = STANDALONE_OVERLAYS + ["finetune.gin"]


def _train(model_dir, *params, gin_file="demo.gin"):
  """Trains `gin_file` shrunk by the shipped smoke.gin, plus `params`."""
  gin.clear_config()
  cli.configure([gin_file, "smoke.gin"], list(params))
  return configurables.train(model_dir=str(model_dir), command="test")


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
      included.update(
          line.split("'")[1] for line in f if line.startswith("include "))
  assert set(SHIPPED) - set(RUNNABLE) - set(OVERLAYS) == included


@pytest.mark.parametrize("overlay", STANDALONE_OVERLAYS)
@pytest.mark.parametrize("name", RUNNABLE)
def test_every_overlay_parses_after_every_runnable_config(name, overlay):
  cli.configure([name, overlay])
  assert gin.config_is_locked()


# b1_tpu.gin … b7_tpu.gin are b0_tpu.gin with another model_bN.gin, whose
# bindings smoke.gin then shrinks to the same tiny network: training them too
# would repeat b0_tpu's run. They parse above; test_configs builds each
# variant's model at its own resolution and dropout.
# v2_m_tpu.gin and v2_l_tpu.gin are v2_s_tpu.gin with another model_v2_*.gin
# (smoke.gin shrinks them alike), v2_s_gpu.gin is it with b0_gpu.gin's
# hardware file: both kinds are trained already; test_configs checks them.
V2_REPEATS = {"v2_m_tpu.gin", "v2_l_tpu.gin", "v2_s_gpu.gin"}
TRAINED = [
    name for name in RUNNABLE
    if not (name.endswith("_tpu.gin") and
            name[:2] in {f"b{i}" for i in range(1, 8)}) and
    not name.startswith("edgetpu_") and name not in V2_REPEATS
]
# edgetpu_s_tpu.gin is b0_tpu.gin's recipe with another MODEL_NAME and
# NUM_CLASSES: test_zoo_train.py checks those and trains the EdgeTPU model.


def test_the_variant_configs_differ_from_b0_tpu_only_in_the_model():

  def lines(name):
    with open(os.path.join(cli.shipped_gin_dir(), name)) as f:
      return [line for line in f if not line.startswith("#")]

  for index in range(1, 8):
    assert lines(f"b{index}_tpu.gin") == [
        line.replace("model_b0.gin", f"model_b{index}.gin")
        for line in lines("b0_tpu.gin")
    ]


@pytest.mark.parametrize("name", TRAINED)
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
  cli.configure(["b5_tpu.gin", overlay, "smoke.gin"], [
      "effnet_gin.train.train.precision = 'float32'",
      "effnet_gin.train.train.jit_compile = False"
  ])
  result = configurables.train(model_dir=str(tmp_path), command="test")
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
  assert {
      "loss", "learning_rate", "epoch", "top_1_accuracy", "images_per_sec",
      "step_time_sec"
  } <= tags
  assert any(tag.startswith("operative_config") for tag in tags)


def test_nan_loss_stops_with_the_step_and_keeps_checkpoints(tmp_path):
  _train(tmp_path, "TRAIN_STEPS = 2")
  with pytest.raises(trainer.NonFiniteLossError, match=r"at step \d+"):
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
  with pytest.raises(ValueError, match="train.mode.*'train_then_eval'"):
    _train(tmp_path, "effnet_gin.train.train.mode = 'train_then_eval'")
  with pytest.raises(ValueError, match="TRAIN_BATCH_SIZE|train_batch_size"):
    _train(tmp_path, "TRAIN_BATCH_SIZE = 0")


def test_schedule_is_a_deprecated_alias_of_mode(caplog):
  with caplog.at_level(logging.WARNING):
    assert trainer._resolve_mode("train", "train_and_eval") == "train_and_eval"  # pylint: disable=protected-access
  assert any("deprecated" in r.getMessage() for r in caplog.records)
  # An old override of a config that now sets mode still means what it did.
  assert trainer._resolve_mode("train_and_eval", "train") == "train"  # pylint: disable=protected-access


def test_learns_the_generated_task(tmp_path):
  # demo.gin's model and schedule on the in-graph version of its data, for a
  # quarter of its steps: the loss must fall well below its start (≈3.0;
  # chance level with label smoothing is ≈2.3) and the EMA weights must
  # classify well above chance (10%). `train.seed` fixes the initial weights,
  # dropout, stochastic depth, the data order and the crops, so every run
  # gives the same numbers: unseeded, a run once ended at exactly 0.3.
  result = _train(
      tmp_path, "effnet_gin.train.train.seed = 7", "TRAIN_STEPS = 300",
      "STEPS_PER_LOOP = 50", "TRAIN_BATCH_SIZE = 32", "IMAGE_SIZE = 64",
      "NUM_EVAL_IMAGES = 200", "EVAL_BATCH_SIZE = 100",
      "NUM_TRAIN_IMAGES = 2000",
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
  model = configurables.build_model(num_classes=5)
  skipped = pretrained.initialize_from(
      model, str(source_dir), use_ema=True,
      model_builder=lambda n: configurables.build_model(num_classes=n),
      ema_factory=averaging.ExponentialMovingAverage)
  assert skipped == ["predictions"]
  reader = tf.train.load_checkpoint(source_ckpt)
  stem = model.get_layer("stem_conv").kernel.numpy()
  stored = [
      reader.get_tensor(name)
      for name, shape in reader.get_variable_to_shape_map().items()
      if name.startswith("ema/") and list(shape) == list(stem.shape)
  ]
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
                          depth_coefficient=0.1, image_size=32,
                          dropout_rate=0.0, survival_prob=1.0)
      optimizer = optim.build_optimizer(0.01)
      optimizer.build(model.trainable_variables)
      ema = averaging.ExponentialMovingAverage(model)
    dataset = strategy.distribute_datasets_from_function(
        lambda ctx: tf.data.Dataset.from_tensors(
            (per_replica_images, per_replica_labels)).repeat())
    host_loop = train_step.build_host_loop(strategy=strategy, model=model,
                                           optimizer=optimizer, ema=ema,
                                           global_batch_size=16,
                                           label_smoothing=0.1,
                                           weight_decay=1e-5, jit_compile=False)
    iterator = iter(dataset)
    step_losses = [
        float(host_loop(iterator, tf.constant(1))[0]) for _ in range(3)
    ]
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
                  "effnet_gin.train.train.mode = 'train_and_eval'",
                  "effnet_gin.train.train.steps_per_eval = 2")
  assert result["eval"]["num_examples"] == 16
  steps = []
  for path in glob.glob(str(tmp_path / "train_eval" / "events.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      if any(value.tag == "top_1_accuracy" for value in event.summary.value):
        steps.append(event.step)
  assert sorted(steps) == [2, 4, 5]

  # Recorded as bin/evaluator records: one results.jsonl line per evaluated
  # step, naming its checkpoint, which was saved for it (demo.gin saves
  # only every 400 steps and at the end).
  model_dir = str(tmp_path)
  results = records.ResultsLog(model_dir).read()
  assert [r["step"] for r in results] == [2, 4, 5]
  assert results[-1]["top_1_accuracy"] == result["eval"]["top_1_accuracy"]
  for record in results:
    assert record["checkpoint"] == os.path.join(model_dir,
                                                f"ckpt-{record['step']}")
    assert os.path.exists(record["checkpoint"] + ".index")
    assert set(record) >= {"top_1_accuracy", "top_5_accuracy", "loss"}

  # best/ holds the step of the best top-1 (the first of equals), restorable.
  best = max(results, key=lambda r: r["top_1_accuracy"])
  best_record = records.BestCheckpoint(model_dir).read()
  assert best_record["step"] == best["step"]
  archived = tf.train.latest_checkpoint(str(tmp_path / "best"))
  assert archived == best_record["checkpoint"]
  model = configurables.build_model()
  step = tf.Variable(0, dtype=tf.int64)
  checkpointing.build_checkpoint(
      step=step, model=model,
      ema=averaging.ExponentialMovingAverage(model)).read(
          archived).assert_existing_objects_matched().expect_partial()
  assert int(step.numpy()) == best["step"]

  # The trainer is then the one writer of those records: an evaluator on
  # the same model_dir scores the same weights alike, and records nothing.
  [again] = configurables.evaluate(model_dir=model_dir,
                                   checkpoint=best_record["checkpoint"])
  assert again["top_1_accuracy"] == best_record["top_1_accuracy"]
  assert records.ResultsLog(model_dir).read() == results


class _RecordingSGD(keras.optimizers.SGD):
  """Plain SGD that also keeps the learning rate of its last update."""

  def build(self, var_list):
    if self.built:
      return
    super().build(var_list)
    self.applied_learning_rate = self.add_variable(
        (), initializer=keras.initializers.Constant(-1.0),
        name="applied_learning_rate")

  def update_step(self, gradient, variable, learning_rate):
    self.applied_learning_rate.assign(tf.cast(learning_rate, tf.float32))
    super().update_step(gradient, variable, learning_rate)


class _RecordingEMA(averaging.ExponentialMovingAverage):
  """The real averages, keeping the `num_updates` of the last update."""

  def __init__(self, model):
    super().__init__(model)
    self.num_updates = tf.Variable(-1, dtype=tf.int64, trainable=False)

  def update(self, step):
    self.num_updates.assign(tf.cast(step, tf.int64))
    super().update(step)


def _logged_learning_rates(log_dir):
  rates = {}
  for path in glob.glob(os.path.join(log_dir, "events.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == "learning_rate":
          rates[event.step] = float(tf.make_ndarray(value.tensor))
  return rates


@pytest.mark.parametrize("precision", ["float32", "mixed_float16"])
def test_one_step_counter_drives_schedule_ema_and_log(precision, tmp_path):
  """The step, EMA num_updates, applied and logged rates agree every trainer.

  Under mixed_float16 the first step is forced to overflow (a loss scale of
  2**60 makes the float16 gradients infinite): the LossScaleOptimizer skips
  it, and none of the four may count it.
  """
  keras.mixed_precision.set_global_policy(precision)
  keras.utils.set_random_seed(0)
  # lr(s) = 0.01 * 0.5**s: a different rate at every step.
  schedule = optim.WarmupDecaySchedule(peak_learning_rate=0.01, warmup_steps=0,
                                       decay_steps=1, decay_factor=0.5)
  model = build_model("efficientnet-b0", 10, width_coefficient=0.1,
                      depth_coefficient=0.1, image_size=32, dropout_rate=0.0,
                      survival_prob=1.0)
  inner = _RecordingSGD(schedule, name="recording_sgd")
  optimizer = (keras.optimizers.LossScaleOptimizer(inner)
               if precision == "mixed_float16" else inner)
  optimizer.build(model.trainable_variables)
  ema = _RecordingEMA(model)
  strategy = tf.distribute.get_strategy()
  rng = np.random.default_rng(0)
  batch = (rng.uniform(0, 255, (4, 32, 32, 3)).astype(np.float32),
           rng.integers(0, 10, 4).astype(np.int32))
  iterator = iter(
      strategy.experimental_distribute_dataset(
          tf.data.Dataset.from_tensors(batch).repeat()))
  host_loop = train_step.build_host_loop(strategy=strategy, model=model,
                                         optimizer=optimizer, ema=ema,
                                         global_batch_size=4,
                                         label_smoothing=0.1, weight_decay=1e-5,
                                         jit_compile=False)
  progress = progress_lib.LoopProgress(0, 10, 4, 400, schedule)
  writer = tf.summary.create_file_writer(str(tmp_path))
  kernel = model.get_layer("stem_conv").kernel
  skipping = precision == "mixed_float16"
  if skipping:
    optimizer.dynamic_scale.assign(2.0**60)
  steps = []
  with writer.as_default():
    for loop_index in range(3):
      before = kernel.numpy()
      loss_sum, correct_sum, _, steps_run = host_loop(iterator, tf.constant(1))
      assert int(steps_run) == 1
      step = int(optimizer.iterations.numpy())
      progress.log(step, 1, float(loss_sum), float(correct_sum), 1.0)
      steps.append(step)
      assert int(ema.num_updates.numpy()) == step
      if skipping and loop_index == 0:
        # Skipped: the scale halved, no update, the rate never applied.
        assert float(optimizer.dynamic_scale.numpy()) == 2.0**59
        np.testing.assert_array_equal(kernel.numpy(), before)
        assert float(inner.applied_learning_rate.numpy()) == -1.0
        optimizer.dynamic_scale.assign(2.0**8)
      else:
        assert not np.array_equal(kernel.numpy(), before)
        np.testing.assert_allclose(float(inner.applied_learning_rate.numpy()),
                                   0.01 * 0.5**(step - 1), rtol=1e-6)
  writer.close()
  assert steps == ([0, 1, 2] if skipping else [1, 2, 3])
  logged = _logged_learning_rates(str(tmp_path))
  assert sorted(logged) == sorted(set(steps))
  for step in steps:
    np.testing.assert_allclose(logged[step], 0.01 * 0.5**max(step - 1, 0),
                               rtol=1e-6)
