"""The shipped configs: durations in epochs, the variant table, required values.

Expected values are written out here from the reference (tensorflow/tpu
models/official/efficientnet main.py and README) and the paper, never computed
by the code under test.
"""
import subprocess
import sys

import gin
import pytest

from effnet_gin import cli
from effnet_gin import configurables
from effnet_gin.model import build_model
from effnet_gin.model import cross_replica
from effnet_gin.train import optim
from effnet_gin.train import durations
import trainer_helpers

DATA = dict(data_dir="gs://bucket/imagenet")


def schedule_of_config():
  return configurables.build_schedule(
      global_batch_size=trainer_helpers.resolved(
          "effnet_gin.train.train.train_batch_size"),
      num_train_images=trainer_helpers.resolved(
          "effnet_gin.train.train.num_train_images"),
      train_steps=trainer_helpers.resolved(
          "effnet_gin.train.train.train_steps"))


# ---------------------------------------------------------------------------
# Durations in epochs
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "epochs,batch,steps",
    [
        (350, 2048, 218949),  # main.py's default --train_steps.
        (10, 2048, 6255),  # main.py's default --steps_per_eval.
        (2, 2048, 1251),  # main.py's default --iterations_per_loop.
        (350, 256, 1751595),
        (350, 32, 14012764),
        (350, 65536, 6842),
    ])
def test_steps_for_epochs_truncates_as_the_reference(epochs, batch, steps):
  assert durations.steps_for_epochs(epochs=epochs, num_train_images=1281167,
                                    global_batch_size=batch) == steps


@pytest.mark.parametrize("kwargs", [
    dict(epochs=0, num_train_images=10, global_batch_size=2),
    dict(epochs=1, num_train_images=10, global_batch_size=0),
    dict(epochs="350", num_train_images=10, global_batch_size=2)
])
def test_steps_for_epochs_rejects_non_positive_values(kwargs):
  with pytest.raises(ValueError, match="must be a positive number"):
    durations.steps_for_epochs(**kwargs)


def test_b0_tpu_schedule_is_the_reference():
  cli.configure(["b0_tpu.gin"], **DATA)
  assert trainer_helpers.resolved(
      "effnet_gin.train.train.train_steps") == 218949
  assert trainer_helpers.resolved(
      "effnet_gin.train.evaluate.train_steps") == 218949
  assert trainer_helpers.resolved(
      "effnet_gin.train.train.steps_per_eval") == 6255
  assert trainer_helpers.resolved(
      "effnet_gin.train.train.checkpoint_every_steps") == 1251
  assert trainer_helpers.resolved(
      "effnet_gin.train.train.steps_per_loop") == 1251
  schedule = schedule_of_config()
  # warmup_steps = int(5 × 1281167 / 2048); decay every 2.4 epochs.
  assert schedule.warmup_steps == 3127
  assert schedule.decay_steps == pytest.approx(1501.3676, abs=1e-4)
  assert schedule.peak_learning_rate == pytest.approx(0.128)


@pytest.mark.parametrize("name,batch,steps", [("b0_gpu.gin", 256, 1751595),
                                              ("b0_cpu.gin", 32, 14012764)])
def test_gpu_and_cpu_configs_train_350_epochs_at_their_batch(
    name, batch, steps):
  cli.configure([name], **DATA)
  assert trainer_helpers.resolved(
      "effnet_gin.train.train.train_batch_size") == batch
  train_steps = trainer_helpers.resolved("effnet_gin.train.train.train_steps")
  assert train_steps == steps
  assert abs(train_steps * batch / 1281167 - 350) < batch / 1281167
  # Warm-up and decay stay 5 and 2.4 epochs long at this batch.
  schedule = schedule_of_config()
  assert schedule.warmup_steps == int(5 * 1281167 / batch)
  assert schedule.decay_steps == pytest.approx(2.4 * 1281167 / batch)


