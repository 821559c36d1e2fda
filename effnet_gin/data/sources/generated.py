"""Generated sources: random noise ("fake ImageNet") and learnable shapes.

Images are drawn with TensorFlow ops from stateless seeds, so example i of a
split is the same every time: generated in-graph by `RandomNoiseSource`
(kind 'random') and `LearnableShapesSource` (kind 'learnable'), or written to
JPEG TFRecords by `writers.fake_imagenet.write_fake_imagenet` (used by
`bin/make_fake_imagenet`).

The learnable task: class c is a coloured shape, shape c % 8 (disk, square,
triangle, ring, plus, diamond, bar, frame) in colour (c + c // 8) % 8 of a
fixed palette, so no single cue separates all classes once there are more than
8; position, scale, rotation, colour, brightness and the noisy background vary
per image. A small EfficientNet reaches high accuracy on it within minutes on
a CPU. At most 64 classes (8 shapes x 8 colours).
"""
import functools
import math

from absl import logging
import numpy as np
import tensorflow as tf

from effnet_gin.data.sources import protocol

NUM_SHAPES = 8
PALETTE = np.array(
    [
        (220, 40, 40),  # red
        (40, 190, 60),  # green
        (50, 80, 230),  # blue
        (230, 220, 50),  # yellow
        (200, 50, 210),  # magenta
        (50, 210, 220),  # cyan
        (245, 140, 30),  # orange
        (240, 240, 240),  # white
    ],
    np.float32)
MAX_LEARNABLE_CLASSES = NUM_SHAPES * len(PALETTE)
KINDS = ("random", "learnable")

# Salts that make the train and eval splits different images.
_SPLIT_SALT = {"train": 1, "eval": 2}


def check_kind(kind, num_classes):
  """Raises ValueError for an unknown kind or a bad class count."""
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}")
  if kind == "learnable" and num_classes > MAX_LEARNABLE_CLASSES:
    raise ValueError(f"the learnable kind has at most {MAX_LEARNABLE_CLASSES} "
                     f"classes, got num_classes={num_classes}")


def random_image(seed, height, width):
  """Uniform noise, uint8 [height, width, 3]."""
  return tf.cast(
      tf.random.stateless_uniform([height, width, 3], seed, maxval=256,
                                  dtype=tf.int32), tf.uint8)


def _shape_mask(shape_id, u, v):
  """Boolean mask of shape `shape_id` in unit-radius coordinates (u, v)."""
  radius = tf.sqrt(u * u + v * v)
  box = tf.maximum(tf.abs(u), tf.abs(v))
  masks = [
      radius < 1.0,  # disk
      box < 0.8,  # square
      (v < 0.5) & (v > -1.0 + math.sqrt(3.0) * tf.abs(u)),  # triangle
      (radius > 0.55) & (radius < 1.0),  # ring
      ((tf.abs(u) < 0.3) & (tf.abs(v) < 1.0)) | ((tf.abs(v) < 0.3) &
                                                 (tf.abs(u) < 1.0)),  # plus
      tf.abs(u) + tf.abs(v) < 1.0,  # diamond
      u * u + (v / 0.45)**2 < 1.0,  # bar
      (box > 0.5) & (box < 0.85),  # frame
  ]
  return tf.gather(tf.stack(masks), shape_id)


