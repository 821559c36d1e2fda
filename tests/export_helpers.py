"""Shared by the export tests: a trained run's bindings, eval images, runtimes.

`run_params` are the bindings (on top of demo.gin) of a short seeded run on
generated learnable TFRecords whose exports the deployment tests check;
`eval_examples` reads those records back; `tflite_top1` runs a .tflite file
with LiteRT straight from test code; `checkpoint_logits` computes what a
checkpoint's own (EMA) weights say, without the exporter's restore path.
"""
import os

import gin
import numpy as np
import tensorflow as tf
from ai_edge_litert import interpreter as litert

from effnet_gin import cli
from effnet_gin import configurables
from effnet_gin.data import parse_imagenet_example
from effnet_gin.checkpoints import averaging
from effnet_gin.checkpoints import checkpointing


def run_params(data_dir, *, variant, image_size, num_classes, num_eval,
               train_steps=250, width=0.25, depth=0.25, num_train=640):
  """Bindings, on top of demo.gin, of a short seeded run to export."""
  return [
      "effnet_gin.train.build_strategy.kind = 'cpu'",
      f"MODEL_NAME = '{variant}'",
      f"IMAGE_SIZE = {image_size}",
      f"NUM_CLASSES = {num_classes}",
      f"NUM_TRAIN_IMAGES = {num_train}",
      f"NUM_EVAL_IMAGES = {num_eval}",
      "TRAIN_BATCH_SIZE = 32",
      "EVAL_BATCH_SIZE = 50",
      f"TRAIN_STEPS = {train_steps}",
      "STEPS_PER_LOOP = 50",
      "effnet_gin.train.train.mode = 'train'",
      "effnet_gin.train.train.seed = 7",
      f"effnet_gin.model.build_model.width_coefficient = {width}",
      f"effnet_gin.model.build_model.depth_coefficient = {depth}",
      # A short run: moving statistics that settle within it, a larger rate.
      "effnet_gin.model.build_model.batch_norm_momentum = 0.9",
      "effnet_gin.train.build_schedule.base_learning_rate = 0.256",
      "effnet_gin.train.build_schedule.warmup_epochs = 1",
      f"effnet_gin.data.TFRecordSource.data_dir = '{data_dir}'",
  ]


def eval_examples(data_dir):
  """(encoded image, 0-based label) of every validation record."""
  files = sorted(tf.io.gfile.glob(os.path.join(data_dir, "validation-*")))
  examples = []
  for serialized in tf.data.TFRecordDataset(files):
    example = parse_imagenet_example(serialized)
    examples.append((example["image"], int(example["label"])))
  return examples


def tflite_top1(path, images):
  """Top-1 of images (float 0-255) with LiteRT, straight from test code."""
  interpreter = litert.Interpreter(model_path=path, num_threads=2)
  interpreter.allocate_tensors()
  given = interpreter.get_input_details()[0]
  output = interpreter.get_output_details()[0]
  classes = []
  for image in images:
    batch = image[None].astype(np.float32)
    if given["dtype"] == np.uint8:
      batch = np.clip(np.round(batch), 0, 255).astype(np.uint8)
    interpreter.set_tensor(given["index"], batch)
    interpreter.invoke()
    classes.append(int(np.argmax(interpreter.get_tensor(output["index"])[0])))
  return np.array(classes)


def checkpoint_logits(checkpoint_path, images, use_ema=True,
                      model_builder=configurables.build_model):
  """Logits of the checkpoint's (EMA) weights on float 0-255 images."""
  model = model_builder()
  ema = averaging.ExponentialMovingAverage(model) if use_ema else None
  checkpointing.build_checkpoint(
      model=model, ema=ema).read(checkpoint_path).expect_partial()
  if ema is not None:
    ema.copy_to_model()
  return model(images, training=False).numpy()


def relative_error(actual, expected):
  """Largest |actual - expected| relative to the largest |expected|."""
  return np.max(np.abs(actual - expected)) / np.max(np.abs(expected))


def train_and_export(root, data_dir, params, format_names):
  """Trains demo.gin with `params` in root/model, then exports each format.

  Returns:
    (model_dir, {format name: what `configurables.export` returned}), each
    export in root/<format name>.
  """
  model_dir = str(root / "model")
  gin.clear_config()
  cli.configure(["demo.gin"], params)
  configurables.train(model_dir=model_dir, command="test")
  exports = {}
  for format_name in format_names:
    gin.clear_config()
    cli.configure(["demo.gin"], params)
    exports[format_name] = configurables.export(
        model_dir=model_dir, export_dir=str(root / format_name),
        format=format_name)
  return model_dir, exports