def test_an_explicit_train_steps_wins_everywhere():
  cli.configure(["b0_gpu.gin"], train_steps=1000, **DATA)
  assert trainer_helpers.resolved("effnet_gin.train.train.train_steps") == 1000
  assert trainer_helpers.resolved(
      "effnet_gin.train.evaluate.train_steps") == 1000
  gin.clear_config()
  cli.configure(["b0_tpu.gin"],
                ["TRAIN_EPOCHS = 90", "TRAIN_BATCH_SIZE = 4096"], **DATA)
  assert trainer_helpers.resolved("effnet_gin.train.train.train_steps") == 28150


def test_durations_describe_every_count():
  schedule = optim.build_schedule(global_batch_size=2048,
                                  num_train_images=1281167)
  line = durations.durations_of(train_steps=218949, num_train_images=1281167,
                                global_batch_size=2048, schedule=schedule,
                                steps_per_eval=6255,
                                checkpoint_every_steps=1251,
                                steps_per_loop=1251).describe()
  for text in ("218949 train steps (350.00 epochs", "warm-up 3127 steps",
               "decay every 1501.37 steps (2.40 epochs)",
               "eval every 6255 steps (10.00 epochs)",
               "checkpoint every 1251 steps (2.00 epochs)"):
    assert text in line


# ---------------------------------------------------------------------------
# The variant table is the one source of resolution and dropout
# ---------------------------------------------------------------------------
# Paper Table 2 / the reference's efficientnet_params: (resolution, dropout).
VARIANT_TABLE = {
    0: (224, 0.2),
    1: (240, 0.2),
    2: (260, 0.3),
    3: (300, 0.3),
    4: (380, 0.4),
    5: (456, 0.4),
    6: (528, 0.5),
    7: (600, 0.5)
}
IMAGE_SIZE_USERS = ("effnet_gin.model.build_model.image_size",
                    "effnet_gin.train.train.image_size",
                    "effnet_gin.train.evaluate.image_size",
                    "effnet_gin.train.export.image_size")


@pytest.mark.parametrize("index", sorted(VARIANT_TABLE))
def test_each_variant_config_runs_at_its_own_resolution_and_dropout(index):
  resolution, dropout = VARIANT_TABLE[index]
  cli.configure([f"b{index}_tpu.gin"], [
      "effnet_gin.model.build_model.width_coefficient = 0.1",
      "effnet_gin.model.build_model.depth_coefficient = 0.1"
  ], **DATA)
  for selector in IMAGE_SIZE_USERS:
    assert trainer_helpers.resolved(selector) == resolution, selector
  model = configurables.build_model()
  assert model.input_shape == (None, resolution, resolution, 3)
  assert model.get_layer("top_dropout").rate == dropout


def test_model_name_alone_sets_the_resolution_and_image_size_overrides_it():
  cli.configure(["b0_tpu.gin"], ["MODEL_NAME = 'efficientnet-b3'"], **DATA)
  assert {trainer_helpers.resolved(s) for s in IMAGE_SIZE_USERS} == {300}
  gin.clear_config()
  cli.configure(["b3_tpu.gin"], ["IMAGE_SIZE = 256"], **DATA)
  assert {trainer_helpers.resolved(s) for s in IMAGE_SIZE_USERS} == {256}


def test_a_variant_at_another_size_says_so_once(caplog):
  for _ in range(2):
    build_model("efficientnet-b2", 10, width_coefficient=0.1,
                depth_coefficient=0.1, image_size=36)
  build_model("efficientnet-b2", 10, width_coefficient=0.1,
              depth_coefficient=0.1)
  messages = [
      r.getMessage() for r in caplog.records if "not its own" in r.getMessage()
  ]
  assert messages == [
      "efficientnet-b2 runs at 36x36 pixels, not its own "
      "260x260 (IMAGE_SIZE overrides the variant table)"
  ]


