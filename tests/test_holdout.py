"""Held-out training shards move their images from the train to the eval count.

The rule is the reference's main.py (`--holdout_shards`): int(num_train_images
× shards / 1024) images leave the training count (steps per epoch) and are
the eval count (eval steps).
"""
import logging

import gin
import pytest

from effnet_gin import cli
from effnet_gin import configurables
from effnet_gin import data
from effnet_gin.data import holdout


@pytest.mark.parametrize(
    "shards,expected",
    [
        (0, (1281167, 50000)),
        (20, (1256145, 25022)),  # int(1281167 × 20 / 1024) = 25,022
        (1, (1279916, 1251)),  # int(1281167 / 1024) = 1,251
        (512, (640584, 640583)),  # int(640583.5) = 640,583
    ])
def test_counts_follow_the_reference(shards, expected):
  assert data.holdout_counts(num_train_images=1281167, num_eval_images=50000,
                             holdout_train_shards=shards) == expected
  assert data.images_after_holdout("train", num_train_images=1281167,
                                   num_eval_images=50000,
                                   holdout_train_shards=shards) == expected[0]


@pytest.mark.parametrize("kwargs", [
    dict(holdout_train_shards=-1),
    dict(holdout_train_shards=1024),
    dict(holdout_train_shards=4, num_train_shards=4),
    dict(num_train_images=0)
])
def test_bad_counts_name_the_value(kwargs):
  arguments = dict(num_train_images=100, num_eval_images=10)
  arguments.update(kwargs)
  with pytest.raises(ValueError, match=next(iter(kwargs))):
    data.holdout_counts(**arguments)
  with pytest.raises(ValueError, match="split"):
    data.images_after_holdout("test", num_train_images=1, num_eval_images=1)


def test_the_imagenet_configs_route_both_counts_through_the_holdout(tmp_path):
  cli.configure(["b0_tpu.gin"], ["HOLDOUT_TRAIN_SHARDS = 20"],
                data_dir=str(tmp_path))
  assert configurables.TFRecordSource().holdout_train_shards == 20
  with gin.config_scope("train_split"):
    assert configurables.images_after_holdout() == 1256145
  with gin.config_scope("eval_split"):
    assert configurables.images_after_holdout() == 25022
  # 350 epochs of the 1,256,145 training images left, at batch 2048.
  with gin.config_scope("total"):
    assert configurables.steps_for_epochs() == int(350 * 1256145 / 2048)


def test_a_holdout_run_logs_and_uses_the_adjusted_counts(tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="absl")
  holdout._log_once.cache_clear()  # Logged once per process and setting.
  written = data.write_fake_imagenet(str(tmp_path / "data"), num_train=64,
                                     num_eval=8, num_classes=4, image_size=36,
                                     train_shards=4, eval_shards=1)
  # One of 4 shards held out: int(64 × 1 / 4) = 16 images move to eval,
  # so an epoch is 48 / 8 = 6 steps (8 without the holdout) and the eval
  # reads all 16 held-out images (the validation file holds only 8).
  cli.configure(["b0_cpu.gin"], [
      f"effnet_gin.data.TFRecordSource.data_dir = '{written['data_dir']}'",
      "HOLDOUT_TRAIN_SHARDS = 1",
      "effnet_gin.data.images_after_holdout.num_train_shards = 4",
      "NUM_TRAIN_IMAGES = 64", "NUM_EVAL_IMAGES = 8", "NUM_CLASSES = 4",
      "IMAGE_SIZE = 32", "TRAIN_BATCH_SIZE = 8", "EVAL_BATCH_SIZE = 8",
      "TRAIN_EPOCHS = 1", "STEPS_PER_LOOP = 6",
      "effnet_gin.model.build_model.width_coefficient = 0.1",
      "effnet_gin.model.build_model.depth_coefficient = 0.1",
      "effnet_gin.train.train.mode = 'train_and_eval'"
  ])
  result = configurables.train(model_dir=str(tmp_path / "model"),
                               command="test")
  assert result["step"] == 6
  assert result["eval"]["num_examples"] == 16
  messages = [r.getMessage() for r in caplog.records]
  assert any(
      m.startswith("Holdout: the first 1 of 4 training shards") and
      "training on 48 images (of 64), evaluating on 16" in m
      for m in messages), messages
  assert any(
      m.startswith("Durations: 6 train steps (1.00 epochs of 6.00 "
                   "steps)") for m in messages)
