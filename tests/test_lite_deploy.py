"""Deployment end to end: a trained demo-size Lite0, exported in every format.

One module-scoped run trains an EfficientNet-Lite0 (quarter width and depth,
32 px) on generated learnable TFRecords for 250 seeded steps, and exports it
in every format with bin/exporter's library call. The tests then check, with
the runtimes called directly from test code, that int8 agrees with float,
that `bin/evaluator --tflite/--onnx` scores every validation image exactly
once, and that each format, loaded in a fresh process that never imports
effnet_gin, gives the same top-1 as `bin/predict` with the checkpoint.
"""
import json
import os
import subprocess
import sys
import textwrap

import gin
import numpy as np
import pytest
import tensorflow as tf

from effnet_gin.data import preprocess_for_eval
from effnet_gin.data import write_fake_imagenet
from effnet_gin.serving import formats
from export_helpers import eval_examples
from export_helpers import run_params
from export_helpers import tflite_top1
from export_helpers import train_and_export
import trainer_helpers

NUM_CLASSES = 6
NUM_EVAL = 200
IMAGE_SIZE = 32
FORMATS = formats.FORMATS


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
  root = tmp_path_factory.mktemp("deploy")
  data_dir = str(root / "data")
  write_fake_imagenet(data_dir, num_train=640, num_eval=NUM_EVAL,
                      num_classes=NUM_CLASSES, image_size=40, train_shards=2,
                      eval_shards=2, kind="learnable")
  params = run_params(data_dir, variant="efficientnet-lite0",
                      image_size=IMAGE_SIZE, num_classes=NUM_CLASSES,
                      num_eval=NUM_EVAL)
  model_dir, exports = train_and_export(root, data_dir, params, FORMATS)
  gin.clear_config()
  return dict(root=root, data_dir=data_dir, params=params, model_dir=model_dir,
              exports=exports)


@pytest.fixture(scope="module")
def eval_set(deployed):
  examples = eval_examples(deployed["data_dir"])
  images = np.stack([
      preprocess_for_eval(encoded, IMAGE_SIZE).numpy()
      for encoded, _ in examples
  ])
  labels = np.array([label for _, label in examples])
  return images, labels


def test_int8_top1_agrees_with_float(deployed, eval_set):
  images, labels = eval_set
  assert len(labels) == NUM_EVAL
  exports = deployed["exports"]
  float_top1 = tflite_top1(f"{exports['tflite']}/model.tflite", images)
  int8_top1 = tflite_top1(f"{exports['tflite_int8']}/model.tflite", images)
  assert np.mean(float_top1 == labels) > 0.4  # Trained: chance is 1/6.
  assert np.mean(int8_top1 == float_top1) >= 0.9
  metadata = formats.read_metadata(exports["tflite_int8"])
  comparison = metadata["int8_vs_float"]
  assert comparison["int8"]["num_examples"] == NUM_EVAL
  assert comparison["float"]["num_examples"] == NUM_EVAL
  assert comparison["int8"]["top_1_accuracy"] == pytest.approx(
      np.mean(int8_top1 == labels), abs=1e-12)
  float_size = os.path.getsize(f"{exports['tflite']}/model.tflite")
  assert os.path.getsize(f"{exports['tflite_int8']}/model.tflite") < (
      0.5 * float_size)
  assert os.path.getsize(f"{exports['tflite_float16']}/model.tflite") < (
      0.7 * float_size)


def bin_command(name, deployed, *args):
  return [
      sys.executable,
      os.path.join(trainer_helpers.BIN, name), "--gin_file=demo.gin"
  ] + [f"--gin_param={p}" for p in deployed["params"]] + list(args)


def run_bin(command):
  completed = subprocess.run(command, capture_output=True, text=True,
                             timeout=300, check=False,
                             env=trainer_helpers.subprocess_env())
  assert completed.returncode == 0, completed.stderr[-3000:]
  return completed.stdout


@pytest.mark.parametrize("format_name,flag", [("tflite", "tflite"),
                                              ("tflite_int8", "tflite"),
                                              ("onnx", "onnx")])
