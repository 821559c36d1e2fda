"""Helpers shared by the trainer tests: tiny bindings and subprocess runs."""
import os
import subprocess
import sys

import keras
import tensorflow as tf

from effnet_gin.train import checkpointing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(REPO, "bin")

# Shrinks any shipped config to a model and data that train in seconds on a
# CPU: a B0 at a tenth of its width and depth on 32 px in-graph fake images.
TINY_BINDINGS = [
    "effnet_gin.train.build_strategy.kind = 'cpu'",
    "effnet_gin.model.build_model.width_coefficient = 0.1",
    "effnet_gin.model.build_model.depth_coefficient = 0.1",
    "IMAGE_SIZE = 32",
    "NUM_CLASSES = 10",
    "NUM_TRAIN_IMAGES = 64",
    "NUM_EVAL_IMAGES = 16",
    "TRAIN_BATCH_SIZE = 8",
    "EVAL_BATCH_SIZE = 8",
    "TRAIN_STEPS = 2",
    "STEPS_PER_LOOP = 1",
    "effnet_gin.data.build_dataset.source = @effnet_gin.data.FakeSource()",
    "effnet_gin.data.FakeSource.num_train = 64",
    "effnet_gin.data.FakeSource.num_eval = 16",
    "effnet_gin.data.FakeSource.num_classes = 10",
    "effnet_gin.data.FakeSource.image_size = 40",
]


def reset_precision():
  keras.mixed_precision.set_global_policy("float32")


def latest_step(model_dir):
  """The step number of the newest checkpoint in model_dir, or None."""
  latest = tf.train.latest_checkpoint(model_dir)
  return None if latest is None else checkpointing.checkpoint_step(latest)


def subprocess_env(**extra):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  env.pop("TF_CONFIG", None)
  env.update(extra)
  return env


def trainer_command(model_dir, *gin_params, gin_file="demo.gin"):
  command = [sys.executable, os.path.join(BIN, "trainer"),
             f"--gin_file={gin_file}", f"--model_dir={model_dir}"]
  command += [f"--gin_param={p}" for p in TINY_BINDINGS + list(gin_params)]
  return command


def run_trainer(model_dir, *gin_params, timeout=300, env=None, **kwargs):
  """Runs bin/trainer to completion; returns the CompletedProcess."""
  return subprocess.run(
      trainer_command(model_dir, *gin_params, **kwargs),
      env=env or subprocess_env(), capture_output=True, text=True,
      timeout=timeout, check=False)
