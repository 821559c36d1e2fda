"""Benchmarks the training input pipeline against a minimal tf.data pipeline.

Prints images/sec (best round) and CPU milliseconds per image (best round) of
`build_dataset(split='train')` and of a minimal fused decode-crop-resize-flip
pipeline over the same TFRecord files, measured in alternating rounds in one
run, and their ratios. With no `train-*` files in --data_dir, first writes
--num_images ImageNet-sized (500x375) JPEGs there.

    python3 bench/input_pipeline.py --data_dir=/tmp/bench_imagenet \
        --image_size=224 --batch_size=64 --seconds=10 --rounds=3
"""
import functools
import os
import time

from absl import app
from absl import flags
import tensorflow as tf

from effnet_gin.data import pipeline
from effnet_gin.data import sources
from effnet_gin.data.sources import tfrecord
from effnet_gin.data.writers import fake_imagenet

_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFRecord directory.",
                                required=True)
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Output resolution.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Batch size.")
_SECONDS = flags.DEFINE_float("seconds", 10.0, "Measured seconds per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds per pipeline.")
_AUGMENT = flags.DEFINE_enum(
    "augment", None, ["autoaugment", "randaugment"],
    "Augmentation in our pipeline (the minimal one never augments).")
_NUM_IMAGES = flags.DEFINE_integer(
    "num_images", 1024, "Images to generate when --data_dir has none.")


def minimal_pipeline(files, image_size, batch_size):
  """The shortest reasonable tf.data pipeline doing the same work."""

  def decode(serialized):
    example = sources.parse_imagenet_example(serialized)
    image = example["image"]
    shape = tf.image.extract_jpeg_shape(image)
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        shape, tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    window = tf.stack([begin[0], begin[1], size[0], size[1]])
    image = tf.image.decode_and_crop_jpeg(image, window, channels=3)
    image = tf.image.resize(image[tf.newaxis], [image_size, image_size],
                            method="bicubic")[0]
    return tf.image.random_flip_left_right(image), example["label"]

  dataset = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files))
  dataset = dataset.repeat().interleave(
      functools.partial(tf.data.TFRecordDataset,
                        buffer_size=8 << 20), cycle_length=min(16, len(files)),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
  dataset = dataset.shuffle(1024).map(decode,
                                      num_parallel_calls=tf.data.AUTOTUNE,
                                      deterministic=False)
  return dataset.batch(batch_size,
                       drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def measure(dataset, batch_size, seconds):
  """Iterates `dataset` for ~`seconds` after a warm-up.

  Returns:
    (images per second, CPU milliseconds per image). CPU time per image is
    the steadier figure when other processes share the machine.
  """
  iterator = iter(dataset)
  for _ in range(5):
    next(iterator)
  start, cpu_start = time.perf_counter(), time.process_time()
  batches = 0
  while time.perf_counter() - start < seconds:
    next(iterator)
    batches += 1
  images = batches * batch_size
  return (images / (time.perf_counter() - start),
          (time.process_time() - cpu_start) * 1000 / images)


def main(argv):
  del argv
  data_dir = _DATA_DIR.value
  if not tf.io.gfile.glob(os.path.join(data_dir, "train-*")):
    print(f"writing {_NUM_IMAGES.value} 500x375 JPEGs to {data_dir} ...")
    fake_imagenet.write_fake_imagenet(data_dir, num_train=_NUM_IMAGES.value,
                                      num_eval=16, num_classes=64,
                                      image_size=375, image_width=500,
                                      train_shards=16, eval_shards=1,
                                      kind="learnable")
  source = tfrecord.TFRecordSource(data_dir)
  size, batch = _IMAGE_SIZE.value, _BATCH_SIZE.value
  candidates = {
      "effnet_gin build_dataset":
          lambda: pipeline.build_dataset(
              split="train", global_batch_size=batch, image_size=size, source=
              source, num_classes=1000, augment=_AUGMENT.value),
      "minimal tf.data":
          lambda: minimal_pipeline(list(source.files("train")), size, batch),
  }
  rates = {name: [] for name in candidates}
  cpu_costs = {name: [] for name in candidates}
  for _ in range(_ROUNDS.value):
    for name, build in candidates.items():
      rate, cpu_ms = measure(build(), batch, _SECONDS.value)
      rates[name].append(rate)
      cpu_costs[name].append(cpu_ms)
      print(f"  {name}: {rate:.1f} img/s, {cpu_ms:.3f} CPU ms/img")
  ours, minimal = (max(rates[name]) for name in candidates)
  ours_cpu, minimal_cpu = (min(cpu_costs[name]) for name in candidates)
  print(f"image_size={size} batch_size={batch} augment={_AUGMENT.value} "
        f"cores={os.cpu_count()} (best of {_ROUNDS.value} alternating rounds)")
  print(f"ours:    {ours:.1f} img/s  {ours_cpu:.3f} CPU ms/img")
  print(f"minimal: {minimal:.1f} img/s  {minimal_cpu:.3f} CPU ms/img")
  print(f"ratio:   {ours / minimal:.3f} (throughput)  "
        f"{minimal_cpu / ours_cpu:.3f} (CPU cost, minimal / ours)")


if __name__ == "__main__":
  app.run(main)
