"""Benchmark: training input from Cloud Bigtable (emulator) vs TFRecord files.

Writes --num_images ImageNet-sized JPEGs (500x375, ~110 KB each, like
ImageNet's average) as TFRecords, starts the Cloud Bigtable emulator on a
loopback port, loads the records into it with `tfrecords_to_bigtable`, and
then, in alternating rounds in one run, prints images/sec of

  * raw reading: `source.examples('train')` (encoded examples, no decoding);
  * `build_dataset(split='train')`: reading + decode/crop/resize/flip + batch;

for `BigtableSource` next to `TFRecordSource` over the same data, and the
Bigtable / TFRecord ratios (target for build_dataset: >= 0.5).

    python3 bench/bigtable_input.py --num_images=2000 --seconds=15

Never asserts. The emulator shares this machine's cores with the reader, so
Bigtable figures here are a lower bound for a real instance.
"""
import os
import sys
import tempfile
import time

from absl import app
from absl import flags
import tensorflow as tf

from effnet_gin.data import pipeline
from effnet_gin.data.sources import tfrecord
from effnet_gin.data.writers import fake_imagenet
from effnet_gin.data.writers import tfrecords_to_bigtable

# The emulator launcher is shared with the tests.
sys.path.insert(
    0,
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                 "tests"))
import bigtable_emulator  # noqa: E402  pylint: disable=g-import-not-at-top

_NUM_IMAGES = flags.DEFINE_integer("num_images", 2000, "Training images.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Output resolution.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Batch size.")
_NUM_PARALLEL_SCANS = flags.DEFINE_integer(
    "num_parallel_scans", 8, "BigtableSource.num_parallel_scans.")
_SECONDS = flags.DEFINE_float("seconds", 15.0, "Measured seconds per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Alternating rounds per pipeline.")


def elements_per_second(dataset, elements_per_item, seconds):
  """Iterates `dataset` for ~`seconds` after a warm-up; returns elements/s."""
  iterator = iter(dataset)
  for _ in range(5):
    next(iterator)
  start = time.perf_counter()
  items = 0
  while time.perf_counter() - start < seconds:
    next(iterator)
    items += 1
  return items * elements_per_item / (time.perf_counter() - start)


def raw_examples(source):
  return source.examples("train",
                         is_training=True).repeat().prefetch(tf.data.AUTOTUNE)


def main(argv):
  del argv
  binary = bigtable_emulator.find_emulator_binary()
  if binary is None:
    raise FileNotFoundError("cbtemulator not found (google-cloud-cli-bigtable-"
                            "emulator); set $CBTEMULATOR")
  size, batch = _IMAGE_SIZE.value, _BATCH_SIZE.value
  with tempfile.TemporaryDirectory() as data_dir, \
      bigtable_emulator.BigtableEmulator(binary) as emulator, \
      bigtable_emulator.emulator_host(emulator.address):
    started = time.perf_counter()
    fake_imagenet.write_fake_imagenet(data_dir, num_train=_NUM_IMAGES.value,
                                      num_eval=16, num_classes=1000,
                                      image_size=375, image_width=500,
                                      train_shards=16, eval_shards=1,
                                      kind="random", jpeg_quality=75)
    megabytes = sum(
        tf.io.gfile.stat(path).length
        for path in tf.io.gfile.glob(os.path.join(data_dir, "train-*"))) / 1e6
    print(f"wrote {_NUM_IMAGES.value} JPEGs ({megabytes:.0f} MB) in "
          f"{time.perf_counter() - started:.1f}s")
    started = time.perf_counter()
    tfrecords_to_bigtable.load_tfrecords_to_bigtable(data_dir=data_dir,
                                                     project=emulator.project,
                                                     instance=emulator.instance,
                                                     table="imagenet")
    print(f"loaded them into the emulator in "
          f"{time.perf_counter() - started:.1f}s")

    sources = {
        "bigtable":
            emulator.source(table="imagenet",
                            num_parallel_scans=_NUM_PARALLEL_SCANS.value),
        "tfrecord":
            tfrecord.TFRecordSource(data_dir),
    }
    candidates = {}
    for name, source in sources.items():
      candidates[f"{name} raw read"] = (
          lambda source=source: raw_examples(source), 1)
      candidates[f"{name} build_dataset"] = (
          lambda source=source: pipeline.build_dataset(
              split="train", global_batch_size=batch, image_size=size, source=
              source, num_classes=1000), batch)
    best = dict.fromkeys(candidates, 0.0)
    for _ in range(_ROUNDS.value):
      for name, (build, per_item) in candidates.items():
        rate = elements_per_second(build(), per_item, _SECONDS.value)
        best[name] = max(best[name], rate)
        print(f"  {name}: {rate:.1f} img/s")
  print(f"image_size={size} batch_size={batch} cores={os.cpu_count()} "
        f"num_parallel_scans={_NUM_PARALLEL_SCANS.value} "
        f"(best of {_ROUNDS.value} rounds)")
  for stage in ("raw read", "build_dataset"):
    bigtable_rate = best[f"bigtable {stage}"]
    tfrecord_rate = best[f"tfrecord {stage}"]
    print(f"{stage:>13}: bigtable {bigtable_rate:8.1f} img/s   tfrecord "
          f"{tfrecord_rate:8.1f} img/s   ratio "
          f"{bigtable_rate / tfrecord_rate:.3f}")


if __name__ == "__main__":
  app.run(main)
