"""Compares effnet_gin's eval preprocessing with the reference's own pixels.

Prints, per photograph of tests/fixtures/reference_preprocessing, the mean
and max absolute difference (0..255 levels) between `preprocess_for_eval` at
224 px and `eval_224.npy`, which the reference's preprocessing returned for
it, plus the CPU time per image of each resize method.

    python3 bench/reference_preprocessing.py --resize_method=bicubic
"""
import os
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from effnet_gin.data import preprocessing

FIXTURES = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests",
    "fixtures", "reference_preprocessing")
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")

_RESIZE_METHOD = flags.DEFINE_enum("resize_method", preprocessing.TF1_BICUBIC,
                                   preprocessing.RESIZE_METHODS,
                                   "Preprocessing.resize_method to compare.")
_REPEATS = flags.DEFINE_integer("repeats", 50, "Timed calls per photograph.")


def main(argv):
  del argv
  options = preprocessing.Preprocessing(resize_method=_RESIZE_METHOD.value)
  reference = np.load(os.path.join(FIXTURES, "eval_224.npy"))
  preprocess = tf.function(
      lambda encoded: preprocessing.preprocess_for_eval(encoded, 224, options))
  cpu_ms = []
  for name, expected in zip(PHOTOS, reference):
    encoded = tf.io.read_file(os.path.join(FIXTURES, f"{name}.jpg"))
    difference = np.abs(preprocess(encoded).numpy() - expected)
    start = time.process_time()
    for _ in range(_REPEATS.value):
      preprocess(encoded)
    cpu_ms.append((time.process_time() - start) * 1000 / _REPEATS.value)
    print(f"{name:10s} mean {difference.mean():.4f}  max "
          f"{difference.max():.4f} levels  {cpu_ms[-1]:.2f} CPU ms/img")
  print(f"resize_method={options.resize_method}: mean "
        f"{np.mean(cpu_ms):.2f} CPU ms/img (decode, crop, resize; CPU "
        "shared with other processes)")


if __name__ == "__main__":
  app.run(main)
