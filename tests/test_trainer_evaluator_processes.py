"""End to end: bin/trainer and bin/evaluator as two processes on one model_dir.

The evaluator starts first and waits; the trainer writes a checkpoint every
2 steps of the shipped demo.gin shrunk to a tiny model. The evaluator must
evaluate each checkpoint once, stop by itself after the final one, and leave
one results.jsonl line per checkpoint. The best checkpoint it archived is
then exported with bin/exporter and used by bin/predict.
"""
import json
import os
import re
import subprocess

import tensorflow as tf

from effnet_gin.data import parse_imagenet_example
from effnet_gin.data import write_fake_imagenet
import trainer_helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 10
NUM_EVAL = 21  # Not a multiple of EVAL_BATCH_SIZE: padding must not count.
TRAIN_STEPS = 6
CHECKPOINT_STEPS = [2, 4, 6]


def shrunk_demo_flags(data_dir, model_dir):
  params = [
      f"TRAIN_STEPS = {TRAIN_STEPS}",
      "STEPS_PER_LOOP = 2",
      "TRAIN_BATCH_SIZE = 8",
      "EVAL_BATCH_SIZE = 8",
      "IMAGE_SIZE = 32",
      f"NUM_CLASSES = {NUM_CLASSES}",
      "NUM_TRAIN_IMAGES = 64",
      f"NUM_EVAL_IMAGES = {NUM_EVAL}",
      "effnet_gin.model.build_model.width_coefficient = 0.25",
      "effnet_gin.model.build_model.depth_coefficient = 0.25",
      "effnet_gin.model.build_model.image_size = 32",
      "effnet_gin.train.train.checkpoint_every_steps = 2",
      "effnet_gin.train.train.keep_checkpoints = 10",
  ]
  return ([
      "--gin_file=demo.gin", f"--data_dir={data_dir}",
      f"--model_dir={model_dir}"
  ] + [f"--gin_param={param}" for param in params])


def test_trainer_and_evaluator_processes_share_a_model_dir(tmp_path):
  data_dir = str(tmp_path / "data")
  model_dir = str(tmp_path / "model")
  write_fake_imagenet(data_dir, num_train=64, num_eval=NUM_EVAL,
                      num_classes=NUM_CLASSES, image_size=40, train_shards=2,
                      eval_shards=2, kind="learnable")
  flags = shrunk_demo_flags(data_dir, model_dir)

  # --- The evaluator waits for checkpoints while the trainer trains -------
  evaluator_log_path = str(tmp_path / "evaluator.log")
  with open(evaluator_log_path, "w") as evaluator_log:
    # Every checkpoint, even when the trainer gets ahead of it.
    evaluate_all = ["--gin_param=effnet_gin.train.evaluate.newest_only = False"]
    evaluator = subprocess.Popen(
        trainer_helpers.script("evaluator") + flags + evaluate_all, cwd=REPO,
        stdout=evaluator_log, stderr=subprocess.STDOUT)
    try:
      # Only the separate evaluator evaluates (demo.gin evaluates in-process).
      trainer_helpers.run_logged(
          trainer_helpers.script("trainer") + flags + ["--mode=train"],
          str(tmp_path / "trainer.log"), timeout=900)
      # No --eval_timeout: the evaluator has to notice the final step itself.
      evaluator.wait(timeout=600)
    finally:
      if evaluator.poll() is None:
        evaluator.kill()
        evaluator.wait()
  with open(evaluator_log_path) as f:
    evaluator_output = f.read()
  assert evaluator.returncode == 0, evaluator_output[-4000:]

  saved = sorted(
      int(name[len("ckpt-"):-len(".index")])
      for name in os.listdir(model_dir)
      if re.fullmatch(r"ckpt-\d+\.index", name))
  assert saved == CHECKPOINT_STEPS
  reported = [
      int(step)
      for step in re.findall(r"Evaluated \S+ \(step (\d+)", evaluator_output)
  ]
  assert reported == CHECKPOINT_STEPS
  with open(os.path.join(model_dir, "eval", "results.jsonl")) as f:
    results = [json.loads(line) for line in f]
  assert [r["step"] for r in results] == CHECKPOINT_STEPS
  assert [r["checkpoint"] for r in results] == [
      os.path.join(model_dir, f"ckpt-{step}") for step in CHECKPOINT_STEPS
  ]
  assert all(r["num_examples"] == NUM_EVAL for r in results)
  assert all(
      0.0 <= r["top_1_accuracy"] <= r["top_5_accuracy"] <= 1.0 for r in results)
  eval_files = os.listdir(os.path.join(model_dir, "eval"))
  assert "results.jsonl" in eval_files
  assert "record_counts.json" in eval_files  # A restart will not recount.
  assert all(
      f in ("results.jsonl", "record_counts.json") or f.startswith("events.")
      for f in eval_files)
  with open(os.path.join(model_dir, "best", "best_result.json")) as f:
    best = json.load(f)
  assert best["top_1_accuracy"] == max(r["top_1_accuracy"] for r in results)

  # --- Export the best checkpoint and classify image files with it --------
  export_dir = str(tmp_path / "serving")
  trainer_helpers.run_logged(
      trainer_helpers.script("exporter") + flags +
      [f"--export_dir={export_dir}", "--checkpoint=best"],
      str(tmp_path / "exporter.log"), timeout=600)
  files = tf.io.gfile.glob(os.path.join(data_dir, "validation-*"))
  images = []
  for i, serialized in enumerate(tf.data.TFRecordDataset(files).take(2)):
    images.append(str(tmp_path / f"image{i}.jpg"))
    tf.io.write_file(images[-1], parse_imagenet_example(serialized)["image"])
  labels_file = str(tmp_path / "labels.txt")
  with open(labels_file, "w") as f:
    f.write("".join(f"shape {i}\n" for i in range(NUM_CLASSES)))
  output = trainer_helpers.run_logged(
      trainer_helpers.script("predict") +
      [f"--saved_model={export_dir}", f"--labels_file={labels_file}"] + images,
      str(tmp_path / "predict.log"), timeout=600)
  for image in images:
    assert image in output
  ranked = re.findall(r"^  (\d)\. \d+ \(shape \d+\): [0-9.]+$", output,
                      flags=re.MULTILINE)
  assert ranked == ["1", "2", "3", "4", "5"] * len(images)
