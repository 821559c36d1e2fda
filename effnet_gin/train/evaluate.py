"""Evaluation: one pass over the validation set, eval-only, and continuous.

`EvalRunner` scores a model in memory (the trainer's train_and_eval mode keeps
one; `run_evaluation` is the one-shot form); `evaluate` is what `bin/evaluator`
runs: it follows a model_dir the way the reference's `--mode=eval` job did,
evaluating every checkpoint the trainer writes exactly once, or a single
checkpoint given by path.

What the evaluator writes, and only there (never into the trainer's files):
  model_dir/eval/          TensorBoard scalars top_1_accuracy, top_5_accuracy
                           and loss at each checkpoint's step, and
                           results.jsonl, one JSON line per checkpoint.
  model_dir/best/          a copy of the best checkpoint so far by top-1 (the
                           reference's `archive_ckpt`), a `checkpoint` state
                           file so `tf.train.latest_checkpoint` finds it, and
                           best_result.json.

All I/O goes through `tf.io.gfile`, so model_dir may be a gs:// path.
"""
import json
import time

from absl import logging
import gin
import tensorflow as tf

from effnet_gin.data import build_dataset
from effnet_gin.model import build_model
from effnet_gin.train import averaging
from effnet_gin.train import checkpointing
from effnet_gin.train import losses
from effnet_gin.train import strategy as strategy_lib

EVAL_SUBDIR = "eval"
BEST_SUBDIR = "best"
RESULTS_FILE = "results.jsonl"
BEST_RESULT_FILE = "best_result.json"
METRICS = ("top_1_accuracy", "top_5_accuracy", "loss")


# ---------------------------------------------------------------------------
# One pass over the validation set.
# ---------------------------------------------------------------------------


class EvalRunner:
  """Scores a model on the eval split; reusable across checkpoints.

  The compiled eval function is traced once per runner, so a caller that
  evaluates repeatedly (the continuous evaluator) keeps one runner and pays
  for tracing once. Each `run()` builds a fresh distributed eval dataset, which
  is finite and holds every validation example exactly once (padding carries
  weight 0), so every run sees the whole validation set.

  Args:
    strategy: the `tf.distribute.Strategy` whose scope created `model`.
    model: a Keras model mapping float32 RGB 0-255 images to logits.
    eval_batch_size: global eval batch size, split evenly over the replicas.
    image_size: eval resolution in pixels.
    jit_compile: compile the per-replica step with XLA (shapes are static).

  Raises:
    ValueError: when the batch size is not positive or not divisible by the
      number of replicas.
  """

  def __init__(self, *, strategy, model, eval_batch_size, image_size,
               jit_compile=False):
    replicas = strategy.num_replicas_in_sync
    if not eval_batch_size or eval_batch_size <= 0:
      raise ValueError(f"eval_batch_size must be positive, got "
                       f"{eval_batch_size!r}")
    if eval_batch_size % replicas:
      raise ValueError(f"eval_batch_size={eval_batch_size} is not divisible "
                       f"by the {replicas} replicas")
    self._strategy = strategy
    self._eval_batch_size = eval_batch_size
    self._image_size = image_size

    def replica_step(images, labels, weights):
      logits = tf.cast(model(images, training=False), tf.float32)
      cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
          labels=labels, logits=logits)
      return tf.stack([
          tf.reduce_sum(weights),
          losses.top_k_correct(labels, logits, 1, weights),
          losses.top_k_correct(labels, logits, 5, weights),
          tf.reduce_sum(cross_entropy * weights),
      ])

    step = tf.function(replica_step, jit_compile=jit_compile)

    @tf.function
    def eval_pass(dataset):
      # Per-batch sums are exact in float32; accumulating 50,000 examples is
      # done in float64 so the loss total does not lose digits.
      totals = tf.zeros([4], tf.float64)
      for images, labels, weights in dataset:
        sums = strategy.run(step, args=(images, labels, weights))
        totals += tf.cast(
            strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None),
            tf.float64)
      return totals

    self._eval_pass = eval_pass

  def _dataset(self):
    def dataset_fn(input_context):
      return build_dataset(input_context, split="eval",
                           global_batch_size=self._eval_batch_size,
                           image_size=self._image_size)

    return self._strategy.distribute_datasets_from_function(dataset_fn)

  def run(self):
    """Evaluates the model's current weights.

    Returns:
      Python numbers: `top_1_accuracy`, `top_5_accuracy`, `loss` (unsmoothed
      cross-entropy averaged over the real examples) and `num_examples`.

    Raises:
      ValueError: when the eval split yielded no examples.
    """
    count, top_1, top_5, loss_sum = (
        float(v) for v in self._eval_pass(self._dataset()).numpy())
    if count <= 0:
      raise ValueError("the eval split yielded no examples; check the data "
                       "source's eval files and NUM_EVAL_IMAGES")
    return dict(top_1_accuracy=top_1 / count, top_5_accuracy=top_5 / count,
                loss=loss_sum / count, num_examples=int(round(count)))


