#!/usr/bin/env python3
"""Training throughput of our loop against Keras `fit`, in one run.

    python3 bench/train_step.py [--image_size=224] [--batch_size=32]
        [--steps=12] [--rounds=2]

Both train EfficientNet-B0 in float32 on the same in-memory random batch:
ours is `effnet_gin.train.train_step.build_host_loop` (the trainer's compiled
loop: forward, label-smoothed loss with weight decay, TF1 RMSProp, EMA
update) over `build_model`; the baseline is `keras.applications.EfficientNetB0`
compiled with RMSprop and trained with `model.fit`. The input is a cached
tensor in both, so the figures are the training step alone. Each side runs
one untimed warm-up, then `--rounds` timed rounds of `--steps` steps, and the
best round counts. Prints images/sec of both and the ratio.
"""
import time

from absl import app
from absl import flags
import keras
import numpy as np
import tensorflow as tf

from effnet_gin.model import build_model
from effnet_gin.train import train_step
from effnet_gin.checkpoints import averaging
from effnet_gin.train import optim

_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Input resolution.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Batch size.")
_STEPS = flags.DEFINE_integer("steps", 12, "Steps per timed round.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Timed rounds (best counts).")
_JIT = flags.DEFINE_bool("jit_compile", False, "Compile our step with XLA.")

NUM_CLASSES = 1000


def _batch(batch_size, image_size):
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 255, (batch_size, image_size, image_size, 3))
  labels = rng.integers(0, NUM_CLASSES, batch_size)
  return images.astype(np.float32), labels.astype(np.int32)


def ours(images, labels, steps, rounds, jit_compile):
  """Best images/sec of the trainer's compiled host loop."""
  strategy = tf.distribute.get_strategy()
  batch_size = images.shape[0]
  model = build_model("efficientnet-b0", NUM_CLASSES,
                      image_size=images.shape[1])
  schedule = optim.build_schedule(global_batch_size=batch_size,
                                  num_train_images=1_281_167)
  optimizer = optim.build_optimizer(schedule)
  optimizer.build(model.trainable_variables)
  ema = averaging.ExponentialMovingAverage(model)
  host_loop = train_step.build_host_loop(strategy=strategy, model=model,
                                         optimizer=optimizer, ema=ema,
                                         global_batch_size=batch_size,
                                         label_smoothing=0.1, weight_decay=1e-5,
                                         jit_compile=jit_compile)
  dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
  iterator = iter(strategy.experimental_distribute_dataset(dataset))
  host_loop(iterator, tf.constant(2))  # Trace, compile and warm up.
  best = 0.0
  for _ in range(rounds):
    start = time.perf_counter()
    loss_sum = host_loop(iterator, tf.constant(steps))[0]
    float(loss_sum)  # Wait for the round to finish.
    best = max(best, steps * batch_size / (time.perf_counter() - start))
  return best


class _EpochTimer(keras.callbacks.Callback):

  def __init__(self):
    super().__init__()
    self.seconds = []
    self._start = None

  def on_epoch_begin(self, epoch, logs=None):
    self._start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    self.seconds.append(time.perf_counter() - self._start)


def keras_fit(images, labels, steps, rounds):
  """Best images/sec of keras.applications.EfficientNetB0 with `fit`."""
  batch_size = images.shape[0]
  model = keras.applications.EfficientNetB0(weights=None, classes=NUM_CLASSES,
                                            input_shape=images.shape[1:])
  model.compile(
      optimizer=keras.optimizers.RMSprop(0.016, rho=0.9, momentum=0.9,
                                         epsilon=1e-3),
      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=False))
  dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
  model.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0)  # Warm up.
  timer = _EpochTimer()
  model.fit(dataset, steps_per_epoch=steps, epochs=rounds, verbose=0,
            callbacks=[timer])
  return max(steps * batch_size / seconds for seconds in timer.seconds)


def main(argv):
  del argv
  images, labels = _batch(_BATCH_SIZE.value, _IMAGE_SIZE.value)
  print(f"EfficientNet-B0, {_IMAGE_SIZE.value} px, batch {_BATCH_SIZE.value}, "
        f"float32, {_STEPS.value} steps x {_ROUNDS.value} rounds, "
        f"{len(tf.config.list_physical_devices('CPU'))} CPU device(s), "
        f"jit_compile={_JIT.value}")
  ours_rate = ours(images, labels, _STEPS.value, _ROUNDS.value, _JIT.value)
  print(f"effnet_gin trainer loop : {ours_rate:7.2f} images/sec", flush=True)
  keras_rate = keras_fit(images, labels, _STEPS.value, _ROUNDS.value)
  print(f"keras.applications fit  : {keras_rate:7.2f} images/sec")
  print(f"ratio ours / keras fit  : {ours_rate / keras_rate:7.2f}x")


if __name__ == "__main__":
  app.run(main)
