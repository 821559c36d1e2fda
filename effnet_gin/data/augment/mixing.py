"""Batch augmentations: mixup, CutMix and random erasing.

They act on training batches of float32 images in 0..255, vectorised over the
batch with stateless random ops (so eager and tf.data give the same result
for the same seed):

* `mixup` (Zhang et al. 2018, as in the reference): each example is blended
  with its mirror in the batch, example b - 1 - i.
* `cutmix` (Yun et al. 2019): each example gets a box cut from its mirror in
  the batch (example b - 1 - i, as `mixup` pairs them), with area
  fraction 1 - λ, λ ~ Beta(α, α); its label becomes λ·own + (1 − λ)·partner
  with λ recomputed from the box actually pasted (clipped at the borders).
* `random_erasing` (Zhong et al. 2020): with probability p, each image has
  one rectangle of area 2–33% of the image and aspect ratio 0.3–3.3 replaced
  by uniform noise in 0..255 (timm's 'pixel' mode); labels are unchanged.
"""
import math

import tensorflow as tf

# Keeps these seeds apart from the per-example and mixup seeds.
_SEED_SALT = 0x5eed_c0de


def _seeds(seed, count):
  seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
  return tf.unstack(tf.random.experimental.stateless_split(seed, num=count))


def _box_masks(height, width, box_h, box_w, seed):
  """[b, H, W, 1] float masks of boxes of the given sizes at random centres.

  Centres are uniform over the image; boxes are clipped at the borders.
  """
  batch = tf.shape(box_h)[0]
  y_seed, x_seed = _seeds(seed, 2)
  centre_y = tf.random.stateless_uniform([batch], y_seed, 0.0,
                                         tf.cast(height, tf.float32))
  centre_x = tf.random.stateless_uniform([batch], x_seed, 0.0,
                                         tf.cast(width, tf.float32))
  top = tf.clip_by_value(tf.round(centre_y - box_h / 2), 0.0, 1e9)
  bottom = tf.minimum(tf.round(centre_y + box_h / 2),
                      tf.cast(height, tf.float32))
  left = tf.clip_by_value(tf.round(centre_x - box_w / 2), 0.0, 1e9)
  right = tf.minimum(tf.round(centre_x + box_w / 2), tf.cast(width, tf.float32))
  rows = tf.range(tf.cast(height, tf.float32))[None, :, None]
  cols = tf.range(tf.cast(width, tf.float32))[None, None, :]
  inside = ((rows >= top[:, None, None]) & (rows < bottom[:, None, None]) &
            (cols >= left[:, None, None]) & (cols < right[:, None, None]))
  return tf.cast(inside, tf.float32)[..., None]


def mixup(images, labels, num_classes, alpha, seed):
  """Mixes each example with its mirror in the batch (reference mixup).

  Per example, lambda ~ Beta(alpha, alpha), taken as max(lambda, 1 - lambda)
  so the original image dominates; example i is mixed with example b - 1 - i.

  Args:
    images: float32 [b, H, W, 3].
    labels: int32 [b], 0-based class ids.
    num_classes: int.
    alpha: float > 0, Beta distribution parameter.
    seed: [2] stateless random seed.

  Returns:
    (images float32 [b, H, W, 3], soft labels float32 [b, num_classes]).
  """
  batch_size = tf.shape(images)[0]
  seeds = _seeds(seed, 2)
  # Beta(a, a) from two Gamma(a) draws.
  gamma1 = tf.random.stateless_gamma([batch_size], seeds[0], alpha)
  gamma2 = tf.random.stateless_gamma([batch_size], seeds[1], alpha)
  weight = gamma1 / (gamma1 + gamma2)
  weight = tf.maximum(weight, 1.0 - weight)
  one_hot = tf.one_hot(labels, num_classes, dtype=tf.float32)
  mixed_images = (images * weight[:, None, None, None] + images[::-1] *
                  (1.0 - weight[:, None, None, None]))
  mixed_labels = (one_hot * weight[:, None] + one_hot[::-1] *
                  (1.0 - weight[:, None]))
  return mixed_images, mixed_labels


