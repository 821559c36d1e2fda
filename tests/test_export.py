"""Tests of the SavedModel export and of classifying image files with it."""
import json
import os
import subprocess
import sys
import textwrap

import gin
import numpy as np
import pytest
import tensorflow as tf

from effnet_gin import configurables
from effnet_gin.data import parse_imagenet_example
from effnet_gin.data import preprocess_for_eval
from effnet_gin.data import write_fake_imagenet
from effnet_gin.model import build_model
from effnet_gin.checkpoints import averaging
from effnet_gin.checkpoints import checkpointing
from effnet_gin.evaluation import records
from effnet_gin.serving import labels
from effnet_gin.train import optim

from effnet_gin.serving import exporter as export_lib
from effnet_gin.serving import predict as predict_lib
from export_helpers import checkpoint_logits

NUM_CLASSES = 10
IMAGE_SIZE = 32


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
  """Six JPEG files (eval images of the learnable task) and one PNG."""
  data_dir = str(tmp_path_factory.mktemp("data"))
  write_fake_imagenet(data_dir, num_train=1, num_eval=6,
                      num_classes=NUM_CLASSES, image_size=48, image_width=60,
                      train_shards=1, eval_shards=1, kind="learnable")
  image_dir = tmp_path_factory.mktemp("images")
  files = tf.io.gfile.glob(os.path.join(data_dir, "validation-*"))
  paths = []
  for i, serialized in enumerate(tf.data.TFRecordDataset(files)):
    encoded = parse_imagenet_example(serialized)["image"]
    paths.append(str(image_dir / f"image{i}.jpg"))
    tf.io.write_file(paths[-1], encoded)
  png = tf.io.encode_png(tf.io.decode_jpeg(encoded))
  paths.append(str(image_dir / "image.png"))
  tf.io.write_file(paths[-1], png)
  return paths


@pytest.fixture(name="run")
def run_fixture(tmp_path):
  """A model_dir with checkpoints ckpt-1 and ckpt-2 (trainer's contract)."""
  configure()
  model_dir = str(tmp_path / "run")
  model = configurables.build_model()
  optimizer = optim.build_optimizer(0.01)
  optimizer.build(model.trainable_variables)
  ema = averaging.ExponentialMovingAverage(model)
  step = tf.Variable(0, dtype=tf.int64)
  manager = checkpointing.Manager(
      checkpointing.build_checkpoint(step=step, model=model,
                                     optimizer=optimizer, ema=ema), model_dir)
  for number in (1, 2):
    for i, variable in enumerate(model.trainable_variables):
      variable.assign_add(0.3 * tf.random.stateless_normal(
          variable.shape, [number, i], dtype=variable.dtype))
    step.assign(number)
    ema.update(number)
    manager.save(number)
  return model_dir


def configure(num_classes=NUM_CLASSES):
  gin.parse_config(f"""
      build_model.variant = 'efficientnet-b0'
      build_model.num_classes = {num_classes}
      build_model.width_coefficient = 0.25
      build_model.depth_coefficient = 0.25
      build_model.image_size = {IMAGE_SIZE}
  """)


def classify_in_process(checkpoint_path, image_files, use_ema=True):
  """Top-1 classes and probabilities of the checkpoint's (EMA) weights."""
  images = tf.stack([
      preprocess_for_eval(tf.io.read_file(path), IMAGE_SIZE)
      for path in image_files
  ])
  probabilities = tf.nn.softmax(
      checkpoint_logits(checkpoint_path, images, use_ema)).numpy()
  return probabilities.argmax(-1), probabilities


def test_saved_model_in_fresh_process_matches_checkpoint(
    run, image_files, tmp_path):
  export_dir = str(tmp_path / "serving")
  assert configurables.export(model_dir=run, export_dir=export_dir,
                              image_size=IMAGE_SIZE) == export_dir
  classes, probabilities = classify_in_process(f"{run}/ckpt-2", image_files)
  _, raw_probabilities = classify_in_process(f"{run}/ckpt-2", image_files,
                                             use_ema=False)
  assert not np.allclose(probabilities, raw_probabilities, atol=1e-3)

  # Only TensorFlow in the fresh process: the SavedModel is self-contained.
  script = textwrap.dedent("""
      import json, sys
      import tensorflow as tf
      serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
      data = [tf.io.read_file(path) for path in sys.argv[2:]]
      outputs = serve(image_bytes=tf.stack(data))
      print(json.dumps({"classes": outputs["classes"].numpy().tolist(),
                        "probabilities":
                            outputs["probabilities"].numpy().tolist()}))
  """)
  completed = subprocess.run([sys.executable, "-c", script, export_dir] +
                             image_files, capture_output=True, text=True,
                             timeout=300, check=False)
  assert completed.returncode == 0, completed.stderr[-3000:]
  served = json.loads(completed.stdout.strip().splitlines()[-1])
  assert served["classes"] == classes.tolist()
  np.testing.assert_allclose(served["probabilities"], probabilities, atol=1e-5)


