#!/usr/bin/env python3
"""The evaluator's start-up count of the validation set, cold and cached.

    python3 bench/eval_record_counts.py [--num_eval=4000] [--image_size=160]

Writes a validation set of `--num_eval` JPEG records (16 shards) and, in a
fresh process each time (so the in-process cache is empty), times what an
evaluator start does before its first evaluation to count the examples:
1. without model_dir/eval/record_counts.json: every file is read whole;
2. with it (written by the first start): one stat per file.
"""
import os
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

from effnet_gin.data import write_fake_imagenet

_NUM_EVAL = flags.DEFINE_integer("num_eval", 4000, "Validation records.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 160, "JPEG side in pixels.")

# One evaluator start's counting: load the cache, count, save the cache.
_START = """
import sys, time
from effnet_gin.data.sources import tfrecord
from effnet_gin.evaluation import records
start = time.perf_counter()
record_counts = tfrecord.RecordCounts()
cache = records.RecordCountCache(sys.argv[2], record_counts)
cache.load()
counts = tfrecord.TFRecordSource(
    sys.argv[1], record_counts=record_counts).examples_per_pipeline("eval", 1)
cache.save_if_changed()
print(sum(counts), time.perf_counter() - start)
"""


def _start(data_dir, model_dir):
  output = subprocess.run([sys.executable, "-c", _START, data_dir, model_dir],
                          capture_output=True, text=True, check=True).stdout
  count, seconds = output.split()
  return int(count), float(seconds)


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    data_dir, model_dir = os.path.join(tmp, "data"), os.path.join(tmp, "run")
    write_fake_imagenet(data_dir, num_train=16, num_eval=_NUM_EVAL.value,
                        num_classes=10, image_size=_IMAGE_SIZE.value,
                        train_shards=1, eval_shards=16)
    size = sum(
        os.path.getsize(os.path.join(data_dir, f))
        for f in os.listdir(data_dir)
        if f.startswith("validation"))
    print(f"{_NUM_EVAL.value} validation records, {size / 1e6:.1f} MB, "
          "16 files")
    for label in ("first start (counts every file)",
                  "restart (record_counts.json) "):
      count, seconds = _start(data_dir, model_dir)
      print(f"{label}: counted {count} in {seconds:.2f} s", flush=True)


if __name__ == "__main__":
  app.run(main)
