"""The console line and TensorBoard scalars the trainer writes after a loop."""
import time

from absl import logging
import tensorflow as tf

from effnet_gin.data import corrupt_records


class LoopProgress:
  """The console line and TensorBoard scalars written after each loop.

  `current` is the global step, `optimizer.iterations`: the number of
  updates applied (see `loop.build_host_loop`). The learning rate logged at
  step `current` is `learning_rate(current - 1)`, the rate the optimizer
  applied in its last update (Keras evaluates the schedule at `iterations`
  before incrementing it); before any update, the rate of the first one.
  """

  def __init__(self, start_step, train_steps, global_batch_size,
               num_train_images, learning_rate):
    self._start_step = start_step
    self._train_steps = train_steps
    self._batch = global_batch_size
    self._steps_per_epoch = num_train_images / global_batch_size
    self._learning_rate = learning_rate
    self._start_time = time.time()
    # This run's skipped records only: the tally is per process, and the
    # run's pipelines are built after this (on entering their stage).
    corrupt_records.PROCESS_TALLY.reset()

  def log(self, current, num_steps, loss_sum, correct_sum, elapsed):
    """Logs and summarises a loop of `num_steps` ending at step `current`.

    Returns:
      The loop's mean loss.
    """
    loss = loss_sum / num_steps
    images_per_sec = num_steps * self._batch / elapsed
    lr = float(self._learning_rate(max(current - 1, 0)))
    tf.summary.scalar("loss", loss, step=current)
    tf.summary.scalar("learning_rate", lr, step=current)
    tf.summary.scalar("epoch", current / self._steps_per_epoch, step=current)
    tf.summary.scalar("top_1_accuracy", correct_sum / (num_steps * self._batch),
                      step=current)
    tf.summary.scalar("images_per_sec", images_per_sec, step=current)
    tf.summary.scalar("step_time_sec", elapsed / num_steps, step=current)
    # No update yet (mixed_float16 may skip the first steps): no ETA.
    eta = "?" if current == self._start_step else format_seconds(
        (time.time() - self._start_time) / (current - self._start_step) *
        (self._train_steps - current))
    logging.info("step %d/%d  loss %.4f  lr %.5f  %.1f images/sec  ETA %s",
                 current, self._train_steps, loss, lr, images_per_sec, eta)
    report_skipped(current)
    return loss


def report_skipped(current, tally=corrupt_records.PROCESS_TALLY):
  """Logs and summarises the skipped corrupt records (if skipping is on).

  Raises:
    corrupt_records.TooManyCorruptRecords: past the tolerated fraction.
  """
  if not tally.active:
    return
  tf.summary.scalar("skipped_records", tally.skipped, step=current)
  if tally.skipped:
    logging.warning(
        "%d of %d training records skipped so far (%.3f%%): "
        "they did not decode", tally.skipped, tally.read,
        100 * tally.fraction())
  tally.check()


def format_seconds(seconds):
  """Formats a duration as H:MM:SS."""
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
