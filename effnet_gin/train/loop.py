"""The custom training loop: what `bin/trainer` runs.

One canonical path, top to bottom: strategy and precision · model, optimizer
and EMA · checkpoint (resume or fine-tune) · input pipeline · the compiled host
loop · the outer Python loop that logs, summarises, evaluates, checkpoints and
handles preemption.

Every `steps_per_loop` steps the host returns to Python: that is where the
console line, the TensorBoard scalars, the NaN check and checkpoints happen,
exactly as the reference's `iterations_per_loop`. SIGTERM does not wait for
that: the host loop reads a stop flag before every step (`preemption`), so a
preempted trainer checkpoints the step it reached within the grace period.
"""
import contextlib
import json
import math
import sys
import time

from absl import logging
import gin
import keras
import tensorflow as tf

from effnet_gin.data import build_dataset
from effnet_gin.model import build_model
from effnet_gin.train import averaging
from effnet_gin.train import checkpointing
from effnet_gin.train.eval_runner import EvalRunner
from effnet_gin.train.eval_runner import METRICS
from effnet_gin.train import losses
from effnet_gin.train import optim
from effnet_gin.train import recipe
from effnet_gin.train import preemption
from effnet_gin.train import progress as progress_lib
from effnet_gin.train import strategy as strategy_lib

# Exit status of a trainer that saved a checkpoint on SIGTERM and stopped
# early: EX_TEMPFAIL, "try again" — rerunning with the same model_dir resumes.
PREEMPTED_EXIT_CODE = 75


class NonFiniteLossError(FloatingPointError):
  """Raised when the training loss becomes NaN or Inf."""


def _check_positive(**values):
  for name, value in values.items():
    if value is None or value <= 0:
      raise ValueError(f"train.{name} must be a positive number, got {value!r}")


@gin.configurable("train", module="effnet_gin.train",
                  denylist=["model_dir", "command"])
