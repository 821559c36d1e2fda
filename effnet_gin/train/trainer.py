"""The custom training loop: what `bin/trainer` runs.

One canonical path, top to bottom: strategy and precision · model, optimizer
and EMA · checkpoint (resume or fine-tune) · input pipeline · the compiled host
loop (train_step.py), per stage of progressive learning (stages.py,
staged.py) · the Python controller (controller.py) that logs,
summarises, evaluates, checkpoints and handles preemption. Each step is a
function of its inputs; `train` reads as its section comments say.

Every `steps_per_loop` steps the host returns to Python: that is where the
console line, the TensorBoard scalars, the NaN check and checkpoints happen,
exactly as the reference's `iterations_per_loop`. SIGTERM does not wait for
that: the host loop reads a stop flag before every step (`preemption`), so a
preempted trainer checkpoints the step it reached within the grace period.

What the trainer writes into model_dir, and under which names: `run_dir`.
"""
import contextlib

from absl import logging
import keras
import tensorflow as tf

from effnet_gin.data import build_dataset
from effnet_gin.model import build_model
from effnet_gin.checkpoints import averaging
from effnet_gin.checkpoints import checkpointing
from effnet_gin.checkpoints import pretrained
from effnet_gin.evaluation.in_process import InProcessEvaluator
from effnet_gin.train import staged
from effnet_gin.train import stages
from effnet_gin.train import optim
from effnet_gin.train import controller
from effnet_gin.train.controller import NonFiniteLossError  # noqa: F401
from effnet_gin.train import durations
from effnet_gin.train import preemption
from effnet_gin.checkpoints import run_dir
from effnet_gin.checkpoints import run_lock
from effnet_gin.train.progress import LoopProgress
from effnet_gin import distribute

# Exit status of a trainer that saved a checkpoint on SIGTERM and stopped
# early: EX_TEMPFAIL, "try again" — rerunning with the same model_dir resumes.
PREEMPTED_EXIT_CODE = 75

MODES = ("train", "train_and_eval")