def run_evaluation(*, strategy, model, eval_batch_size, image_size,
                   jit_compile=False):
  """Evaluates `model` once over the whole validation set.

  Args:
    strategy: the `tf.distribute.Strategy` whose scope created `model`.
    model: a Keras model mapping float32 RGB 0-255 images to logits; its
      current weights are evaluated (swap EMA weights in around the call).
    eval_batch_size: global eval batch size.
    image_size: eval resolution in pixels.
    jit_compile: compile the per-replica step with XLA.

  Returns:
    A dict of Python numbers: `top_1_accuracy`, `top_5_accuracy`, `loss`
    and `num_examples`.

  Raises:
    ValueError: for a bad batch size or an empty eval split.
  """
  return EvalRunner(strategy=strategy, model=model,
                    eval_batch_size=eval_batch_size, image_size=image_size,
                    jit_compile=jit_compile).run()


# ---------------------------------------------------------------------------
# What the evaluator records: results.jsonl and the best checkpoint.
# ---------------------------------------------------------------------------


class ResultsLog:
  """model_dir/eval/results.jsonl: one JSON object per evaluated checkpoint.

  The whole file is rewritten through a temporary file and a rename on each
  record, because gs:// does not support appending.
  """

  def __init__(self, model_dir):
    self.path = f"{model_dir}/{EVAL_SUBDIR}/{RESULTS_FILE}"

  def read(self):
    """Returns the recorded results, oldest first.

    Raises:
      ValueError: naming the file and line when a line is not JSON.
    """
    if not tf.io.gfile.exists(self.path):
      return []
    with tf.io.gfile.GFile(self.path) as f:
      lines = f.read().splitlines()
    results = []
    for number, line in enumerate(lines, start=1):
      if not line.strip():
        continue
      try:
        results.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise ValueError(f"{self.path}, line {number}: not a JSON object "
                         f"({e}): {line[:200]!r}") from e
    return results

  def evaluated_steps(self):
    return {result["step"] for result in self.read()}

  def record(self, result):
    """Adds `result`, replacing an earlier result of the same step."""
    kept = [r for r in self.read() if r["step"] != result["step"]]
    text = "".join(json.dumps(r) + "\n" for r in kept + [result])
    directory, filename = self.path.rsplit("/", 1)
    checkpointing.write_text(directory, filename, text)


class BestCheckpoint:
  """model_dir/best/: a copy of the checkpoint with the highest top-1 so far.

  Args:
    model_dir: the run's directory.
    metric: the result key to maximise.
  """

  def __init__(self, model_dir, metric="top_1_accuracy"):
    self.directory = f"{model_dir}/{BEST_SUBDIR}"
    self._metric = metric

  def read(self):
    """The best result so far (with its archived `checkpoint`), or None."""
    path = f"{self.directory}/{BEST_RESULT_FILE}"
    if not tf.io.gfile.exists(path):
      return None
    with tf.io.gfile.GFile(path) as f:
      return json.loads(f.read())

  def _copy(self, source):
    """Copies the files of checkpoint `source`; False if they vanished."""
    try:
      filenames = tf.io.gfile.glob(source + ".*")
      for filename in filenames:
        tf.io.gfile.copy(filename,
                         f"{self.directory}/{filename.rsplit('/', 1)[-1]}",
                         overwrite=True)
    except tf.errors.NotFoundError:
      return False
    return any(f.endswith(".index") for f in filenames)

  def offer(self, result, checkpoint):
    """Archives the evaluated checkpoint when it beats the best so far.

    Args:
      result: the evaluation result; `result['checkpoint']` is copied.
      checkpoint: the restored `tf.train.Checkpoint`, written instead when
        the trainer's retention deleted the files before they were copied.

    Returns:
      Whether the checkpoint became the new best.
    """
    best = self.read()
    if best is not None and result[self._metric] <= best[self._metric]:
      return False
    source = result["checkpoint"]
    prefix = f"{self.directory}/{source.rsplit('/', 1)[-1]}"
    tf.io.gfile.makedirs(self.directory)
    if not self._copy(source):
      logging.warning("%s was deleted before it could be copied to %s; "
                      "writing the restored weights instead", source,
                      self.directory)
      checkpoint.write(prefix)
    name = prefix.rsplit("/", 1)[-1]
    checkpointing.write_text(
        self.directory, "checkpoint",
        f'model_checkpoint_path: "{name}"\n'
        f'all_model_checkpoint_paths: "{name}"\n')
    checkpointing.write_text(
        self.directory, BEST_RESULT_FILE,
        json.dumps(dict(result, source_checkpoint=source,
                        checkpoint=prefix), indent=2) + "\n")
    if best is not None and best["checkpoint"] != prefix:
      for filename in tf.io.gfile.glob(best["checkpoint"] + ".*"):
        tf.io.gfile.remove(filename)
    logging.info("New best %s %.5f at step %d: archived in %s", self._metric,
                 result[self._metric], result["step"], self.directory)
    return True