def train(*, model_dir, train_steps=gin.REQUIRED,
          train_batch_size=gin.REQUIRED, image_size=gin.REQUIRED,
          num_train_images=gin.REQUIRED, steps_per_loop=1251,
          schedule="train", eval_batch_size=None, steps_per_eval=6255,
          label_smoothing=0.1, weight_decay=1e-5, precision="float32",
          jit_compile=False, use_ema=True, checkpoint_every_steps=None,
          keep_checkpoints=5, init_checkpoint=None, init_from_ema=True,
          seed=None, log_every_steps=None, command=None):
  """Trains an EfficientNet with a custom loop under a tf.distribute strategy.

  Args:
    model_dir: directory (local or gs://) for checkpoints, summaries and the
      written configs. Reusing it resumes from its latest checkpoint.
    train_steps: total number of optimizer steps.
    train_batch_size: global batch size, split evenly over the replicas.
    image_size: training resolution in pixels.
    num_train_images: size of the training set (schedule and epoch counter).
    steps_per_loop: steps compiled into one host call (the reference's
      iterations_per_loop); logging and checkpoints happen between loops,
      while SIGTERM stops the loop before its next step: the trainer saves
      that step and returns with `preempted` set (bin/trainer exits 75).
    schedule: 'train', or 'train_and_eval' to evaluate every
      `steps_per_eval` steps and at the end, in this process.
    eval_batch_size: global eval batch size (train_and_eval only).
    steps_per_eval: steps between evaluations (rounded up to whole loops).
    label_smoothing: label smoothing of the cross-entropy.
    weight_decay: L2 factor on non-batch-norm weights.
    precision: 'float32', 'mixed_bfloat16' (TPU) or 'mixed_float16'.
    jit_compile: compile the per-replica step with XLA (on for TPU, off for
      CPU where XLA handles depthwise convolutions badly).
    use_ema: keep an exponential moving average of the weights.
    checkpoint_every_steps: checkpoint period (rounded up to whole loops);
      None checkpoints after every loop. The last step is always saved.
    keep_checkpoints: how many checkpoints the manager retains.
    init_checkpoint: a checkpoint (or directory) to initialise weights from
      when model_dir holds none; the classifier is skipped when its class
      count differs (fine-tuning).
    init_from_ema: take the init checkpoint's EMA weights when it has them.
    seed: int that makes a run repeatable: it seeds the weight initialisers,
      dropout and stochastic depth (Python, NumPy and TensorFlow global
      seeds, through `keras.utils.set_random_seed`) and, in place of
      `build_dataset.seed`, the input pipeline's order and augmentation.
      None (the default) leaves all of them unseeded.
    log_every_steps: also print the step and its loss from inside the host
      loop every this many steps (a sign of life in long loops); None prints
      only the line after each loop.
    command: the command line to record in model_dir (bin/trainer passes it).

  Returns:
    A dict with the `start_step` it resumed from, the final `step`, the last
    loop's mean `loss`, `preempted`, and `eval` (the last evaluation's
    metrics, or None).

  Raises:
    ValueError: for invalid settings.
    NonFiniteLossError: when the loss becomes NaN or Inf (naming the step);
      checkpoints written before stay intact.
  """
  _check_positive(train_steps=train_steps, train_batch_size=train_batch_size,
                  image_size=image_size, num_train_images=num_train_images,
                  steps_per_loop=steps_per_loop)
  if schedule not in ("train", "train_and_eval"):
    raise ValueError(f"train.schedule must be 'train' or 'train_and_eval', "
                     f"got {schedule!r}")
  if schedule == "train_and_eval":
    _check_positive(eval_batch_size=eval_batch_size,
                    steps_per_eval=steps_per_eval)

  # --- Strategy and precision -------------------------------------------
  if seed is not None:
    keras.utils.set_random_seed(seed)
  strategy_lib.set_precision_policy(precision)
  strategy = strategy_lib.build_strategy()
  num_replicas = strategy.num_replicas_in_sync
  if train_batch_size % num_replicas:
    raise ValueError(f"train.train_batch_size={train_batch_size} is not "
                     f"divisible by the {num_replicas} replicas")
  chief = strategy_lib.is_chief(strategy)
  tf.io.gfile.makedirs(model_dir)
  if chief:
    checkpointing.write_text(model_dir, "command", command or "")
    checkpointing.write_text(model_dir, "config.gin", gin.config_str())

  # --- Model, optimizer and EMA ------------------------------------------
  with strategy.scope():
    model = build_model()
    learning_rate = optim.build_schedule(
        global_batch_size=train_batch_size, num_train_images=num_train_images,
        train_steps=train_steps)
    optimizer = optim.build_optimizer(learning_rate)
    # Keras 3 optimizers create their slots lazily; inside strategy.run that
    # fails, so build them here, under the strategy's scope.
    optimizer.build(model.trainable_variables)
    logging.info("Durations: %s", recipe.durations_of(
        train_steps=train_steps, num_train_images=num_train_images,
        global_batch_size=train_batch_size, schedule=learning_rate,
        steps_per_eval=steps_per_eval if schedule == "train_and_eval" else None,
        checkpoint_every_steps=checkpoint_every_steps,
        steps_per_loop=steps_per_loop).describe())
    # The global step is the optimizer's own counter (see build_host_loop).
    step = optimizer.iterations

  # --- Checkpoint: resume, or initialise for fine-tuning -------------------
  if init_checkpoint and tf.train.latest_checkpoint(model_dir) is None:
    checkpointing.initialize_from(
        model, init_checkpoint, use_ema=init_from_ema,
        model_builder=lambda num_classes: build_model(num_classes=num_classes),
        ema_factory=averaging.ExponentialMovingAverage)
  with strategy.scope():
    # Created after any initialisation, so the averages start from it.
    ema = averaging.ExponentialMovingAverage(model) if use_ema else None
  manager = checkpointing.Manager(
      checkpointing.build_checkpoint(step=step, model=model,
                                     optimizer=optimizer, ema=ema),
      model_dir,
      max_to_keep=keep_checkpoints, chief=chief,
      worker_id=_worker_id(strategy))
  resumed_from = manager.restore_latest()
  if resumed_from:
    logging.info("Resumed from %s at step %d", resumed_from,
                 int(step.numpy()))
  start_step = int(step.numpy())
  if start_step >= train_steps:
    logging.info("model_dir %s is already at step %d of %d: nothing to do",
                 model_dir, start_step, train_steps)
    return dict(start_step=start_step, step=start_step, loss=None,
                preempted=False, eval=None)

  # --- Input pipeline -----------------------------------------------------
  seed_kwargs = {} if seed is None else {"seed": seed}

  tpu_node = strategy_lib.tpu_node_master(strategy)

  def dataset_fn(input_context):
    dataset = build_dataset(input_context, split="train",
                            global_batch_size=train_batch_size,
                            image_size=image_size, **seed_kwargs)
    strategy_lib.check_input_runs_on(tpu_node, dataset)
    return dataset

  iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))

  # --- The compiled step and host loop ------------------------------------
  stop_request = preemption.StopRequest()
  host_loop = build_host_loop(
      strategy=strategy, model=model, optimizer=optimizer, ema=ema,
      global_batch_size=train_batch_size, label_smoothing=label_smoothing,
      weight_decay=weight_decay, jit_compile=jit_compile,
      stop_request=stop_request, log_every_steps=log_every_steps)

  # One runner for all in-process evaluations: traced (and, with XLA,
  # compiled) once.
  eval_runner = (EvalRunner(strategy=strategy, model=model,
                            eval_batch_size=eval_batch_size,
                            image_size=image_size, jit_compile=jit_compile)
                 if schedule == "train_and_eval" else None)

  # --- The outer loop: log, summarise, evaluate, checkpoint --------------
  writer = (tf.summary.create_file_writer(f"{model_dir}/train") if chief
            else tf.summary.create_noop_writer())
  checkpoint_every = checkpoint_every_steps or steps_per_loop
  last_loss, last_eval, preempted = None, None, False
  next_checkpoint = _next_multiple(start_step, checkpoint_every)
  next_eval = _next_multiple(start_step, steps_per_eval)
  saved_step = start_step if resumed_from else None
  wrote_operative_config = False
  progress = progress_lib.LoopProgress(
      start_step, train_steps, train_batch_size,
      num_train_images / train_batch_size, learning_rate)
  current = start_step
  with stop_request.installed(), writer.as_default():
    while current < train_steps:
      num_steps = min(steps_per_loop, train_steps - current)
      loop_start = time.time()
      loss_sum, correct_sum, first_bad, steps_run = host_loop(
          iterator, tf.constant(num_steps, tf.int32))
      loss_sum, steps_run = float(loss_sum), int(steps_run)
      elapsed = time.time() - loop_start
      if int(first_bad) >= 0 or not math.isfinite(loss_sum):
        raise NonFiniteLossError(
            f"training loss became {loss_sum} at step {int(first_bad)} "
            f"(loop of steps {current + 1}–{current + steps_run}); the last "
            f"checkpoint in {model_dir} ({manager.latest}) is intact")
      current = int(step.numpy())
      if steps_run:
        last_loss = progress.log(current, steps_run, loss_sum,
                                 float(correct_sum), elapsed)
      if steps_run and not wrote_operative_config:
        wrote_operative_config = True
        if chief:
          operative = gin.operative_config_str()
          checkpointing.write_text(model_dir, "operative_config.gin",
                                   operative)
          tf.summary.text("operative_config", _markdown_code(operative),
                          step=current)
      # A loop cut short was stopped by a worker's SIGTERM; every worker
      # agreed on the step (see preemption), so all of them take this branch.
      if steps_run < num_steps:
        if saved_step != current:
          manager.save(current)
        preempted = True
        logging.warning("Stopped by SIGTERM at step %d; rerun with the same "
                        "model_dir to resume", current)
        break
      if current >= next_checkpoint or current >= train_steps:
        manager.save(current)
        saved_step = current
        next_checkpoint = _next_multiple(current, checkpoint_every)
      if schedule == "train_and_eval" and (current >= next_eval
                                           or current >= train_steps):
        last_eval = _evaluate_in_process(eval_runner, ema, current, model_dir,
                                         chief)
        next_eval = _next_multiple(current, steps_per_eval)
      writer.flush()
  return dict(start_step=start_step, step=current, loss=last_loss,
              preempted=preempted, eval=last_eval)