def train(*, model_dir, train_steps, train_batch_size, image_size,
          num_train_images, steps_per_loop=1251, mode="train",
          eval_batch_size=None, steps_per_eval=6255, label_smoothing=0.1,
          weight_decay=1e-5, precision="float32", jit_compile=False,
          use_ema=True, checkpoint_every_steps=None, keep_checkpoints=5,
          init_checkpoint=None, init_from_ema=True, seed=None,
          log_every_steps=None, command=None, config_text=None,
          operative_config_text=None, model_builder=build_model,
          dataset_builder=build_dataset, schedule_builder=optim.build_schedule,
          optimizer_builder=optim.build_optimizer,
          ema_builder=averaging.ExponentialMovingAverage, strategy=None,
          schedule=None, progressive=None, eval_image_size=None):
  """Trains an EfficientNet with a custom loop under a tf.distribute strategy.

  Plain Python: every collaborator is an argument whose default is the
  library's own builder, so it runs without gin. `bin/trainer` calls it
  through `configurables.train`, which passes the gin-bound builders.

  Args:
    model_dir: directory (local or gs://) for checkpoints, summaries and the
      written configs. Reusing it resumes from its latest checkpoint.
    train_steps: total number of optimizer steps.
    train_batch_size: global batch size, split evenly over the replicas.
    image_size: training resolution in pixels (with `progressive`, the last
      stage's); the model may be built at another size (its layers are
      shared with a model of this input size).
    num_train_images: size of the training set (schedule and epoch counter).
    steps_per_loop: steps compiled into one host call (the reference's
      iterations_per_loop); logging and checkpoints happen between loops,
      while SIGTERM stops the loop before its next step: the trainer saves
      that step and returns with `preempted` set (bin/trainer exits 75).
    mode: 'train', or 'train_and_eval' to evaluate every `steps_per_eval`
      steps and at the end, in this process (the reference's --mode).
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
      seeds, through `keras.utils.set_random_seed`) and the input pipeline's
      order and augmentation (passed to `dataset_builder` as `seed`). None
      (the default) leaves all of them unseeded.
    log_every_steps: also print the step and its loss from inside the host
      loop every this many steps (a sign of life in long loops); None prints
      only the line after each loop.
    command: the command line to record in model_dir/command.
    config_text: the configuration to record in model_dir/config.gin (the
      top passes gin's config); None writes none.
    operative_config_text: a zero-argument callable giving the configuration
      the run used, written to model_dir/operative_config.gin (and to
      TensorBoard) after the first loop; None writes none.
    model_builder: `model_builder(num_classes=None)` builds the Keras model
      (logits out); called with `num_classes` only to read an init
      checkpoint with another classifier.
    dataset_builder: `dataset_builder(input_context, split='train',
      global_batch_size=, image_size=[, seed=][, randaugment_magnitude=,
      mixup_alpha=, cutmix_alpha=])` gives one pipeline's batches
      (`effnet_gin.data.build_dataset` with its source bound; the
      regularisers only from a progressive stage that sets them);
      train_and_eval also calls it with split='eval'.
    schedule_builder: `schedule_builder(global_batch_size=,
      num_train_images=, train_steps=)` gives the learning-rate schedule.
    optimizer_builder: `optimizer_builder(learning_rate)` gives the optimizer.
    ema_builder: `ema_builder(model)` gives the weight average (use_ema).
    strategy: the `tf.distribute.Strategy` to train under; None builds the
      default one (`strategy.build_strategy()`).
    schedule: deprecated name of `mode` (removed in effnet_gin 0.3.0).
    progressive: a `stages.ProgressiveLearning` to train in stages of
      growing image size and regularisation (EfficientNetV2's progressive
      learning); None trains the whole run at `image_size`.
    eval_image_size: in-process evaluation resolution; None is image_size.

  Returns:
    A dict with the `start_step` it resumed from, the final `step`, the last
    loop's mean `loss`, `preempted`, and `eval` (the last evaluation's
    metrics, or None).

  Raises:
    ValueError: for invalid settings.
    NonFiniteLossError: when the loss becomes NaN or Inf (naming the step);
      checkpoints written before stay intact.
    run_lock.RunDirLocked: another live trainer holds model_dir (its chief
      holds `run.lock` from before it builds the strategy until it returns).
  """
  mode = _checked_mode(mode, schedule, train_steps=train_steps,
                       image_size=image_size, train_batch_size=train_batch_size,
                       num_train_images=num_train_images,
                       steps_per_loop=steps_per_loop,
                       eval_batch_size=eval_batch_size,
                       steps_per_eval=steps_per_eval)
  stage_plan = stages.plan(progressive, train_steps=train_steps,
                           image_size=image_size)

  # --- Run lock, strategy and precision ---------------------------------
  with _run_lock(model_dir, strategy):
    strategy = _set_up_strategy(strategy, precision=precision, seed=seed,
                                train_batch_size=train_batch_size)
    chief = _record_run(model_dir, strategy, command, config_text, train_steps)
    # --- Model, optimizer and EMA --------------------------------------------
    model, learning_rate, optimizer, step = _build_model_and_optimizer(
        strategy, model_builder=model_builder,
        schedule_builder=schedule_builder, optimizer_builder=optimizer_builder,
        train_batch_size=train_batch_size, num_train_images=num_train_images,
        train_steps=train_steps)
    _log_durations(learning_rate, mode, train_steps, num_train_images,
                   train_batch_size, steps_per_loop, steps_per_eval,
                   checkpoint_every_steps)

    # --- Checkpoint: resume, or initialise for fine-tuning -------------------
    ema, manager, start_step, resumed = _restore_or_initialize(
        model_dir, strategy=strategy, model=model, optimizer=optimizer,
        step=step, ema_builder=ema_builder if use_ema else None,
        model_builder=model_builder, init_checkpoint=init_checkpoint,
        init_from_ema=init_from_ema, keep_checkpoints=keep_checkpoints)
    if start_step >= train_steps:
      return _nothing_to_do(model_dir, start_step, train_steps)

    # --- Per stage (one unless progressive): pipeline and host loop ---------
    stop_request = preemption.StopRequest()
    segments = staged.segments(
        stage_plan, strategy=strategy, model=model,
        dataset_builder=dataset_builder, train_batch_size=train_batch_size,
        seed=seed, progressive=progressive is not None, optimizer=optimizer,
        ema=ema, label_smoothing=label_smoothing, weight_decay=weight_decay,
        jit_compile=jit_compile, stop_request=stop_request,
        log_every_steps=log_every_steps)

    # --- The outer loop: log, summarise, evaluate, checkpoint ----------------
    evaluate_at = None if mode == "train" else _in_process_evaluator(
        strategy=strategy, model=model, ema=ema, model_dir=model_dir,
        chief=chief, eval_batch_size=eval_batch_size, image_size=eval_image_size
        or image_size, jit_compile=jit_compile, dataset_builder=dataset_builder)
    progress = LoopProgress(start_step, train_steps, train_batch_size,
                            num_train_images, learning_rate)
    return controller.Controller(
        segments=segments, step=step, manager=manager, progress=progress,
        model_dir=model_dir, chief=chief,
        operative_config_text=operative_config_text).run(
            start_step=start_step, train_steps=train_steps,
            steps_per_loop=steps_per_loop, steps_per_eval=steps_per_eval,
            checkpoint_every=checkpoint_every_steps or steps_per_loop,
            evaluate_at=evaluate_at, resumed=resumed, stop_request=stop_request)