# ---------------------------------------------------------------------------
# The evaluator: eval-only and continuous.
# ---------------------------------------------------------------------------


class _CheckpointEvaluator:
  """Restores checkpoints into one model (and EMA) and scores them."""

  def __init__(self, *, strategy, use_ema, eval_batch_size, image_size,
               jit_compile):
    with strategy.scope():
      self._model = build_model()
      self._ema = (averaging.ExponentialMovingAverage(self._model) if use_ema
                   else None)
      self._step = tf.Variable(0, dtype=tf.int64, trainable=False,
                               name="global_step")
    self.checkpoint = checkpointing.build_checkpoint(
        step=self._step, model=self._model, ema=self._ema)
    self._runner = EvalRunner(strategy=strategy, model=self._model,
                              eval_batch_size=eval_batch_size,
                              image_size=image_size, jit_compile=jit_compile)

  def _restore(self, path):
    """Restores `path`; returns False when it vanished before it was read."""
    try:
      num_classes = checkpointing.checkpoint_num_classes(path)
      if num_classes != self._model.output_shape[-1]:
        raise ValueError(
            f"checkpoint {path!r} has {num_classes} classes but the "
            f"configured model has {self._model.output_shape[-1]}; set "
            "NUM_CLASSES (build_model.num_classes) to match the run")
      if self._ema is not None and not checkpointing.has_ema(path):
        raise ValueError(
            f"checkpoint {path!r} holds no EMA weights (trained with "
            "train.use_ema=False?); evaluate its raw weights with "
            "evaluate.use_ema=False")
      self.checkpoint.read(path).assert_existing_objects_matched(
      ).expect_partial()
    except (tf.errors.NotFoundError, tf.errors.DataLossError):
      if tf.io.gfile.exists(path + ".index"):
        raise
      return False
    return True

  def __call__(self, path):
    """Evaluates checkpoint `path`.

    Returns:
      The result dict (`step`, `checkpoint` and the metrics), or None when
      the checkpoint was deleted (by the trainer's retention) before it could
      be read.
    """
    if not self._restore(path):
      logging.warning("Checkpoint %s was deleted before it could be "
                      "evaluated (the trainer keeps only its newest "
                      "checkpoints); skipping it", path)
      return None
    start = time.time()
    if self._ema is not None:
      with self._ema.averaged_weights():
        metrics = self._runner.run()
    else:
      metrics = self._runner.run()
    result = dict(step=int(self._step.numpy()), checkpoint=path, **metrics)
    logging.info("Evaluated %s (step %d%s) in %.1fs: %s", path,
                 result["step"], ", EMA weights" if self._ema else "",
                 time.time() - start, json.dumps(metrics))
    return result


def _pending_checkpoints(model_dir, done_steps):
  """Checkpoints listed in model_dir's state not yet evaluated, oldest first."""
  state = tf.train.get_checkpoint_state(model_dir)
  if state is None:
    return []
  paths = list(state.all_model_checkpoint_paths)
  if state.model_checkpoint_path not in paths:
    paths.append(state.model_checkpoint_path)
  numbered = [(checkpointing.checkpoint_step(p), p) for p in paths]
  return [p for s, p in sorted((s, p) for s, p in numbered if s is not None)
          if s not in done_steps]