def learnable_image(label, seed, height, width):
  """Draws class `label` of the learnable task.

  Args:
    label: int32 scalar in [0, 64).
    seed: [2] stateless random seed.
    height: int, image height.
    width: int, image width.

  Returns:
    uint8 [height, width, 3].
  """
  seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=4)
  size = float(min(height, width))
  # centre_y, centre_x, radius, angle, brightness: one uniform draw each.
  params = tf.random.stateless_uniform([5], seeds[0])
  centre_y = (0.35 + 0.3 * params[0]) * height
  centre_x = (0.35 + 0.3 * params[1]) * width
  radius = (0.14 + 0.12 * params[2]) * size
  angle = (params[3] - 0.5) * 0.6
  brightness = 0.75 + 0.35 * params[4]
  y, x = tf.meshgrid(
      tf.range(height, dtype=tf.float32) + 0.5,
      tf.range(width, dtype=tf.float32) + 0.5, indexing="ij")
  dy, dx = (y - centre_y) / radius, (x - centre_x) / radius
  u = dx * tf.cos(angle) + dy * tf.sin(angle)
  v = -dx * tf.sin(angle) + dy * tf.cos(angle)
  mask = _shape_mask(label % NUM_SHAPES, u, v)

  colour_id = (label + label // NUM_SHAPES) % len(PALETTE)
  colour = (tf.gather(tf.constant(PALETTE), colour_id) +
            tf.random.stateless_uniform([3], seeds[1], -25.0, 25.0))
  colour *= brightness
  # A dim background with a gradient between two random colours.
  corners = tf.random.stateless_uniform([2, 3], seeds[2], 0.0, 120.0)
  ramp = (y / height)[..., tf.newaxis]
  background = corners[0] * (1.0 - ramp) + corners[1] * ramp
  image = tf.where(mask[..., tf.newaxis], colour, background)
  image += tf.random.stateless_normal([height, width, 3], seeds[3], stddev=12.0)
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def generated_example(index, *, split, kind, num_classes, height, width,
                      seed=0):
  """Example `index` of a generated split: {'image': uint8, 'label': int32}.

  Args:
    index: int64 scalar, the example's index in its split.
    split: 'train' or 'eval'.
    kind: 'random' (noise with random labels) or 'learnable'.
    num_classes: int, labels are in [0, num_classes).
    height: int, image height.
    width: int, image width.
    seed: int, selects a different generated dataset.

  Returns:
    {'image': uint8 [height, width, 3], 'label': int32 scalar (0-based)}.
  """
  example_seed = tf.stack([
      tf.constant(seed * 10 + _SPLIT_SALT[split], tf.int64),
      tf.cast(index, tf.int64)
  ])
  label_seed, image_seed = tf.unstack(
      tf.random.experimental.stateless_split(example_seed, num=2))
  label = tf.random.stateless_uniform([], label_seed, maxval=num_classes,
                                      dtype=tf.int32)
  if kind == "random":
    image = random_image(image_seed, height, width)
  else:
    image = learnable_image(label, image_seed, height, width)
  return {"image": image, "label": label}


class _GeneratedSource(protocol.Source):
  """Generates examples in-graph; example i is always the same."""

  kind = None

  def __init__(self, *, num_train, num_eval, num_classes, image_size, seed):
    check_kind(self.kind, num_classes)
    self.sizes = {"train": num_train, "eval": num_eval}
    self.num_classes = num_classes
    self.image_size = image_size
    self.seed = seed

  def examples(self, split, input_context=None, *, is_training, seed=None):
    """See `Source.examples`; pipeline i generates indices i, i + k, ...."""
    del is_training, seed  # The pipeline shuffles; examples are fixed.
    protocol.check_split(split)
    num_pipelines, pipeline_id = protocol.pipeline_shard(input_context)
    indices = tf.data.Dataset.range(self.sizes[split]).shard(
        num_pipelines, pipeline_id)
    return indices.map(
        lambda index: generated_example(
            index, split=split, kind=self.kind, num_classes=self.num_classes,
            height=self.image_size, width=self.image_size, seed=self.seed),
        num_parallel_calls=tf.data.AUTOTUNE)

  def num_examples(self, split):
    protocol.check_split(split)
    return self.sizes[split]

  def examples_per_pipeline(self, split, num_input_pipelines):
    return protocol.shard_sizes(self.num_examples(split), num_input_pipelines)


class RandomNoiseSource(_GeneratedSource):
  """Random-noise images with random labels, generated in-graph, no files.

  Like the reference's fake_imagenet: for smoke runs and throughput tests.
  `write_fake_imagenet(kind='random')` writes the same images as TFRecords.
  """

  kind = "random"

  def __init__(self, *, num_train=1_281_167, num_eval=50_000, num_classes=1000,
               image_size=256, seed=0):
    """Args: split sizes, label range, square image side and dataset seed."""
    super().__init__(num_train=num_train, num_eval=num_eval,
                     num_classes=num_classes, image_size=image_size, seed=seed)


class LearnableShapesSource(_GeneratedSource):
  """The learnable coloured-shapes task, generated in-graph, no files.

  `write_fake_imagenet(kind='learnable')` writes the same images as TFRecords.
  """

  kind = "learnable"

  def __init__(self, *, num_train=2000, num_eval=500, num_classes=10,
               image_size=64, seed=0):
    """Args: split sizes, classes (<= 64), square image side, dataset seed."""
    super().__init__(num_train=num_train, num_eval=num_eval,
                     num_classes=num_classes, image_size=image_size, seed=seed)


# Old names kept until effnet_gin 0.3.0, so .gin files and --gin_param bindings that
# name them still run; each warns once per process when it is built.
_WARNED_ALIASES = set()


def _deprecated_init(new_class, old_name):
  """An `__init__` for the alias `old_name` of `new_class` that warns once.

  It wraps `new_class.__init__`, so gin still checks bound parameter names
  against the new class's signature.
  """

  @functools.wraps(new_class.__init__)
  def __init__(self, **kwargs):
    if old_name not in _WARNED_ALIASES:
      _WARNED_ALIASES.add(old_name)
      logging.warning(
          "%s is deprecated and goes in effnet_gin 0.3.0; use "
          "%s (gin: effnet_gin.data.%s) instead.", old_name, new_class.__name__,
          new_class.__name__)
    new_class.__init__(self, **kwargs)

  return __init__


class FakeSource(RandomNoiseSource):
  """Deprecated name of `RandomNoiseSource`."""

  __init__ = _deprecated_init(RandomNoiseSource, "FakeSource")


class SyntheticSource(LearnableShapesSource):
  """Deprecated name of `LearnableShapesSource`."""

  __init__ = _deprecated_init(LearnableShapesSource, "SyntheticSource")
