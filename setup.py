"""Packaging for effnet_gin.

The top-level `gin_configs/` directory is shipped inside the package as
`effnet_gin.gin_configs`, so `--gin_file=b0_tpu.gin` resolves both from a
checkout and after `pip install .`.
"""
import glob

import setuptools

TPU_REQUIREMENTS = ["google-api-python-client>=2,<3", "oauth2client>=4.1,<5"]

with open("README.md", encoding="utf-8") as readme:
  LONG_DESCRIPTION = readme.read()

# LiteRT runs .tflite models (with XNNPACK); TensorFlow's converter writes
# them. tf2onnx converts to ONNX (tested with TF 2.21, numpy 2, protobuf 7)
# and onnxruntime runs the result.
LITE = ["ai-edge-litert>=2.0,<3"]
ONNX = ["tf2onnx>=1.17,<2", "onnx>=1.17,<2", "onnxruntime>=1.20,<2"]

setuptools.setup(
    name="effnet_gin",
    version="0.2.0",
    description=("Gin-configured TensorFlow 2 trainer for EfficientNet on "
                 "Cloud TPU, GPU and CPU."),
    long_description=LONG_DESCRIPTION,
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["effnet_gin", "effnet_gin.*"]) +
    ["effnet_gin.gin_configs"],
    package_dir={"effnet_gin.gin_configs": "gin_configs"},
    package_data={"effnet_gin.gin_configs": ["*.gin"]},
    scripts=sorted(path for path in glob.glob("bin/*")
                   if not path.endswith((".pyc", "__pycache__"))),
    install_requires=[
        "tensorflow>=2.20,<2.22",
        # tf.summary writes through TensorBoard, which TF 2.21 no longer
        # installs itself.
        "tensorboard>=2.20,<2.22",
        "gin-config>=0.5,<0.6",
        "tensorflow-datasets>=4.9,<5",
        "absl-py>=2.0,<3",
        # Keras weights files are read by layer name (model/weight_sources.py).
        "h5py>=3,<4",
        "google-cloud-bigtable>=2.20,<3",
        # bin/imagenet_to_tfrecords' progress bar (tensorflow-datasets
        # installs it too).
        "tqdm>=4,<5",
    ],
    extras_require={
        # Exported models' runtimes and converters (bin/exporter --format,
        # bin/evaluator --tflite/--onnx, bin/predict --tflite/--onnx).
        "lite":
            LITE,
        "onnx":
            ONNX,
        # What TensorFlow's TPUClusterResolver needs to find a TPU Node by
        # name (--tpu=NAME) through the Cloud TPU API. The cloud-tpu-client
        # package its error message names pins google-api-python-client
        # 1.8, which would downgrade protobuf below TensorFlow's; TensorFlow
        # falls back to its own client, which needs only these two.
        "tpu":
            TPU_REQUIREMENTS,
        # The TPU requirements too, so the resolver's path is tested;
        # pytest-xdist runs the suite on both cores (README's command).
        # yapf is pinned: tests/test_format.py checks the tree against its
        # output, which changes between releases.
        "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4", "yapf==0.43.0"] +
                LITE + ONNX + TPU_REQUIREMENTS,
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
