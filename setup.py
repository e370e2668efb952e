"""plsc: large-scale face recognition on PaddlePaddle 3.x."""
from setuptools import find_packages, setup

setup(
    name="plsc",
    version="3.0.0",
    description="Large-scale face recognition (Partial FC, model-parallel margin softmax) on PaddlePaddle 3.x",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["plsc", "plsc.*"]),
    install_requires=[
        # The CPU wheel by default; GPU users install Paddle's GPU wheel first (see README).
        "paddlepaddle>=3.0",
        "numpy",
        "opencv-python-headless",
        "pyyaml",
        "tqdm",
        "visualdl",
        "scikit-learn",
        "scikit-image",
        "scipy",
        "matplotlib",
        "onnx",
        "onnxruntime",
        "paddle2onnx>=2.0",
    ],
    extras_require={
        # Flower deployment of plsc-fedtrain's server and clients (ServerApp / ClientApp).
        "federated": ["flwr>=1.42"],
        "test": ["pytest", "flwr>=1.42"],
        # plsc-import of arcface_torch .pth state dicts (its ONNX exports need no torch).
        "torch": ["torch"],
    },
    entry_points={
        "console_scripts": [
            "plsc-train=plsc.cli:train_main",
            "plsc-eval=plsc.cli:eval_main",
            "plsc-export=plsc.cli:export_main",
            "plsc-fedtrain=plsc.cli:fedtrain_main",
            "plsc-fedeval=plsc.cli:fedeval_main",
            "plsc-import=plsc.cli:import_main",
        ]
    },
)
