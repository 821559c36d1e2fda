#!/usr/bin/env python3
"""Training throughput of our loop against Keras `fit`, in one run.

    python3 bench/train_step.py [--variant=efficientnet-b0] [--image_size=]
        [--batch_size=32] [--steps=12] [--rounds=2]
    python3 bench/train_step.py --stage_table [--batch_size=8] [--steps=4]

Both train the variant (EfficientNet-B0 or EfficientNetV2-S) in float32 on
the same in-memory random batch: ours is
`effnet_gin.train.train_step.build_host_loop` (the trainer's compiled loop:
forward, label-smoothed loss with weight decay, TF1 RMSProp, EMA update) over
`build_model`; the baseline is keras.applications' `EfficientNetB0` or
`EfficientNetV2S` compiled with RMSprop and trained with `model.fit`. The
input is a cached tensor in both, so the figures are the training step
alone. Each side runs one untimed warm-up, then `--rounds` timed rounds of
`--steps` steps, and the best round counts. Prints images/sec of both and
the ratio. The image size defaults to the variant's train size (224 for B0,
300 for V2-S).

`--stage_table` instead times our loop alone for EfficientNetV2-S at the
four image sizes of automl's progressive learning (`stage_sizes`) and for
EfficientNet-B4 at 380, and prints a Markdown table: the paper's claim that
V2 trains faster than V1 at comparable accuracy, measured on this machine.
"""
import time

from absl import app
from absl import flags
import keras
import numpy as np
import tensorflow as tf

from effnet_gin.model import build_model
from effnet_gin.model import variant_train_resolution
from effnet_gin.train import train_step
from effnet_gin.checkpoints import averaging
from effnet_gin.train import optim

_VARIANT = flags.DEFINE_enum("variant", "efficientnet-b0",
                             ["efficientnet-b0", "efficientnetv2-s"],
                             "The model both sides train.")
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", None, "Input resolution; default the variant's train size.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Batch size.")
_STEPS = flags.DEFINE_integer("steps", 12, "Steps per timed round.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Timed rounds (best counts).")
_JIT = flags.DEFINE_bool("jit_compile", False, "Compile our step with XLA.")
_STAGE_TABLE = flags.DEFINE_bool(
    "stage_table", False, "Time our loop for V2-S at its progressive-learning "
    "sizes and B4 at 380; print a Markdown table.")

NUM_CLASSES = 1000
# keras.applications' counterpart of each variant.
KERAS_MODELS = {
    "efficientnet-b0": "EfficientNetB0",
    "efficientnetv2-s": "EfficientNetV2S"
}
# automl's progressive learning for ImageNet: 4 stages from 128 px.
NUM_STAGES = 4
STAGE_BASE_SIZE = 128


def stage_sizes(train_size, num_stages=NUM_STAGES, base=STAGE_BASE_SIZE):
  """automl's stage image sizes: int(base + (train_size - base) * (i+1) / N).

  automl's `efficientnetv2/main.py` truncates with int(); for V2-S (300)
  that is 171, 214, 257, 300.
  """
  return [
      int(base + (train_size - base) * (stage + 1) / num_stages)
      for stage in range(num_stages)
  ]


def _batch(batch_size, image_size):
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 255, (batch_size, image_size, image_size, 3))
  labels = rng.integers(0, NUM_CLASSES, batch_size)
  return images.astype(np.float32), labels.astype(np.int32)


def ours(variant, images, labels, steps, rounds, jit_compile):
  """Best images/sec of the trainer's compiled host loop."""
  strategy = tf.distribute.get_strategy()
  batch_size = images.shape[0]
  model = build_model(variant, NUM_CLASSES, image_size=images.shape[1])
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


def keras_fit(variant, images, labels, steps, rounds):
  """Best images/sec of the keras.applications model with `fit`."""
  batch_size = images.shape[0]
  model_class = getattr(keras.applications, KERAS_MODELS[variant])
  model = model_class(weights=None, classes=NUM_CLASSES,
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


def stage_table(batch_size, steps, rounds, jit_compile):
  """Prints our loop's images/sec for B4 at 380 and V2-S by stage."""
  rows = [("efficientnet-b4", "its train size", 380)]
  rows += [("efficientnetv2-s", f"stage {stage + 1} of {NUM_STAGES}", size)
           for stage, size in enumerate(stage_sizes(300))]
  print(f"effnet_gin trainer loop, batch {batch_size}, float32, {steps} "
        f"steps x {rounds} rounds, jit_compile={jit_compile}\n\n"
        "| model | image size | train images/sec | vs B4 at 380 |\n"
        "|---|---|---|---|")
  b4_rate = None
  for variant, what, size in rows:
    images, labels = _batch(batch_size, size)
    rate = ours(variant, images, labels, steps, rounds, jit_compile)
    b4_rate = b4_rate or rate
    print(
        f"| `{variant}` ({what}) | {size} | {rate:.2f} | "
        f"{rate / b4_rate:.2f}x |", flush=True)


def main(argv):
  del argv
  if _STAGE_TABLE.value:
    stage_table(_BATCH_SIZE.value, _STEPS.value, _ROUNDS.value, _JIT.value)
    return
  variant = _VARIANT.value
  size = _IMAGE_SIZE.value or variant_train_resolution(variant)
  images, labels = _batch(_BATCH_SIZE.value, size)
  print(
      f"{variant} vs keras.applications.{KERAS_MODELS[variant]}, {size} px, batch {_BATCH_SIZE.value}, "
      f"float32, {_STEPS.value} steps x {_ROUNDS.value} rounds, "
      f"{len(tf.config.list_physical_devices('CPU'))} CPU device(s), "
      f"jit_compile={_JIT.value}")
  ours_rate = ours(variant, images, labels, _STEPS.value, _ROUNDS.value,
                   _JIT.value)
  print(f"effnet_gin trainer loop : {ours_rate:7.2f} images/sec", flush=True)
  keras_rate = keras_fit(variant, images, labels, _STEPS.value, _ROUNDS.value)
  print(f"keras.applications fit  : {keras_rate:7.2f} images/sec")
  print(f"ratio ours / keras fit  : {ours_rate / keras_rate:7.2f}x")


if __name__ == "__main__":
  app.run(main)
