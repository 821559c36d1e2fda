"""Image counts of a run that holds training shards out as its eval split.

`TFRecordSource(holdout_train_shards=N)` evaluates on the first N training
shards and trains on the rest. The run's epochs and its eval size must then
count those images on the other side, as the reference's main.py does for
`--holdout_shards` (before it builds anything):

  held_out = int(num_train_images × N / 1024)
  num_train_images ← num_train_images − held_out   (steps per epoch, and so
                                                   every duration in epochs)
  num_eval_images  ← held_out                       (eval steps)

1024 is ImageNet's training shard count, which the reference hard-codes;
`num_train_shards` sets another for other data. The shipped configs route
NUM_TRAIN_IMAGES and NUM_EVAL_IMAGES (the full sets' sizes, as the
reference's `--num_train_images`/`--num_eval_images`) through
`images_after_holdout`, and HOLDOUT_TRAIN_SHARDS (data_imagenet.gin, 0 by
default) sets both this and the source, so one binding moves both.
"""
import functools

from absl import logging

# The reference divides by ImageNet's 1,024 training shards.
REFERENCE_TRAIN_SHARDS = 1024
_SPLITS = ("train", "eval")


def holdout_counts(*, num_train_images, num_eval_images, holdout_train_shards=0,
                   num_train_shards=REFERENCE_TRAIN_SHARDS):
  """(train images, eval images) once `holdout_train_shards` are held out.

  Args:
    num_train_images: images in the whole training split.
    num_eval_images: images in the eval split; replaced by the held-out
      count when shards are held out.
    holdout_train_shards: training shards that become the eval split (the
      reference's `--holdout_shards`); 0 changes nothing.
    num_train_shards: training shards the images are spread over.

  Returns:
    A (num_train_images, num_eval_images) tuple of ints.

  Raises:
    ValueError: for a negative or too large shard count, or a non-positive
      image or shard count.
  """
  for name, value in (("num_train_images", num_train_images),
                      ("num_eval_images", num_eval_images), ("num_train_shards",
                                                             num_train_shards)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be an int >= 1, got {value!r}")
  if not 0 <= holdout_train_shards < num_train_shards:
    raise ValueError(
        f"holdout_train_shards={holdout_train_shards!r} must be in "
        f"[0, {num_train_shards}) (num_train_shards={num_train_shards})")
  if not holdout_train_shards:
    return num_train_images, num_eval_images
  held_out = int(num_train_images * holdout_train_shards /
                 float(num_train_shards))
  return num_train_images - held_out, held_out


@functools.lru_cache(maxsize=None)
def _log_once(counts, full_train, shards, num_train_shards):
  """Logs a holdout's counts once per process for each setting."""
  logging.info(
      "Holdout: the first %d of %d training shards are the eval split: "
      "training on %d images (of %d), evaluating on %d (the reference's "
      "int(num_train_images × shards / %d))", shards, num_train_shards,
      counts[0], full_train, counts[1], num_train_shards)


def images_after_holdout(split, *, num_train_images, num_eval_images,
                         holdout_train_shards=0,
                         num_train_shards=REFERENCE_TRAIN_SHARDS):
  """The image count of `split` after the holdout (see `holdout_counts`).

  gin registers it as `effnet_gin.data.images_after_holdout`; the shipped
  configs call it for 'train' (steps per epoch) and 'eval' (eval size).
  A holdout is logged once per process.

  Args:
    split: 'train' or 'eval'.
    num_train_images: images in the whole training split.
    num_eval_images: images in the eval split.
    holdout_train_shards: training shards held out as the eval split.
    num_train_shards: training shards the images are spread over.

  Returns:
    The split's image count, an int.

  Raises:
    ValueError: for an unknown split or a bad count (see `holdout_counts`).
  """
  if split not in _SPLITS:
    raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
  counts = holdout_counts(num_train_images=num_train_images,
                          num_eval_images=num_eval_images,
                          holdout_train_shards=holdout_train_shards,
                          num_train_shards=num_train_shards)
  if holdout_train_shards:
    _log_once(counts, num_train_images, holdout_train_shards, num_train_shards)
  return counts[_SPLITS.index(split)]