def build_host_loop(*, strategy, model, optimizer, ema,
                    global_batch_size, label_smoothing, weight_decay,
                    jit_compile, stop_request=None, log_every_steps=None):
  """Builds the compiled host loop that runs `num_steps` training steps.

  One counter is the global step: `optimizer.iterations`, the number of
  updates the optimizer applied. Keras evaluates a `LearningRateSchedule` at
  it (before incrementing it), the EMA gets it as `num_updates` after each
  update, and the trainer checkpoints it as `step`. Under mixed_float16 the
  optimizer is a `LossScaleOptimizer`, which skips a step whose gradients are
  not finite without applying the inner optimizer, so `iterations` does not
  advance: a skipped step moves neither the schedule, nor the EMA's decay
  ramp, nor the step count (the loop then runs one batch more).

  Args:
    strategy: the strategy the model, optimizer and EMA live under.
    model: the Keras model (logits out).
    optimizer: a built Keras optimizer (slots created under the scope); its
      `iterations` is the global step.
    ema: an `ExponentialMovingAverage`, or None.
    global_batch_size: examples per step over all replicas.
    label_smoothing: label smoothing of the cross-entropy.
    weight_decay: L2 factor on non-batch-norm weights.
    jit_compile: compile the per-replica step with XLA.
    stop_request: a `preemption.StopRequest` read before every step; when
      any worker's is set, the loop ends before the step (all workers alike).
    log_every_steps: print the step and its loss every this many steps from
      inside the loop (None: never).

  Returns:
    A `tf.function` `host_loop(iterator, num_steps)` over a distributed
    iterator of (images, labels) that returns the summed loss and the summed
    count of correct top-1 predictions of the steps run, the global step
    after the first step whose loss was not finite (-1 if none), and the
    number of steps run (batches consumed; fewer than `num_steps` only when
    stopped).
  """
  step = optimizer.iterations

  def replica_step(images, labels):
    with tf.GradientTape() as tape:
      logits = model(images, training=True)
      # Dividing by the global batch (not the replica's) makes the sum over
      # replicas, which the optimizer's all-reduce takes, the global mean.
      loss = losses.classification_loss(
          labels, logits, label_smoothing=label_smoothing,
          global_batch_size=global_batch_size)
      # Inside a replica this is already the replica's 1/num_replicas share,
      # so the optimizer's sum over replicas counts the decay once.
      loss += losses.weight_decay_loss(model, weight_decay)
      # Identity except under mixed_float16, where the optimizer is a
      # LossScaleOptimizer that unscales the gradients again.
      scaled_loss = optimizer.scale_loss(loss)
    grads = tape.gradient(scaled_loss, model.trainable_variables)
    # Advances `step` unless a LossScaleOptimizer skips the update.
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    if ema is not None:
      ema.update(step)
    # Mixup's soft targets are scored by their argmax inside top_k_correct.
    correct = losses.top_k_correct(labels, logits, 1)
    return loss, correct

  per_replica_step = tf.function(replica_step, jit_compile=jit_compile)

  def should_stop():
    if stop_request is None:
      return tf.constant(False)
    return stop_request.agreed(strategy)

  @tf.function
  def host_loop(iterator, num_steps):
    loss_sum = tf.constant(0.0)
    correct_sum = tf.constant(0.0)
    first_bad_step = tf.constant(-1, tf.int64)
    steps_run = tf.constant(0, tf.int32)
    # Checked before every step. The check is a loop variable rather than a
    # `break`: a break puts the rest of the body (the step and its
    # collectives) in a tf.cond, which MultiWorkerMirrored cannot run.
    stop = should_stop()
    while tf.logical_and(steps_run < num_steps, tf.logical_not(stop)):
      images, labels = next(iterator)
      loss, correct = strategy.run(per_replica_step, args=(images, labels))
      loss = strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
      correct = strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None)
      bad = tf.logical_and(first_bad_step < 0,
                           tf.logical_not(tf.math.is_finite(loss)))
      first_bad_step = tf.where(bad, step.value, first_bad_step)
      loss_sum += loss
      correct_sum += correct
      steps_run += 1
      stop = should_stop()
      if log_every_steps and step % log_every_steps == 0:
        tf.print("in-loop progress: step", step.value, "loss", loss,
                 output_stream=sys.stderr)
    return loss_sum, correct_sum, first_bad_step, steps_run

  return host_loop


def _evaluate_in_process(runner, ema, current, model_dir, chief):
  """Evaluates the (EMA) weights at step `current`; logs and summarises."""
  swap = ema.averaged_weights() if ema is not None else contextlib.nullcontext()
  with swap:
    metrics = runner.run()
  logging.info("eval at step %d: %s", current, json.dumps(metrics))
  if chief:
    eval_writer = tf.summary.create_file_writer(f"{model_dir}/train_eval")
    with eval_writer.as_default():
      for name in METRICS:
        tf.summary.scalar(name, metrics[name], step=current)
    eval_writer.close()
  return metrics


def _worker_id(strategy):
  """This worker's task id in a multi-worker cluster, else None."""
  resolver = getattr(strategy, "cluster_resolver", None)
  return getattr(resolver, "task_id", None)


def _next_multiple(value, period):
  return (value // period + 1) * period


def _markdown_code(text):
  return "\n".join("    " + line for line in text.splitlines())
