#!/usr/bin/env python3
"""What stopping on SIGTERM costs and how fast it is, on the tiny model.

    python3 bench/preemption.py [--steps=300] [--rounds=3] [--signals=2]

1. Step time of the trainer's compiled host loop (B0 at width and depth 0.1,
   32 px, batch 8, default strategy) with and without the per-step stop check
   (`preemption.StopRequest`), in alternating timed rounds; the best counts.
2. Time from SIGTERM to exit of `bin/trainer` at STEPS_PER_LOOP=1000: the
   signal is sent once the in-loop progress line of step 40 appears.
"""
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import trainer_helpers  # noqa: E402  (the tests' tiny bindings and command)

from effnet_gin.model import build_model  # noqa: E402
from effnet_gin.checkpoints import averaging  # noqa: E402
from effnet_gin.train import train_step  # noqa: E402
from effnet_gin.train import optim  # noqa: E402
from effnet_gin.train import preemption  # noqa: E402

_STEPS = flags.DEFINE_integer("steps", 300, "Steps per timed round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed rounds per variant.")
_SIGNALS = flags.DEFINE_integer("signals", 2, "SIGTERM runs of bin/trainer.")


def _host_loops():
  """Two host loops over one tiny model: without and with the stop check."""
  model = build_model("efficientnet-b0", 10, width_coefficient=0.1,
                      depth_coefficient=0.1, image_size=32)
  schedule = optim.build_schedule(global_batch_size=8, num_train_images=64,
                                  train_steps=100_000)
  optimizer = optim.build_optimizer(schedule)
  optimizer.build(model.trainable_variables)
  ema = averaging.ExponentialMovingAverage(model)
  common = dict(strategy=tf.distribute.get_strategy(), model=model,
                optimizer=optimizer, ema=ema, global_batch_size=8,
                label_smoothing=0.1, weight_decay=1e-5, jit_compile=False)
  return {
      "without stop check":
          train_step.build_host_loop(**common),
      "with stop check":
          train_step.build_host_loop(**common,
                                     stop_request=preemption.StopRequest())
  }


def step_times(steps, rounds):
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
  labels = rng.integers(0, 10, 8).astype(np.int32)
  iterator = iter(tf.data.Dataset.from_tensors((images, labels)).repeat())
  loops = _host_loops()
  best = {}
  for host_loop in loops.values():
    host_loop(iterator, tf.constant(5))  # Trace and warm up.
  for _ in range(rounds):
    for name, host_loop in loops.items():
      start = time.perf_counter()
      float(host_loop(iterator, tf.constant(steps))[0])
      seconds = (time.perf_counter() - start) / steps
      best[name] = min(best.get(name, float("inf")), seconds)
  return best


def sigterm_to_exit():
  """Seconds from SIGTERM (sent at step 40 of a 1000-step loop) to exit."""
  with tempfile.TemporaryDirectory() as tmp:
    log_path = os.path.join(tmp, "log")
    command = trainer_helpers.trainer_command(
        os.path.join(tmp, "model"), "TRAIN_STEPS = 5000",
        "STEPS_PER_LOOP = 1000", "effnet_gin.train.train.mode = 'train'",
        "effnet_gin.train.train.log_every_steps = 20")
    with open(log_path, "w") as log:
      process = subprocess.Popen(command, env=trainer_helpers.subprocess_env(),
                                 stdout=log, stderr=log)
    while "in-loop progress: step 40 " not in open(log_path).read():
      if process.poll() is not None:
        raise RuntimeError(open(log_path).read()[-3000:])
      time.sleep(0.02)
    start = time.perf_counter()
    process.send_signal(signal.SIGTERM)
    code = process.wait()
    seconds = time.perf_counter() - start
    text = open(log_path).read()
  stopped = re.search(r"Stopped by SIGTERM at step (\d+)", text)
  return seconds, code, int(stopped[1]) if stopped else None


def main(argv):
  del argv
  for name, seconds in step_times(_STEPS.value, _ROUNDS.value).items():
    print(f"tiny B0, 32 px, batch 8, {name:18s}: {seconds * 1e3:7.2f} ms/step",
          flush=True)
  for _ in range(_SIGNALS.value):
    seconds, code, stopped = sigterm_to_exit()
    print(
        f"STEPS_PER_LOOP=1000: SIGTERM at step 40 -> exit {code} after "
        f"{seconds:.2f} s, checkpointed step {stopped}", flush=True)


if __name__ == "__main__":
  app.run(main)