def test_saved_model_signatures(run, image_files, tmp_path):
  export_dir = configurables.export(model_dir=run,
                                    export_dir=str(tmp_path / "s"),
                                    image_size=IMAGE_SIZE,
                                    checkpoint=f"{run}/ckpt-1")
  loaded = tf.saved_model.load(export_dir)
  by_bytes = loaded.signatures["serving_default"]
  by_images = loaded.signatures["serving_images"]
  assert list(by_bytes.structured_input_signature[1]) == ["image_bytes"]
  outputs = by_bytes(
      image_bytes=tf.stack([tf.io.read_file(path) for path in image_files]))
  assert outputs["classes"].dtype == tf.int64
  assert outputs["classes"].shape == [len(image_files)]
  assert outputs["probabilities"].shape == [len(image_files), NUM_CLASSES]
  np.testing.assert_allclose(outputs["probabilities"].numpy().sum(-1), 1.0,
                             rtol=1e-5)
  images = tf.stack([
      preprocess_for_eval(tf.io.read_file(path), IMAGE_SIZE)
      for path in image_files
  ])
  np.testing.assert_allclose(
      by_images(images=images)["probabilities"], outputs["probabilities"],
      atol=1e-6)


def test_checkpoint_choice_latest_best_and_path(run, tmp_path):
  assert export_lib.resolve_serving_checkpoint(run) == f"{run}/ckpt-2"
  assert export_lib.resolve_serving_checkpoint(
      run, f"{run}/ckpt-1") == f"{run}/ckpt-1"
  with pytest.raises(FileNotFoundError, match="bin/evaluator"):
    export_lib.resolve_serving_checkpoint(run, "best")
  # ckpt-1's files are there to copy: no restored checkpoint is needed.
  records.BestCheckpoint(run).offer(
      dict(step=1, checkpoint=f"{run}/ckpt-1", top_1_accuracy=0.5), None)
  assert export_lib.resolve_serving_checkpoint(run,
                                               "best") == f"{run}/best/ckpt-1"
  with pytest.raises(FileNotFoundError, match="ckpt-9"):
    export_lib.resolve_serving_checkpoint(run, f"{run}/ckpt-9")
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    export_lib.resolve_serving_checkpoint(str(tmp_path))


def test_export_refuses_to_overwrite_a_saved_model(run, tmp_path):
  export_dir = str(tmp_path / "serving")
  os.makedirs(export_dir)
  open(os.path.join(export_dir, "saved_model.pb"), "w").close()
  with pytest.raises(FileExistsError, match="serving"):
    configurables.export(model_dir=run, export_dir=export_dir)


def test_class_count_comes_from_the_checkpoint(run):
  gin.clear_config()
  configure(num_classes=1000)  # E.g. the ImageNet config of a fine-tuned run.
  module, path = export_lib.load_serving_module(
      model_dir=run, model_builder=configurables.build_model)
  assert path == f"{run}/ckpt-2" and module.image_size == IMAGE_SIZE
  outputs = module.serve_images(tf.zeros([1, IMAGE_SIZE, IMAGE_SIZE, 3]))
  assert outputs["probabilities"].shape == [1, NUM_CLASSES]


def test_predict_with_saved_model_or_checkpoint_and_labels(
    run, image_files, tmp_path):
  export_dir = configurables.export(model_dir=run,
                                    export_dir=str(tmp_path / "serving"))
  labels_file = str(tmp_path / "labels.txt")
  names = [f"class {i}" for i in range(NUM_CLASSES)]
  with open(labels_file, "w") as f:
    f.write("\n".join(names) + "\n")
  results = predict_lib.predict(image_files, saved_model_dir=export_dir,
                                labels_file=labels_file)
  classes, probabilities = classify_in_process(f"{run}/ckpt-2", image_files)
  assert [path for path, _ in results] == image_files
  for (_, top), expected, probs in zip(results, classes, probabilities):
    assert len(top) == 5
    assert top[0][0] == expected and top[0][1] == f"class {expected}"
    assert [p for _, _, p in top] == sorted((p for _, _, p in top),
                                            reverse=True)
    assert top[0][2] == pytest.approx(probs.max(), abs=1e-5)
  from_checkpoint = predict_lib.predict(image_files, model_dir=run, top_k=1,
                                        model_builder=configurables.build_model)
  assert [top[0][0] for _, top in from_checkpoint] == classes.tolist()
  text = predict_lib.format_predictions(results)
  assert f"1. {classes[0]} (class {classes[0]})" in text

  with open(labels_file, "w") as f:
    f.write("background\n" + "\n".join(names) + "\n")
  with pytest.raises(ValueError, match="names 11 classes"):
    predict_lib.predict(image_files, saved_model_dir=export_dir,
                        labels_file=labels_file)
  with pytest.raises(FileNotFoundError, match="nope.jpg"):
    predict_lib.predict([str(tmp_path / "nope.jpg")],
                        saved_model_dir=export_dir)


def test_read_labels_formats(tmp_path):
  path = str(tmp_path / "labels")
  for text in ('["tench", "goldfish"]', '{"1": "goldfish", "0": "tench"}',
               "tench\ngoldfish\n"):
    with open(path, "w") as f:
      f.write(text)
    assert labels.read_labels(path) == ["tench", "goldfish"]
  with pytest.raises(FileNotFoundError, match="missing.txt"):
    labels.read_labels(str(tmp_path / "missing.txt"))
