"""Records of evaluations on an image glob: apart from the run's own records.

`bin/evaluator --image_glob` (eval_ckpt_main's imagenet mode) scores a
checkpoint on files that are not the run's validation split, so its results
go to model_dir/eval_image_glob/ and never to eval/results.jsonl or best/.
"""
from absl import logging
import tensorflow as tf

from effnet_gin.checkpoints import run_dir
from effnet_gin.evaluation.metrics import METRICS
from effnet_gin.evaluation.records import ResultsLog


class ImageGlobRecorder:
  """Records evaluations on an image glob (not the run's eval split).

  TensorBoard scalars and results.jsonl go to model_dir/eval_image_glob/
  (`run_dir.IMAGE_GLOB_EVAL_DIR`), one line per checkpoint with the glob
  and label file; the run's results.jsonl and best/ are left alone, since
  the images are not its validation split.

  Args:
    model_dir: where to record.
    chief: whether this process writes.
    images: the glob, recorded with each result.
    labels_file: the label file, recorded with each result.
  """

  def __init__(self, model_dir, chief, *, images, labels_file):
    self._chief = chief
    self._summary_dir = run_dir.path(model_dir, run_dir.IMAGE_GLOB_EVAL_DIR)
    self.results_log = ResultsLog(model_dir,
                                  eval_dir=run_dir.IMAGE_GLOB_EVAL_DIR)
    self._extra = {"images": images, "labels_file": labels_file}

  def __call__(self, result, checkpoint):
    del checkpoint  # Never archived: not the run's validation split.
    if not self._chief:
      return
    result.update(self._extra)
    with tf.summary.create_file_writer(self._summary_dir).as_default():
      for name in METRICS:
        tf.summary.scalar(name, result[name], step=result["step"])
    self.results_log.record(result)
    logging.info("Recorded the image-glob evaluation in %s",
                 self.results_log.path)

  def close(self):
    pass