def _in_process_evaluator(*, model, image_size, **kwargs):
  """The train_and_eval evaluator, its model taking `image_size` images."""
  return InProcessEvaluator(model=staged.at_image_size(model, image_size),
                            image_size=image_size, **kwargs)


def _set_up_strategy(strategy, *, precision, seed, train_batch_size):
  """Seeds, sets the precision policy; returns the strategy (built if None)."""
  if seed is not None:
    keras.utils.set_random_seed(seed)
  distribute.set_precision_policy(precision)
  strategy = strategy or distribute.build_strategy()
  num_replicas = strategy.num_replicas_in_sync
  if train_batch_size % num_replicas:
    raise ValueError(f"train.train_batch_size={train_batch_size} is not "
                     f"divisible by the {num_replicas} replicas")
  return strategy


def _build_model_and_optimizer(strategy, *, model_builder, schedule_builder,
                               optimizer_builder, train_batch_size,
                               num_train_images, train_steps):
  """Builds, under the strategy's scope, what the checkpoint holds.

  Returns:
    (model, learning-rate schedule, built optimizer, global step: the
    optimizer's `iterations`).
  """
  with strategy.scope():
    model = model_builder()
    learning_rate = schedule_builder(global_batch_size=train_batch_size,
                                     num_train_images=num_train_images,
                                     train_steps=train_steps)
    optimizer = optimizer_builder(learning_rate)
    # Keras 3 optimizers create their slots lazily; inside strategy.run that
    # fails, so build them here, under the strategy's scope.
    optimizer.build(model.trainable_variables)
  # The global step is the optimizer's own counter (see build_host_loop).
  return model, learning_rate, optimizer, optimizer.iterations


def _log_durations(schedule, mode, train_steps, num_train_images,
                   global_batch_size, steps_per_loop, steps_per_eval,
                   checkpoint_every_steps):
  """Logs the run's length in steps and epochs (see `durations.durations_of`)."""
  logging.info(
      "Durations: %s",
      durations.durations_of(
          train_steps=train_steps, num_train_images=num_train_images,
          global_batch_size=global_batch_size, schedule=schedule,
          steps_per_eval=steps_per_eval if mode == "train_and_eval" else None,
          checkpoint_every_steps=checkpoint_every_steps,
          steps_per_loop=steps_per_loop).describe())