def cutmix(images, labels, num_classes, alpha, seed):
  """CutMix of each example with its mirror in the batch.

  Args: as `augment.mixup`'s (images float32 [b, H, W, 3], 0-based int32
  labels [b], num_classes, Beta parameter alpha > 0, [2] stateless seed).

  Returns:
    (images float32 [b, H, W, 3], soft labels float32 [b, num_classes] that
    sum to 1, weighting each class by its share of the pixels).
  """
  shape = tf.shape(images)
  batch, height, width = shape[0], shape[1], shape[2]
  gamma_seed1, gamma_seed2, box_seed = _seeds(seed, 3)
  gamma1 = tf.random.stateless_gamma([batch], gamma_seed1, alpha)
  gamma2 = tf.random.stateless_gamma([batch], gamma_seed2, alpha)
  keep = gamma1 / (gamma1 + gamma2)
  cut = tf.sqrt(1.0 - keep)
  mask = _box_masks(height, width, cut * tf.cast(height, tf.float32),
                    cut * tf.cast(width, tf.float32), box_seed)
  mixed = images * (1.0 - mask) + images[::-1] * mask
  pasted = tf.reduce_mean(mask, axis=[1, 2, 3])
  one_hot = tf.one_hot(labels, num_classes, dtype=tf.float32)
  mixed_labels = (one_hot * (1.0 - pasted)[:, None] +
                  one_hot[::-1] * pasted[:, None])
  return mixed, mixed_labels


def random_erasing(images, probability, seed, area_range=(0.02, 1.0 / 3.0),
                   aspect_range=(0.3, 3.3)):
  """Replaces one random rectangle per image by noise, with `probability`.

  Args:
    images: float32 [b, H, W, 3] in 0..255.
    probability: chance in [0, 1] that an image is erased.
    seed: [2] stateless random seed.
    area_range: (min, max) fraction of the image area erased.
    aspect_range: (min, max) height / width of the rectangle, drawn
      log-uniformly.

  Returns:
    float32 [b, H, W, 3] in 0..255.
  """
  shape = tf.shape(images)
  batch, height, width = shape[0], shape[1], shape[2]
  apply_seed, area_seed, aspect_seed, box_seed, noise_seed = _seeds(seed, 5)
  area = tf.random.stateless_uniform(
      [batch], area_seed, *area_range) * (tf.cast(height * width, tf.float32))
  log_aspect = tf.random.stateless_uniform([batch], aspect_seed,
                                           math.log(aspect_range[0]),
                                           math.log(aspect_range[1]))
  aspect = tf.exp(log_aspect)
  box_h = tf.minimum(tf.sqrt(area * aspect), tf.cast(height, tf.float32))
  box_w = tf.minimum(tf.sqrt(area / aspect), tf.cast(width, tf.float32))
  erase = tf.random.stateless_uniform([batch], apply_seed) < probability
  mask = _box_masks(height, width, box_h, box_w, box_seed) * tf.cast(
      erase, tf.float32)[:, None, None, None]
  noise = tf.random.stateless_uniform(shape, noise_seed, 0.0, 255.0)
  return images * (1.0 - mask) + noise * mask


def batch_augment(dataset, *, num_classes, cutmix_alpha, random_erasing_prob,
                  seed):
  """Adds CutMix and random erasing to a dataset of training batches.

  Args:
    dataset: batches of (images float32 [b, H, W, 3], labels).
    num_classes: int.
    cutmix_alpha: > 0 enables CutMix (needs int labels, so not with mixup).
    random_erasing_prob: > 0 enables random erasing with that probability.
    seed: int base seed of this pipeline.

  Returns:
    The dataset, augmented; CutMix turns the labels into soft targets.

  Raises:
    ValueError: for a negative alpha or a probability outside [0, 1].
  """
  if cutmix_alpha < 0:
    raise ValueError(f"cutmix_alpha must be >= 0, got {cutmix_alpha}")
  if not 0 <= random_erasing_prob <= 1:
    raise ValueError(f"random_erasing_prob must be in [0, 1], got "
                     f"{random_erasing_prob}")
  if not cutmix_alpha and not random_erasing_prob:
    return dataset

  def apply(step, batch):
    images, labels = batch
    cutmix_seed, erase_seed = _seeds(
        tf.stack([tf.constant(seed ^ _SEED_SALT, tf.int64), step]), 2)
    if cutmix_alpha:
      images, labels = cutmix(images, labels, num_classes, cutmix_alpha,
                              cutmix_seed)
    if random_erasing_prob:
      images = random_erasing(images, random_erasing_prob, erase_seed)
    return images, labels

  return dataset.enumerate().map(apply, num_parallel_calls=tf.data.AUTOTUNE)