# ---------------------------------------------------------------------------
# The reference recipe in every bN_tpu.gin
# ---------------------------------------------------------------------------
# main.py's defaults, written out: batch 2048, base LR 0.016 per 256, warm-up
# 5 epochs, ×0.97 every 2.4 epochs, TF1 RMSProp (decay 0.9, momentum 0.9,
# epsilon 1e-3), label smoothing 0.1, weight decay 1e-5, EMA 0.9999.
REFERENCE_RECIPE = {
    "effnet_gin.train.train.train_batch_size": 2048,
    "effnet_gin.train.build_schedule.kind": "exponential",
    "effnet_gin.train.build_schedule.base_learning_rate": 0.016,
    "effnet_gin.train.build_schedule.warmup_epochs": 5,
    "effnet_gin.train.build_schedule.decay_epochs": 2.4,
    "effnet_gin.train.build_schedule.decay_factor": 0.97,
    "effnet_gin.train.build_optimizer.name": "rmsprop",
    "effnet_gin.train.build_optimizer.rho": 0.9,
    "effnet_gin.train.build_optimizer.momentum": 0.9,
    "effnet_gin.train.build_optimizer.epsilon": 1e-3,
    "effnet_gin.train.train.label_smoothing": 0.1,
    "effnet_gin.train.train.weight_decay": 1e-5,
    "effnet_gin.train.train.use_ema": True,
    "effnet_gin.train.ExponentialMovingAverage.decay": 0.9999,
    "effnet_gin.train.train.train_steps": 218949,
    "effnet_gin.train.train.steps_per_eval": 6255,
}


@pytest.mark.parametrize("index", sorted(VARIANT_TABLE))
def test_every_tpu_config_is_the_reference_recipe(index):
  cli.configure([f"b{index}_tpu.gin"], **DATA)
  resolution = VARIANT_TABLE[index][0]
  expected = dict(REFERENCE_RECIPE)
  expected["effnet_gin.train.train.image_size"] = resolution
  for selector, value in expected.items():
    assert trainer_helpers.resolved(selector) == value, selector
  # Dropout comes from the variant table: no config overrides it.
  with pytest.raises(ValueError):
    gin.query_parameter("effnet_gin.model.build_model.dropout_rate")
  assert gin.query_parameter("MODEL_NAME/macro.value") == (
      f"efficientnet-b{index}")


@pytest.mark.parametrize("index", range(1, 8))
def test_variant_headers_state_their_own_accuracy(index):
  paper_top1 = {
      1: "79.1",
      2: "80.1",
      3: "81.6",
      4: "82.9",
      5: "83.6",
      6: "84.0",
      7: "84.3"
  }
  with open(cli.resolve_gin_file(f"b{index}_tpu.gin")) as f:
    header = f.read()
  assert f"top-1 {paper_top1[index]}%" in header
  assert "B0 at 76.8%" not in header
  resolution = VARIANT_TABLE[index][0]
  assert f"{resolution}x{resolution}" in header


# ---------------------------------------------------------------------------
# Required values fail at parse time
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["b0_tpu.gin", "b0_gpu.gin", "b0_cpu.gin", "b7_tpu.gin"])
def test_a_missing_data_dir_fails_at_parse_time_naming_it(name):
  with pytest.raises(
      ValueError, match=r"TFRecordSource\.data_dir is required"
      r".*--data_dir"):
    cli.configure([name], needs_input=True)
  gin.clear_config()
  cli.configure([name], needs_input=True, **DATA)
  gin.clear_config()
  cli.configure([name], needs_input=True, project="p",
                bigtable_instance="imagenet-instance")


def test_the_trainer_names_a_missing_data_dir_and_model_dir(tmp_path):
  base = [
      sys.executable, f"{trainer_helpers.BIN}/trainer", "--gin_file=b0_cpu.gin"
  ]
  env = trainer_helpers.subprocess_env()
  no_data = subprocess.run(base + [f"--model_dir={tmp_path}"], env=env,
                           capture_output=True, text=True, timeout=120,
                           check=False)
  assert no_data.returncode != 0
  assert "TFRecordSource.data_dir is required" in no_data.stderr
  assert not list(tmp_path.iterdir())  # Failed before writing anything.
  no_model_dir = subprocess.run(base + ["--data_dir=/data"], env=env,
                                capture_output=True, text=True, timeout=120,
                                check=False)
  assert no_model_dir.returncode != 0
  assert "--model_dir" in no_model_dir.stderr


