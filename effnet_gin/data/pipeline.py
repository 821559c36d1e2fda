"""`build_dataset`: a source's examples -> per-replica train or eval batches.

Used through `strategy.distribute_datasets_from_function`:

    strategy.distribute_datasets_from_function(
        lambda ctx: build_dataset(ctx, split='train', global_batch_size=B,
                                  image_size=S))

Each call builds the pipeline of one input pipeline (host): it reads that
pipeline's shard from the source and batches per replica,
`ctx.get_per_replica_batch_size(B)`, always with static shapes.

Eval gives every input pipeline the same number of batches (a multiple of its
replicas), so no host runs out early on a pod: each pipeline's examples are
padded with weight-0 examples up to a count computed once from the source's
per-pipeline example counts.
"""
import math
import random

import tensorflow as tf

from effnet_gin.data import corrupt_records
from effnet_gin.data import preprocessing as preprocessing_lib
from effnet_gin.data.augment import mixing
from effnet_gin.data.augment import policies
from effnet_gin.data.sources import protocol

AUGMENTATIONS = (None, "autoaugment", "randaugment")
# Keeps the mixup seeds apart from the per-example seeds.
_MIXUP_SEED_SALT = 0x5EED


def _replicas_per_pipeline(input_context):
  if input_context is None:
    return 1
  return max(
      1,
      input_context.num_replicas_in_sync // input_context.num_input_pipelines)


def _per_replica_batch_size(input_context, global_batch_size):
  if global_batch_size < 1:
    raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
  if input_context is None:
    return global_batch_size
  return input_context.get_per_replica_batch_size(global_batch_size)


def eval_quotas(counts, num_eval_examples=None):
  """How many eval examples each pipeline takes.

  Without a limit every pipeline takes all of its examples. With one, the
  limit is spread as evenly as the pipelines' counts allow.

  Args:
    counts: list of ints, examples available per pipeline.
    num_eval_examples: optional int, total examples to evaluate.

  Returns:
    list of ints, one per pipeline, summing to the limit (or sum of counts).

  Raises:
    ValueError: the limit is below 1 or above the number of examples.
  """
  if num_eval_examples is None:
    return list(counts)
  total = sum(counts)
  if not 1 <= num_eval_examples <= total:
    raise ValueError(f"num_eval_examples must be in [1, {total}] (the eval "
                     f"split holds {total} examples), got {num_eval_examples}")
  quotas = [0] * len(counts)
  remaining = num_eval_examples
  by_count = sorted(range(len(counts)), key=lambda i: counts[i])
  for position, pipeline in enumerate(by_count):
    quotas[pipeline] = min(counts[pipeline],
                           remaining // (len(counts) - position))
    remaining -= quotas[pipeline]
  # Integer division can leave a few examples; give them to pipelines with
  # room, largest first.
  for pipeline in reversed(by_count):
    extra = min(remaining, counts[pipeline] - quotas[pipeline])
    quotas[pipeline] += extra
    remaining -= extra
  return quotas


def num_eval_steps(source, *, global_batch_size, input_context=None,
                   num_eval_examples=None):
  """Number of eval steps (global batches) `build_dataset` yields.

  Every input pipeline yields `num_eval_steps * replicas_per_pipeline`
  batches, so each step gives every replica one batch.

  Args:
    source: the `Source` the eval dataset reads.
    global_batch_size: int, examples per step over all replicas.
    input_context: the `tf.distribute.InputContext` of any pipeline, or None.
    num_eval_examples: optional limit, as in `build_dataset`.

  Returns:
    int >= 1.

  Raises:
    ValueError: the eval split is empty or the limit is out of range.
  """
  _, steps = _eval_plan(source, input_context, global_batch_size,
                        num_eval_examples)
  return steps


def _eval_plan(source, input_context, global_batch_size, num_eval_examples):
  """(per-pipeline eval quotas, eval steps); counts the source once."""
  num_pipelines, _ = protocol.pipeline_shard(input_context)
  counts = source.examples_per_pipeline("eval", num_pipelines)
  quotas = eval_quotas(counts, num_eval_examples)
  if not sum(quotas):
    raise ValueError(f"the eval split of {source!r} is empty")
  batch_size = _per_replica_batch_size(input_context, global_batch_size)
  replicas = _replicas_per_pipeline(input_context)
  return quotas, math.ceil(max(quotas) / (batch_size * replicas))


def _checked_labels(labels, num_classes):
  """A batch of int32 labels; an InvalidArgumentError lists any out of range.

  Checked per batch rather than per example: a per-example check costs a few
  percent of the input pipeline's CPU time.
  """
  labels = tf.cast(labels, tf.int32)
  out_of_range = (labels < 0) | (labels >= num_classes)
  check = tf.debugging.Assert(tf.logical_not(tf.reduce_any(out_of_range)), [
      f"label out of range [0, {num_classes}) after subtracting the label "
      "offset of the source; check num_classes and label_offset. Bad labels:",
      tf.boolean_mask(labels, out_of_range)
  ])
  with tf.control_dependencies([check]):
    return tf.identity(labels)


def _augment(image, augment, seed, randaugment_layers, randaugment_magnitude):
  """Applies AutoAugment/RandAugment in the uint8 domain to a float image."""
  # Bicubic resizing overshoots [0, 255] a little; the cast would wrap.
  pixels = tf.cast(tf.clip_by_value(image, 0.0, 255.0), tf.uint8)
  if augment == "autoaugment":
    pixels = policies.autoaugment(pixels, seed)
  else:
    pixels = policies.randaugment(pixels, seed, randaugment_layers,
                                  randaugment_magnitude)
  return tf.cast(pixels, tf.float32)


def _pipeline_seed(seed, input_context):
  """A per-pipeline base seed; random when `seed` is None."""
  _, pipeline_id = protocol.pipeline_shard(input_context)
  if seed is None:
    seed = random.SystemRandom().randrange(2**31)
  return (seed * 1_000_003 + pipeline_id) % 2**62


def _options(deterministic, private_threadpool_size):
  options = tf.data.Options()
  options.deterministic = deterministic
  if private_threadpool_size:
    options.threading.private_threadpool_size = private_threadpool_size
  return options


def _train_dataset(source, input_context, *, batch_size, image_size,
                   num_classes, augment, randaugment_layers,
                   randaugment_magnitude, mixup_alpha, shuffle_buffer, cache,
                   seed, skip_corrupt, max_skipped_fraction, preprocessing,
                   label_shift):
  """The infinite training pipeline; see `build_dataset`."""
  base_seed = _pipeline_seed(seed, input_context)
  examples = source.examples("train", input_context, is_training=True,
                             seed=seed)
  if cache:
    examples = examples.cache()
  # Repeat before shuffling, as the reference does: shuffle-then-repeat would
  # drain and refill the buffer at every epoch boundary, stalling the
  # pipeline (for small datasets, on every epoch). Each repetition re-runs
  # the source, which reshuffles its file order.
  examples = examples.repeat().shuffle(shuffle_buffer, seed=seed)

  def preprocess(index, example):
    seed = tf.stack([tf.constant(base_seed, tf.int64), index])
    if augment is None:
      image = preprocessing_lib.preprocess_for_train(example["image"],
                                                     image_size, seed,
                                                     preprocessing)
    else:
      crop_seed, augment_seed = tf.unstack(
          tf.random.experimental.stateless_split(seed, num=2))
      image = preprocessing_lib.preprocess_for_train(example["image"],
                                                     image_size, crop_seed,
                                                     preprocessing)
      image = _augment(image, augment, augment_seed, randaugment_layers,
                       randaugment_magnitude)
    return image, example["label"] + label_shift

  if skip_corrupt:
    # Undecodable records are dropped, counted and logged, up to a fraction
    # (`corrupt_records`). Labels are checked after the batch, so bad labels
    # still fail.
    # Records that fail to read (a truncated file) are dropped and logged.
    corrupt_records.PROCESS_TALLY.activate(max_skipped_fraction)
    dataset = corrupt_records.decode_or_skip(
        examples.ignore_errors(log_warning=True).enumerate(), preprocess,
        image_size=image_size)
    dataset = corrupt_records.count_batches(
        dataset.batch(batch_size, drop_remainder=True))
  else:
    # A plain batch right after the map lets tf.data fuse them (map_and_batch
    # writes each image straight into the batch; a parallel batch copies it).
    dataset = examples.enumerate().map(preprocess,
                                       num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(batch_size, drop_remainder=True)
  dataset = dataset.map(lambda images, labels:
                        (images, _checked_labels(labels, num_classes)))
  if mixup_alpha > 0:
    dataset = dataset.enumerate().map(
        lambda step, batch: mixing.mixup(
            *batch, num_classes, mixup_alpha,
            tf.stack(
                [tf.constant(base_seed ^ _MIXUP_SEED_SALT, tf.int64), step])),
        num_parallel_calls=tf.data.AUTOTUNE)
  return dataset


def _eval_dataset(source, input_context, *, global_batch_size, batch_size,
                  image_size, num_classes, cache, num_eval_examples,
                  skip_corrupt, preprocessing, label_shift):
  """The finite, padded eval pipeline; see `build_dataset`."""
  # The quotas and step count come from one count of the source (on gs://,
  # every count stats each eval file again).
  quotas, num_steps = _eval_plan(source, input_context, global_batch_size,
                                 num_eval_examples)
  _, pipeline_id = protocol.pipeline_shard(input_context)
  num_batches = _replicas_per_pipeline(input_context) * num_steps
  examples = source.examples("eval", input_context, is_training=False)
  examples = examples.take(quotas[pipeline_id])
  if cache:
    examples = examples.cache()

  def preprocess(example):
    image = preprocessing_lib.preprocess_for_eval(example["image"], image_size,
                                                  preprocessing)
    label = tf.cast(example["label"], tf.int32) + label_shift
    return image, label, tf.constant(1.0)

  dataset = examples.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  if skip_corrupt:
    dataset = dataset.ignore_errors(log_warning=True)
  # Weight-0 padding completes the last batch and evens out the pipelines;
  # `take` keeps the count exact even if corrupt examples were skipped.
  padding = tf.data.Dataset.from_tensors(
      (tf.zeros([image_size, image_size,
                 3]), tf.constant(0), tf.constant(0.0))).repeat()
  dataset = dataset.concatenate(padding).take(num_batches * batch_size)
  dataset = dataset.batch(batch_size, drop_remainder=True)
  return dataset.map(lambda images, labels, weights:
                     (images, _checked_labels(labels, num_classes), weights))


def build_dataset(
    input_context=None, *, split, global_batch_size, image_size, source,
    num_classes=1000, augment=None, randaugment_layers=2,
    randaugment_magnitude=10, mixup_alpha=0.0, shuffle_buffer=1024, cache=False,
    num_eval_examples=None, seed=None, skip_corrupt=False,
    private_threadpool_size=None, preprocessing=None, cutmix_alpha=0.0,
    random_erasing_prob=0.0, num_labels=None,
    max_skipped_fraction=corrupt_records.DEFAULT_MAX_SKIPPED_FRACTION):
  """Builds one input pipeline's batches of a split.

  Args:
    input_context: the `tf.distribute.InputContext` that
      `distribute_datasets_from_function` passes, or None for one pipeline
      feeding one replica.
    split: 'train' or 'eval'.
    global_batch_size: examples per step over all replicas; each batch holds
      `input_context.get_per_replica_batch_size(global_batch_size)`.
    image_size: output resolution S.
    source: a `Source` (TFRecordSource, RandomNoiseSource, TFDSSource, ...).
    num_classes: the model's class count; labels must be in
      [0, num_classes).
    augment: None, 'autoaugment' (policy v0) or 'randaugment' (train only).
    randaugment_layers: ops per image for RandAugment.
    randaugment_magnitude: RandAugment magnitude (10; B5 17, B7 28).
    mixup_alpha: if > 0, mixup with Beta(alpha, alpha) on training batches.
    shuffle_buffer: examples in the training shuffle buffer (the reference's
      1024; file order is shuffled too).
    cache: cache the source's raw (encoded) examples in memory.
    num_eval_examples: if set, evaluate only this many examples of the eval
      split (spread over the pipelines); None evaluates all of them.
    seed: int for reproducible shuffling and augmentation; None draws one.
      Training is non-deterministic in order (faster) unless a seed is given.
    skip_corrupt: drop records/images that fail to read or decode (each one
      is logged as a warning) instead of failing. Out-of-range labels always
      fail, and so does a truncated eval TFRecord file (named), which the
      eval record count cannot get past. Training counts the skipped
      images (`corrupt_records.PROCESS_TALLY`: the trainer logs the count
      and stops past `max_skipped_fraction`).
    max_skipped_fraction: with skip_corrupt, the fraction of training
      records read that may fail to decode before training stops, naming
      the shards (at least one is always tolerated).
    private_threadpool_size: optional dedicated tf.data thread count.
    preprocessing: the crops and resize, a `Preprocessing`; None takes the
      reference's (`Preprocessing()`). Under gin it is not bound here: the
      top passes the gin-bound `effnet_gin.data.Preprocessing`, which the
      exporter reads too, so serving preprocesses as eval does.
    cutmix_alpha: if > 0, CutMix with Beta(alpha, alpha) on training batches
      (not together with mixup); labels become soft targets.
    random_erasing_prob: probability of random erasing per training image.
    num_labels: the dataset's class count (its labels, after the source's
      label offset, are 0..num_labels - 1), or None for num_classes. A
      model with exactly one class more keeps class 0 for "background", the
      reference's 1001-class convention (EfficientNet-EdgeTPU): labels are
      fed shifted by one, so ImageNet's 1..1000 on disk stay 1..1000.
      Any other count feeds the labels as they are.

  Returns:
    split='train': an infinite dataset of (images float32 [b, S, S, 3] on
      the 0..255 scale (bicubic overshoots it a little, as in the reference),
      labels int32 [b]); with mixup_alpha > 0, labels are soft targets
      float32 [b, num_classes] instead.
    split='eval': a finite dataset of (images float32 [b, S, S, 3],
      labels int32 [b], weights float32 [b]); weight 1 marks real examples,
      0 padding. Every eval example appears exactly once over all pipelines,
      and every pipeline yields the same number of batches,
      `num_eval_steps(...) * replicas_per_pipeline`.

  Raises:
    ValueError: bad split, augment, sizes or num_eval_examples.
    FileNotFoundError: the source's files are missing.
    tf.errors.DataLossError: a truncated eval file (named), while counting.
    tf.errors.InvalidArgumentError: when iterated, for an out-of-range label
      (listed) or, without skip_corrupt, an undecodable image.
  """
  protocol.check_split(split)
  if image_size < 1 or num_classes < 1:
    raise ValueError(f"image_size and num_classes must be >= 1, got "
                     f"image_size={image_size}, num_classes={num_classes}")
  if augment not in AUGMENTATIONS:
    raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
  if mixup_alpha < 0:
    raise ValueError(f"mixup_alpha must be >= 0, got {mixup_alpha}")
  if mixup_alpha > 0 and cutmix_alpha > 0:
    raise ValueError(f"mixup_alpha={mixup_alpha} and cutmix_alpha="
                     f"{cutmix_alpha}: use one of mixup and CutMix")
  label_shift = int(num_labels is not None and num_classes == num_labels + 1)
  batch_size = _per_replica_batch_size(input_context, global_batch_size)
  if preprocessing is None:
    preprocessing = preprocessing_lib.REFERENCE
  if split == "train":
    dataset = _train_dataset(
        source, input_context, batch_size=batch_size, image_size=image_size,
        num_classes=num_classes, augment=augment,
        randaugment_layers=randaugment_layers,
        randaugment_magnitude=randaugment_magnitude, mixup_alpha=mixup_alpha,
        shuffle_buffer=shuffle_buffer, cache=cache, seed=seed,
        skip_corrupt=skip_corrupt, max_skipped_fraction=max_skipped_fraction,
        preprocessing=preprocessing, label_shift=label_shift)
    dataset = mixing.batch_augment(dataset, num_classes=num_classes,
                                   cutmix_alpha=cutmix_alpha,
                                   random_erasing_prob=random_erasing_prob,
                                   seed=_pipeline_seed(seed, input_context))
    deterministic = seed is not None
  else:
    dataset = _eval_dataset(
        source, input_context, global_batch_size=global_batch_size,
        batch_size=batch_size, image_size=image_size, num_classes=num_classes,
        cache=cache, num_eval_examples=num_eval_examples,
        skip_corrupt=skip_corrupt, preprocessing=preprocessing,
        label_shift=label_shift)
    deterministic = True
  dataset = dataset.with_options(
      _options(deterministic, private_threadpool_size))
  return dataset.prefetch(tf.data.AUTOTUNE)
