"""Benchmark: int8 agreement with float against the calibration size.

    python3 bench/calibration_size.py
    python3 bench/calibration_size.py --sizes=10,100,1000 --variant=efficientnet-b0

Takes a small model (a Lite0 at half width and depth, 64 px, batch-norm
statistics and weights moved away from their initial values so that the
ranges are not trivial), briefly trained on the generated learnable shapes
so that its logits mean something, exports it to int8 TFLite calibrated on
the first N eval images for each N of --sizes (what
`bin/exporter --calibration_images=N` does), and prints, for each N, the
conversion time, the share of held-out images whose int8 top-1 equals the
float top-1, and the int8 and float top-1 accuracies. Never asserts.
"""
import time

from absl import app
from absl import flags
import keras
import numpy as np

from effnet_gin import data
from effnet_gin.model import build_model
from effnet_gin.model.inference import inference_model
from effnet_gin.serving import converters
from effnet_gin.serving import runtimes

_SIZES = flags.DEFINE_list("sizes", ["10", "50", "200", "1000"],
                           "Calibration sizes to compare.")
_VARIANT = flags.DEFINE_string("variant", "efficientnet-lite0", "Variant.")
_STEPS = flags.DEFINE_integer("train_steps", 150, "Training steps first.")
_IMAGE_SIZE = 64
_CLASSES = 10


def _dataset_builder(num_eval):
  source = data.LearnableShapesSource(num_train=2000, num_eval=num_eval,
                                      num_classes=_CLASSES,
                                      image_size=_IMAGE_SIZE)

  def build(input_context=None, **kwargs):
    return data.build_dataset(input_context, source=source,
                              num_classes=_CLASSES, **kwargs)

  return build


def _trained_model():
  model = build_model(_VARIANT.value, num_classes=_CLASSES,
                      width_coefficient=0.5, depth_coefficient=0.5,
                      image_size=_IMAGE_SIZE)
  train = _dataset_builder(100)(split="train", global_batch_size=32,
                                image_size=_IMAGE_SIZE)
  model.compile(
      optimizer=keras.optimizers.Adam(3e-3),
      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.fit(train, steps_per_epoch=_STEPS.value, epochs=1, verbose=0)
  return inference_model(model)


def main(argv):
  del argv
  sizes = [int(size) for size in _SIZES.value]
  model = _trained_model()
  # Calibration comes from the first images of one eval split, the
  # comparison from another (different seed-free indices: a later range).
  calibration_builder = _dataset_builder(max(sizes))
  held_out = data.LearnableShapesSource(num_train=10, num_eval=max(sizes) + 500,
                                        num_classes=_CLASSES,
                                        image_size=_IMAGE_SIZE)
  batches = list(
      data.build_dataset(source=held_out, num_classes=_CLASSES, split="eval",
                         global_batch_size=100,
                         image_size=_IMAGE_SIZE).as_numpy_iterator())
  images = np.concatenate([b[0] for b in batches])[-500:]
  labels = np.concatenate([b[1] for b in batches])[-500:]
  float_top = np.argmax(model.predict(images, verbose=0), axis=-1)
  print(f"{_VARIANT.value} (x0.5) at {_IMAGE_SIZE}px, {len(images)} held-out "
        f"images; float top-1 {np.mean(float_top == labels):.3f}")
  for size in sizes:
    start = time.time()
    calibration = converters.calibration_batches(
        image_size=_IMAGE_SIZE, batch_size=1, num_images=size,
        dataset_builder=calibration_builder)
    content = converters.convert_tflite(model, "tflite_int8",
                                        calibration=calibration)
    seconds = time.time() - start
    path = f"/tmp/calibration_size_{size}.tflite"
    with open(path, "wb") as f:
      f.write(content)
    int8_top = np.argmax(
        runtimes.load_classifier(path, num_threads=2).logits(images), axis=-1)
    print(f"calibration {size:5d} images: convert {seconds:6.1f} s, "
          f"int8 = float top-1 on {np.mean(int8_top == float_top):.3f}, "
          f"int8 top-1 {np.mean(int8_top == labels):.3f}")


if __name__ == "__main__":
  app.run(main)
