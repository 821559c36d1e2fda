"""Shared by the evaluator tests: a tiny eval set, config and checkpoints."""
import json
import os

import gin
import pytest
import tensorflow as tf

from effnet_gin import configurables
from effnet_gin.data import write_fake_imagenet
from effnet_gin.model import build_model
from effnet_gin.checkpoints import averaging
from effnet_gin.checkpoints import checkpointing
from effnet_gin.train import optim

from effnet_gin.evaluation import evaluator as evaluate_lib

NUM_CLASSES = 10
NUM_EVAL = 37  # Not a multiple of the batch: the last batches are padded.
IMAGE_SIZE = 32
EVAL_BATCH_SIZE = 8


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("data"))
  write_fake_imagenet(directory, num_train=8, num_eval=NUM_EVAL,
                      num_classes=NUM_CLASSES, image_size=40, train_shards=1,
                      eval_shards=3, kind="learnable")
  return directory


def configure(data_dir, strategy_kind="cpu"):
  gin.parse_config(f"""
      build_model.variant = 'efficientnet-b0'
      build_model.num_classes = {NUM_CLASSES}
      build_model.width_coefficient = 0.25
      build_model.depth_coefficient = 0.25
      build_model.image_size = {IMAGE_SIZE}
      build_dataset.source = @TFRecordSource()
      build_dataset.num_classes = {NUM_CLASSES}
      TFRecordSource.data_dir = '{data_dir}'
      build_strategy.kind = '{strategy_kind}'
  """)


class ContractWriter:
  """Writes checkpoints as the trainer does (its checkpoint builder and
  Manager), with made-up weights.

  Before each save the raw weights get noise and the EMA takes one update,
  so raw and EMA weights (and successive checkpoints) all differ.
  """

  def __init__(self, model_dir, *, use_ema=True, max_to_keep=10):
    self.model = configurables.build_model()
    self.optimizer = optim.build_optimizer(0.01)
    self.optimizer.build(self.model.trainable_variables)
    self.ema = averaging.ExponentialMovingAverage(
        self.model) if use_ema else None
    self.step = tf.Variable(0, dtype=tf.int64)
    self.manager = checkpointing.Manager(
        checkpointing.build_checkpoint(step=self.step, model=self.model,
                                       optimizer=self.optimizer, ema=self.ema),
        model_dir, max_to_keep=max_to_keep)

  def save(self, step):
    for i, variable in enumerate(self.model.trainable_variables):
      variable.assign_add(0.3 * tf.random.stateless_normal(
          variable.shape, [step, i], dtype=variable.dtype))
    self.step.assign(step)
    if self.ema is not None:
      self.ema.update(step)
    return self.manager.save(step)


def read_results(model_dir):
  with open(os.path.join(model_dir, "eval", "results.jsonl")) as f:
    return [json.loads(line) for line in f]


def evaluate(model_dir, **kwargs):
  kwargs.setdefault("train_steps", 3)
  return configurables.evaluate(model_dir=model_dir,
                                eval_batch_size=EVAL_BATCH_SIZE,
                                image_size=IMAGE_SIZE, **kwargs)