def _checked_mode(mode, schedule, *, eval_batch_size, steps_per_eval,
                  **positive):
  """Validates the settings; returns the mode (or its deprecated alias)."""
  mode = _resolve_mode(mode, schedule)
  _check_positive(**positive)
  if mode == "train_and_eval":
    _check_positive(eval_batch_size=eval_batch_size,
                    steps_per_eval=steps_per_eval)
  return mode


def _nothing_to_do(model_dir, start_step, train_steps):
  logging.info("model_dir %s is already at step %d of %d: nothing to do",
               model_dir, start_step, train_steps)
  return dict(start_step=start_step, step=start_step, loss=None,
              preempted=False, eval=None)


def _resolve_mode(mode, schedule):
  """`mode`, or the deprecated `schedule` when only that is given."""
  if schedule is not None:
    # Given, the old name wins: it is what an old override of a shipped
    # config (which now sets mode) means.
    logging.warning("train.schedule is deprecated: it is called train.mode "
                    "now (as the reference's --mode); the old name goes in "
                    "effnet_gin 0.3.0")
    mode = schedule
  if mode not in MODES:
    raise ValueError(f"train.mode must be one of {MODES}, got {mode!r}")
  return mode


def _check_positive(**values):
  for name, value in values.items():
    if value is None or value <= 0:
      raise ValueError(f"train.{name} must be a positive number, got {value!r}")


@contextlib.contextmanager
def _run_lock(model_dir, strategy):
  """Creates model_dir; the chief holds its run lock for the `with` block.

  Taken before the strategy is built (a refused trainer must not initialise
  the TPU its model_dir's holder trains on) and before anything is written;
  released however the block ends: done, preempted or raised.

  Args:
    model_dir: the run directory.
    strategy: the strategy given to `train`, or None (`TF_CONFIG` then says
      whether this process is the chief).

  Raises:
    run_lock.RunDirLocked: another live trainer holds model_dir.
  """
  tf.io.gfile.makedirs(model_dir)
  with run_lock.holding(model_dir,
                        enabled=distribute.is_chief_process(strategy)):
    yield


def _record_run(model_dir, strategy, command, config_text, train_steps):
  """The chief records the command, config and steps in model_dir.

  Returns:
    Whether this process is the chief.
  """
  chief = distribute.is_chief(strategy)
  if chief:
    run_dir.write_run_config(model_dir, command=command, config=config_text,
                             train_steps=train_steps)
  return chief


def _restore_or_initialize(model_dir, *, strategy, model, optimizer, step,
                           ema_builder, model_builder, init_checkpoint,
                           init_from_ema, keep_checkpoints):
  """Resumes from model_dir's latest checkpoint, or starts from init_checkpoint.

  Returns:
    (ema or None, the checkpoint manager, the step to start from, whether
    it was restored from model_dir).
  """
  if init_checkpoint and tf.train.latest_checkpoint(model_dir) is None:
    pretrained.initialize_from(
        model, init_checkpoint, use_ema=init_from_ema, model_builder=lambda
        num_classes: model_builder(num_classes=num_classes),
        ema_factory=ema_builder or averaging.ExponentialMovingAverage)
  with strategy.scope():
    # Created after any initialisation, so the averages start from it.
    ema = ema_builder(model) if ema_builder else None
  manager = checkpointing.Manager(
      checkpointing.build_checkpoint(step=step, model=model,
                                     optimizer=optimizer, ema=ema), model_dir,
      max_to_keep=keep_checkpoints, chief=distribute.is_chief(strategy),
      worker_id=_worker_id(strategy))
  resumed_from = manager.restore_latest()
  if resumed_from:
    logging.info("Resumed from %s at step %d", resumed_from, int(step.numpy()))
  return ema, manager, int(step.numpy()), bool(resumed_from)


def _worker_id(strategy):
  """This worker's task id in a multi-worker cluster, else None."""
  resolver = getattr(strategy, "cluster_resolver", None)
  return getattr(resolver, "task_id", None)
