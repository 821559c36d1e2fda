"""Each stage's input pipeline and compiled host loop (see `stages`).

`trainer.train` hands the controller one `controller.Segment` per stage of
`stages.plan`: entering a stage builds the stage's input pipeline (its image
size, RandAugment magnitude, mixup and CutMix alphas), sets the model's
dropout and compiles a new host loop for the stage's static shapes. The
model, optimizer, EMA and global step are the run's, so the learning-rate
schedule, the averages and the step counter run on across stages.

The Keras model is built for one input size (its `image_size`); a stage at
another size trains `at_image_size(model, size)`: the same layers, so the
same variables, called on an input of the stage's size.
"""
import functools

from absl import logging
import keras
import tensorflow as tf

from effnet_gin.train import controller
from effnet_gin.train import train_step
from effnet_gin import distribute

DROPOUT_LAYER = "top_dropout"


def segments(stages, *, strategy, model, dataset_builder, train_batch_size,
             seed, progressive, **loop_args):
  """The controller's segments, one per stage, built when each starts.

  Args:
    stages: the run's `stages.Stage`s (`stages.plan`).
    strategy: the strategy everything lives under.
    model: the Keras model the run trains (built at any input size).
    dataset_builder: the trainer's `dataset_builder`; called per stage with
      the stage's image_size and, when set, its randaugment_magnitude,
      mixup_alpha and cutmix_alpha.
    train_batch_size: the global batch size.
    seed: the run's seed, or None.
    progressive: whether the stages are progressive learning's (log and
      summarise each stage).
    **loop_args: the rest of `train_step.build_host_loop`'s arguments.

  Returns:
    A list of `controller.Segment`.
  """
  start = functools.partial(_start_stage, strategy=strategy, model=model,
                            dataset_builder=dataset_builder,
                            train_batch_size=train_batch_size, seed=seed,
                            progressive=progressive, loop_args=loop_args)
  return [
      controller.Segment(stage.end_step, functools.partial(start, stage))
      for stage in stages
  ]


def _start_stage(stage, step, *, strategy, model, dataset_builder,
                 train_batch_size, seed, progressive, loop_args):
  """Builds a stage's (host loop, iterator), entered at `step`."""
  if progressive:
    logging.info("%s (entered at step %d)", stage.describe(), step)
    _summarise(stage, step)
  if stage.dropout is not None:
    set_dropout(model, stage.dropout)
  stage_model = at_image_size(model, stage.image_size)
  seeded = {} if seed is None else {"seed": seed}
  dataset = distribute.distributed_dataset(strategy, dataset_builder,
                                           split="train",
                                           global_batch_size=train_batch_size,
                                           image_size=stage.image_size,
                                           **stage.dataset_kwargs(), **seeded)
  host_loop = train_step.build_host_loop(strategy=strategy, model=stage_model,
                                         global_batch_size=train_batch_size,
                                         **loop_args)
  return host_loop, iter(dataset)


def _summarise(stage, step):
  """TensorBoard scalars of the stage, at the step it starts."""
  tf.summary.scalar("progressive/stage", stage.index + 1, step=step)
  tf.summary.scalar("progressive/image_size", stage.image_size, step=step)
  for name in ("dropout", "randaugment_magnitude", "mixup_alpha",
               "cutmix_alpha"):
    value = getattr(stage, name)
    if value is not None:
      tf.summary.scalar(f"progressive/{name}", value, step=step)


def set_dropout(model, rate):
  """Sets the classifier dropout rate (read when a step is next traced).

  Raises:
    ValueError: when the model has no `top_dropout` layer.
  """
  try:
    layer = model.get_layer(DROPOUT_LAYER)
  except ValueError:
    raise ValueError(
        f"progressive dropout needs the model's "
        f"'{DROPOUT_LAYER}' layer; {model.name} has none") from None
  layer.rate = float(rate)


def at_image_size(model, image_size):
  """`model` taking [N, image_size, image_size, 3] images, sharing its layers.

  Returns the model itself when it was built at that size; otherwise a
  functional model over the same layer objects (and so the same variables,
  which the optimizer, EMA and checkpoint hold) on an input of that size.

  Raises:
    ValueError: when the model cannot run at that size (e.g. a pooling
      built for a fixed map, as EdgeTPU's local pooling).
  """
  if tuple(model.input_shape[1:3]) == (image_size, image_size):
    return model
  inputs = keras.Input((image_size, image_size, model.input_shape[-1]),
                       name=model.inputs[0].name, dtype=model.inputs[0].dtype)
  try:
    resized = keras.models.clone_model(model, input_tensors=inputs,
                                       clone_function=lambda layer: layer)
  except ValueError as error:
    raise ValueError(f"{model.name} (built at {model.input_shape[1]} px) does "
                     f"not run at image size {image_size}: {error}") from None
  if resized.output_shape != model.output_shape:
    raise ValueError(f"{model.name} (built at {model.input_shape[1]} px) "
                     f"gives {resized.output_shape} at image size "
                     f"{image_size}, not {model.output_shape}")
  return resized
