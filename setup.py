"""Packaging for effnet_gin.

The top-level `gin_configs/` directory is shipped inside the package as
`effnet_gin.gin_configs`, so `--gin_file=b0_tpu.gin` resolves both from a
checkout and after `pip install .`.
"""
import glob

import setuptools

with open("README.md", encoding="utf-8") as readme:
  LONG_DESCRIPTION = readme.read()

setuptools.setup(
    name="effnet_gin",
    version="0.1.0",
    description=("Gin-configured TensorFlow 2 trainer for EfficientNet on "
                 "Cloud TPU, GPU and CPU."),
    long_description=LONG_DESCRIPTION,
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["effnet_gin", "effnet_gin.*"])
    + ["effnet_gin.gin_configs"],
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
    ],
    extras_require={
        "test": ["pytest>=8,<10"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
