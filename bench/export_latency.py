"""Benchmark: batch-1 latency of the exported formats on this CPU.

    python3 bench/export_latency.py                       # Lite0 and B0
    python3 bench/export_latency.py --variants=efficientnet-lite0 --runs=50

For each variant at its own resolution (random weights: latency does not
depend on them), exports the inference graph as a SavedModel, a float TFLite
and an int8 TFLite (calibrated on a few random images), then times one
image at a time with 1 and 2 threads: the SavedModel's `serving_images` in
TensorFlow (a fresh process per thread count, since TensorFlow fixes its
thread pools at start-up), the TFLite models in LiteRT with XNNPACK. Prints
the median and 90th percentile in ms, the file sizes, and each latency as a
ratio to the SavedModel's at the same thread count. On a machine shared with
other jobs the absolute figures drift; the ratios, measured back to back,
drift less. Never asserts.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

_VARIANTS = flags.DEFINE_list("variants",
                              ["efficientnet-lite0", "efficientnet-b0"],
                              "Variants.")
_THREADS = flags.DEFINE_list("threads", ["1", "2"], "Thread counts.")
_RUNS = flags.DEFINE_integer("runs", 30, "Timed runs (after 5 warm-up).")
_SAVED_MODEL_WORKER = flags.DEFINE_string(
    "saved_model_worker", None, "Internal: time this SavedModel and exit.")


def percentiles(run, runs):
  """(median, p90) in ms of `run()` over `runs` calls after 5 warm-up."""
  for _ in range(5):
    run()
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    run()
    times.append(1000.0 * (time.perf_counter() - start))
  return float(np.median(times)), float(np.percentile(times, 90))


def time_saved_model(path, threads, runs):
  """Times the SavedModel in a fresh process with `threads` TF threads."""
  completed = subprocess.run([
      sys.executable, __file__, f"--saved_model_worker={path}",
      f"--threads={threads}", f"--runs={runs}"
  ], capture_output=True, text=True, check=True,
                             env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  return json.loads(completed.stdout.strip().splitlines()[-1])


def saved_model_worker(path, threads, runs):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.threading.set_intra_op_parallelism_threads(threads)
  tf.config.threading.set_inter_op_parallelism_threads(threads)
  serve = tf.saved_model.load(path).signatures["serving_images"]
  size = serve.structured_input_signature[1]["images"].shape[1]
  images = tf.random.uniform([1, size, size, 3], 0, 255)
  print(
      json.dumps(
          percentiles(lambda: serve(images=images)["classes"].numpy(), runs)))


def time_tflite(path, threads, runs):
  from ai_edge_litert import interpreter as litert  # pylint: disable=g-import-not-at-top
  interpreter = litert.Interpreter(model_path=path, num_threads=threads)
  interpreter.allocate_tensors()
  given = interpreter.get_input_details()[0]
  batch = np.random.default_rng(0).integers(0, 256, given["shape"]).astype(
      given["dtype"])

  def run():
    interpreter.set_tensor(given["index"], batch)
    interpreter.invoke()

  return percentiles(run, runs)


def export_variant(variant, directory):
  """Writes the three exports of `variant`; returns {format: path}."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from effnet_gin.model import build_model  # pylint: disable=g-import-not-at-top
  from effnet_gin.model.inference import inference_model  # pylint: disable=g-import-not-at-top
  from effnet_gin.serving.exporter import ServingModule  # pylint: disable=g-import-not-at-top
  from effnet_gin.serving import converters  # pylint: disable=g-import-not-at-top
  model = inference_model(build_model(variant))
  size = int(model.input_shape[1])
  paths = {"saved_model": f"{directory}/{variant}_saved_model"}
  module = ServingModule(model, size)
  tf.saved_model.save(module, paths["saved_model"],
                      signatures=module.signatures())
  calibration = [
      np.random.default_rng(i).uniform(0, 255,
                                       [1, size, size, 3]).astype(np.float32)
      for i in range(8)
  ]
  for format_name in ("tflite", "tflite_int8"):
    paths[format_name] = f"{directory}/{variant}_{format_name}.tflite"
    with open(paths[format_name], "wb") as f:
      f.write(
          converters.convert_tflite(model, format_name,
                                    calibration=calibration))
  return paths, size


def directory_size(path):
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(
      os.path.getsize(os.path.join(root, name))
      for root, _, names in os.walk(path)
      for name in names)


def main(argv):
  del argv
  threads = [int(t) for t in _THREADS.value]
  if _SAVED_MODEL_WORKER.value:
    saved_model_worker(_SAVED_MODEL_WORKER.value, threads[0], _RUNS.value)
    return
  rows = []
  with tempfile.TemporaryDirectory() as directory:
    for variant in _VARIANTS.value:
      paths, size = export_variant(variant, directory)
      for count in threads:
        base = time_saved_model(paths["saved_model"], count, _RUNS.value)
        for format_name, path in paths.items():
          timed = base if format_name == "saved_model" else time_tflite(
              path, count, _RUNS.value)
          rows.append((variant, size, format_name, directory_size(path), count,
                       timed, timed[0] / base[0]))
  print(f"{'variant':20} {'px':>4} {'format':12} {'MB':>6} {'thr':>3} "
        f"{'median ms':>10} {'p90 ms':>8} {'vs SavedModel':>13}")
  for variant, size, fmt, nbytes, count, (median, p90), ratio in rows:
    print(f"{variant:20} {size:4d} {fmt:12} {nbytes / 1e6:6.2f} {count:3d} "
          f"{median:10.2f} {p90:8.2f} {ratio:12.2f}x")


if __name__ == "__main__":
  app.run(main)
