"""The compiled training step and the host loop that runs it (`trainer.train`).

`build_host_loop` returns one `tf.function` that runs up to `num_steps`
distributed steps per call — the reference's iterations_per_loop — checking
the preemption stop flag before each, and returns the loop's sums.
"""
import sys

import tensorflow as tf

from effnet_gin.evaluation import metrics
from effnet_gin.train import losses


def build_host_loop(*, strategy, model, optimizer, ema, global_batch_size,
                    label_smoothing, weight_decay, jit_compile,
                    stop_request=None, log_every_steps=None):
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
      loss = losses.classification_loss(labels, logits,
                                        label_smoothing=label_smoothing,
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
    correct = metrics.top_k_correct(labels, logits, 1)
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