def test_pod_config_is_the_large_batch_recipe():
  cli.configure(["b0_tpu_pod.gin"], **DATA)
  assert trainer_helpers.resolved(
      "effnet_gin.train.train.train_batch_size") == 32768
  # int(350 × 1281167 / 32768) and int(10 × 1281167 / 32768).
  assert trainer_helpers.resolved("effnet_gin.train.train.train_steps") == 13684
  assert trainer_helpers.resolved(
      "effnet_gin.train.train.steps_per_eval") == 390
  assert trainer_helpers.resolved(
      "effnet_gin.train.build_optimizer.name") == "lars"
  assert trainer_helpers.resolved(
      "effnet_gin.train.build_optimizer.lars_weight_decay") == 1e-5
  # The reference's distributed batch norm with --batch_norm_batch_size=128:
  # groups of 2 cores at 64 images per core on 512 cores.
  setting = trainer_helpers.resolved(
      "effnet_gin.model.build_model.batch_norm_group_size")
  assert setting == "distributed:128"
  assert cross_replica.distributed_group_size(setting, 512, 64) == 2
  schedule = schedule_of_config()
  assert schedule.kind == "polynomial"
  assert schedule.warmup_steps == 195
  assert schedule.peak_learning_rate == pytest.approx(2.048)
  assert (schedule.end_learning_rate, schedule.power) == (0.1, 2.0)
  with open(cli.resolve_gin_file("b0_tpu_pod.gin")) as f:
    assert "v3-512 pod slice (512 TPU cores" in f.read()


# The reference README: RandAugment 2 layers, magnitude 17 for B5, 28 for B7
# and B8, its default 10 otherwise.
@pytest.mark.parametrize("name,magnitude", [("b0_tpu.gin", 10),
                                            ("b4_tpu.gin", 10),
                                            ("b5_tpu.gin", 17),
                                            ("b6_tpu.gin", 10),
                                            ("b7_tpu.gin", 28)])
def test_randaugment_overlay_uses_the_variants_magnitude(name, magnitude):
  cli.configure([name, "randaugment.gin"], **DATA)
  assert trainer_helpers.resolved(
      "effnet_gin.data.build_dataset.augment") == "randaugment"
  assert trainer_helpers.resolved(
      "effnet_gin.data.build_dataset.randaugment_layers") == 2
  assert trainer_helpers.resolved(
      "effnet_gin.data.build_dataset.randaugment_magnitude") == (magnitude)


def test_autoaugment_overlay_selects_policy_v0():
  cli.configure(["b3_tpu.gin", "autoaugment.gin"], **DATA)
  assert trainer_helpers.resolved(
      "effnet_gin.data.build_dataset.augment") == "autoaugment"