def test_evaluator_scores_every_image_once(deployed, eval_set, format_name,
                                           flag):
  export_dir = deployed["exports"][format_name]
  model = f"{export_dir}/{formats.model_file(format_name)}"
  output = run_bin(bin_command("evaluator", deployed, f"--{flag}={model}"))
  result = json.loads(output.strip().splitlines()[-1])
  assert result["num_examples"] == NUM_EVAL
  images, labels = eval_set
  if flag == "tflite":
    expected = np.mean(tflite_top1(model, images) == labels)
    assert result["top_1_accuracy"] == pytest.approx(expected, abs=1e-12)
  assert result["top_1_accuracy"] <= result["top_5_accuracy"] <= 1.0


def predicted(stdout):
  """(top-1 class, top-1 minus top-2 probability) per image of bin/predict."""
  ranked = [
      line.split()
      for line in stdout.strip().splitlines()
      if line.startswith(("  1. ", "  2. "))
  ]
  return [(int(first[1].rstrip(":")), float(first[-1]) - float(second[-1]))
          for first, second in zip(ranked[::2], ranked[1::2])]


# Loads each format with its runtime alone, from preprocessed pixels (or,
# for the SavedModel, the image files' bytes), and never imports effnet_gin.
FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    import numpy as np
    format_name, export_dir, pixels = sys.argv[1:4]
    images = np.load(pixels)
    if format_name == "saved_model":
      import tensorflow as tf
      serve = tf.saved_model.load(export_dir).signatures["serving_default"]
      data = tf.stack([tf.io.read_file(p) for p in sys.argv[4:]])
      classes = serve(image_bytes=data)["classes"].numpy().tolist()
    elif format_name == "onnx":
      import onnxruntime
      session = onnxruntime.InferenceSession(export_dir + "/model.onnx")
      name = session.get_inputs()[0].name
      classes = [int(session.run(None, {name: image[None]})[0].argmax())
                 for image in images]
    else:
      from ai_edge_litert.interpreter import Interpreter
      meta = json.load(open(export_dir + "/metadata.json"))
      interpreter = Interpreter(export_dir + "/model.tflite")
      interpreter.allocate_tensors()
      given = interpreter.get_input_details()[0]
      output = interpreter.get_output_details()[0]
      quantization = meta["input"].get("quantization")
      classes = []
      for image in images:
        if quantization:
          image = np.clip(np.round(image / quantization["scale"]
                                   + quantization["zero_point"]), 0, 255)
        interpreter.set_tensor(given["index"],
                               image[None].astype(given["dtype"]))
        interpreter.invoke()
        classes.append(int(interpreter.get_tensor(output["index"]).argmax()))
    assert not [m for m in sys.modules if m.startswith("effnet_gin")]
    print(json.dumps(classes))
""")


def test_every_format_in_a_fresh_process_matches_predict(
    deployed, eval_set, tmp_path):
  images, _ = eval_set
  examples = eval_examples(deployed["data_dir"])[:24]
  files = []
  for i, (encoded, _) in enumerate(examples):
    files.append(str(tmp_path / f"image{i}.jpg"))
    tf.io.write_file(files[-1], encoded)
  pixels = str(tmp_path / "pixels.npy")
  np.save(pixels, images[:24])
  expected = predicted(
      run_bin(
          bin_command("predict", deployed,
                      f"--model_dir={deployed['model_dir']}", *files)))
  assert len(expected) == 24
  # int8 is not the float network: it must agree where the checkpoint is
  # confident, its 8 images of largest top-1 margin; float formats on all.
  confident = sorted(range(24), key=lambda i: -expected[i][1])[:8]
  for format_name in FORMATS:
    output = run_bin([
        sys.executable, "-c", FRESH_PROCESS, format_name, deployed["exports"]
        [format_name], pixels
    ] + files)
    classes = json.loads(output.strip().splitlines()[-1])
    checked = confident if format_name == "tflite_int8" else range(24)
    assert [classes[i] for i in checked] == [expected[i][0] for i in checked
                                            ], format_name
  lite_output = run_bin([
      sys.executable,
      os.path.join(trainer_helpers.BIN, "predict"),
      f"--tflite={deployed['exports']['tflite']}/model.tflite"
  ] + files)
  assert [c for c, _ in predicted(lite_output)] == [c for c, _ in expected]
  assert lite_output.count("  5. ") == 24
