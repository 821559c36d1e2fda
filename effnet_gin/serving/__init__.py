"""Serving: exporting a trained model and running the exported files.

  exporter     `export`, what bin/exporter runs: restores a run's checkpoint
               (EMA weights) and writes a SavedModel that classifies encoded
               images, or hands the model to a converter.
  converters   TFLite (float32, float16, int8) and ONNX conversion of the
               inference graph, with metadata.json.
  runtimes     LiteRT and onnxruntime classifiers over the exported files,
               scoring them on the eval split.
  export_dirs  writes every export into a staging directory and moves it
               into place only once complete.

Data flows from checkpoints/ (restored weights) through model/'s inference
graph into files; it imports nothing of train/.
"""
from effnet_gin.serving.exporter import export