@gin.configurable("evaluate", module="effnet_gin.train",
                  denylist=["model_dir"])
def evaluate(*, model_dir, eval_batch_size=gin.REQUIRED,
             image_size=gin.REQUIRED, train_steps=gin.REQUIRED, use_ema=True,
             eval_timeout=None, checkpoint=None, min_interval_secs=0,
             precision="float32", jit_compile=False):
  """Evaluates the checkpoints of a training run (`bin/evaluator`).

  Without `checkpoint`, follows model_dir like the reference's eval job:
  waits for checkpoints and evaluates each one the trainer writes exactly
  once, oldest first (pending checkpoints the trainer's retention deleted
  meanwhile are skipped with a warning), skipping steps already recorded in
  model_dir/eval/results.jsonl so a restarted evaluator carries on. It stops
  after the checkpoint whose step reaches `train_steps`, or when no new
  checkpoint appeared for `eval_timeout` seconds.

  Args:
    model_dir: the training run's directory (local or gs://); results go to
      its eval/ and best/ subdirectories.
    eval_batch_size: global eval batch size.
    image_size: eval resolution in pixels.
    train_steps: the run's final step, after which continuous eval ends.
    use_ema: evaluate the exponential moving average of the weights (as the
      reference does) instead of the raw weights.
    eval_timeout: seconds to wait for a new checkpoint; None waits until the
      final one.
    checkpoint: evaluate only this checkpoint (a prefix such as
      model_dir/ckpt-1000, or a directory's latest) and return.
    min_interval_secs: minimum seconds between two checkpoint polls.
    precision: the Keras precision policy ('float32', 'mixed_bfloat16').
    jit_compile: compile the eval step with XLA (on for TPU).

  Returns:
    The list of result dicts evaluated by this call, oldest first.

  Raises:
    FileNotFoundError: when `checkpoint` names no checkpoint.
    ValueError: for bad settings, or a checkpoint without EMA weights while
      `use_ema` is set.
  """
  if not model_dir:
    raise ValueError("evaluate needs a model_dir (--model_dir)")
  if train_steps is None or train_steps <= 0:
    raise ValueError(f"evaluate.train_steps must be positive, got "
                     f"{train_steps!r}")
  strategy_lib.set_precision_policy(precision)
  strategy = strategy_lib.build_strategy()
  evaluator = _CheckpointEvaluator(
      strategy=strategy, use_ema=use_ema, eval_batch_size=eval_batch_size,
      image_size=image_size, jit_compile=jit_compile)
  chief = strategy_lib.is_chief(strategy)
  results_log = ResultsLog(model_dir)
  best = BestCheckpoint(model_dir)
  writer = (tf.summary.create_file_writer(f"{model_dir}/{EVAL_SUBDIR}")
            if chief else tf.summary.create_noop_writer())

  def evaluate_and_record(path):
    result = evaluator(path)
    if result is None or not chief:
      return result
    with writer.as_default():
      for name in METRICS:
        tf.summary.scalar(name, result[name], step=result["step"])
    writer.flush()
    results_log.record(result)
    best.offer(result, evaluator.checkpoint)
    return result

  if checkpoint:
    path = checkpointing.resolve_checkpoint(checkpoint)
    result = evaluate_and_record(path)
    if result is None:
      raise FileNotFoundError(f"checkpoint {path!r} was deleted while it "
                              "was being read")
    return [result]

  done_steps = results_log.evaluated_steps()
  if done_steps:
    logging.info("Already evaluated in %s: steps %s", results_log.path,
                 sorted(done_steps))
  results = []
  for _ in tf.train.checkpoints_iterator(
      model_dir, min_interval_secs=min_interval_secs, timeout=eval_timeout):
    for path in _pending_checkpoints(model_dir, done_steps):
      result = evaluate_and_record(path)
      done_steps.add(checkpointing.checkpoint_step(path))
      if result is not None:
        results.append(result)
    if max(done_steps, default=-1) >= train_steps:
      logging.info("Evaluated the final checkpoint (step >= %d); done",
                   train_steps)
      break
  else:
    logging.info("No new checkpoint in %s for %ss; stopping", model_dir,
                 eval_timeout)
  writer.close()
  return results