# ---------------------------------------------------------------------------
# EfficientNetV2: automl's recipe with progressive learning
# ---------------------------------------------------------------------------
# google/automl efficientnetv2 effnetv2_configs.py efficientnetv2_params:
# (train size, eval size, dropout, randaug, mixup), and the paper's top-1.
V2_TABLE = {
    "s": (300, 384, 0.2, 10, 0.0, "83.9"),
    "m": (384, 480, 0.3, 15, 0.2, "85.2"),
    "l": (384, 480, 0.4, 20, 0.5, "85.7"),
}
# hparams.py base_config: 350 epochs at batch 4096, RMSProp, lr_base 0.016,
# 5 warm-up epochs, ×0.97 every 2.4 epochs, EMA 0.9999, weight decay 1e-5,
# label smoothing 0.1; 4 stages from ibase 128, RandAugment 2 layers.
V2_RECIPE = {
    "effnet_gin.train.train.train_batch_size": 4096,
    "effnet_gin.train.build_schedule.kind": "exponential",
    "effnet_gin.train.build_schedule.base_learning_rate": 0.016,
    "effnet_gin.train.build_schedule.warmup_epochs": 5,
    "effnet_gin.train.build_schedule.decay_epochs": 2.4,
    "effnet_gin.train.build_schedule.decay_factor": 0.97,
    "effnet_gin.train.build_optimizer.name": "rmsprop",
    "effnet_gin.train.build_optimizer.rho": 0.9,
    "effnet_gin.train.build_optimizer.momentum": 0.9,
    "effnet_gin.train.build_optimizer.epsilon": 1e-3,
    "effnet_gin.train.train.label_smoothing": 0.1,
    "effnet_gin.train.train.weight_decay": 1e-5,
    "effnet_gin.train.ExponentialMovingAverage.decay": 0.9999,
    # int(350 × 1281167 / 4096).
    "effnet_gin.train.train.train_steps": 109474,
    "effnet_gin.data.build_dataset.augment": "randaugment",
    "effnet_gin.data.build_dataset.randaugment_layers": 2,
}


@pytest.mark.parametrize("size", sorted(V2_TABLE))
def test_every_v2_tpu_config_is_automls_recipe_with_progressive_learning(size):
  train_size, eval_size, dropout, ram, mixup, _ = V2_TABLE[size]
  cli.configure([f"v2_{size}_tpu.gin"], **DATA)
  for selector, value in V2_RECIPE.items():
    assert trainer_helpers.resolved(selector) == value, selector
  assert trainer_helpers.resolved(
      "effnet_gin.train.train.image_size") == train_size
  for selector in ("effnet_gin.train.train.eval_image_size",
                   "effnet_gin.model.build_model.image_size",
                   "effnet_gin.train.evaluate.image_size",
                   "effnet_gin.train.export.image_size"):
    assert trainer_helpers.resolved(selector) == eval_size, selector
  progressive = trainer_helpers.resolved("effnet_gin.train.train.progressive")
  assert (progressive.num_stages, progressive.min_image_size) == (4, 128)
  assert progressive.randaugment_magnitude == (5, ram)
  assert progressive.mixup_alpha == (0.0, mixup)
  assert progressive.dropout == (0.1, dropout)
  assert progressive.cutmix_alpha is None
  # The dropout range ends at the variant's own rate.
  model = configurables.build_model(width_coefficient=0.1,
                                    depth_coefficient=0.1)
  assert model.get_layer("top_dropout").rate == dropout
  assert model.input_shape == (None, eval_size, eval_size, 3)


@pytest.mark.parametrize("size", sorted(V2_TABLE))
def test_v2_headers_state_their_own_accuracy_and_sizes(size):
  train_size, eval_size, _, _, _, top1 = V2_TABLE[size]
  with open(cli.resolve_gin_file(f"v2_{size}_tpu.gin")) as f:
    header = f.read()
  assert f"top-1 {top1}%" in header
  assert f"{train_size}x{train_size}" in header
  assert f"{eval_size}x{eval_size}" in header


@pytest.mark.parametrize("name,batch", [("v2_s_gpu.gin", 256),
                                        ("v2_s_cpu.gin", 32)])
def test_v2_gpu_and_cpu_configs_keep_the_recipe_at_their_batch(name, batch):
  cli.configure([name], **DATA)
  assert trainer_helpers.resolved(
      "effnet_gin.train.train.train_batch_size") == batch
  assert trainer_helpers.resolved("effnet_gin.train.train.train_steps") == int(
      350 * 1281167 / batch)
  assert trainer_helpers.resolved("effnet_gin.train.train.image_size") == 300
  assert trainer_helpers.resolved(
      "effnet_gin.train.train.progressive").num_stages == 4
