"""omni_jax: JAX/Flax training stack for Baichuan-Omni (v1) and Baichuan-Omni-1.5."""

from setuptools import find_packages, setup

setup(
    name="omni_jax",
    version="0.1.0",
    description="TPU-first JAX/Flax reimplementation and training stack for Baichuan-Omni / Omni-1.5",
    python_requires=">=3.11",
    packages=find_packages(include=["omni_jax", "omni_jax.*", "launch", "launch.*", "configs", "configs.*"]),
    install_requires=[
        "jax~=0.10.2",
        "flax~=0.12.8",
        "optax~=0.2.8",
        "orbax-checkpoint~=0.12.8",
        "grain~=0.2.18",
        "tensorflow-datasets~=4.9.10",
        "importlib_resources",  # tfds needs it to resolve builder modules without TensorFlow
        "einops>=0.8",
        "ml-collections>=1.1",
        "absl-py>=2.1",
        "numpy>=2.0",
        "pillow>=10",  # image decoding in the data pipeline
        "scipy>=1.11",  # polyphase audio resampling (omni_jax/data/resampling.py)
        "soundfile>=0.12",  # FLAC (and non-16-bit WAV) decoding in the data pipeline
        "threadpoolctl>=3",  # single-threaded BLAS while the data pipeline extracts features
        "tqdm>=4.66",
        "jiwer>=3.0",  # character / word error rates of the ASR evaluation
        "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow
        "matplotlib>=3.8",  # the plots of the end-of-run evaluation report (omni_jax/tasks/eval_report.py)
    ],
    extras_require={
        # conversion to/from PyTorch checkpoints and the numerical parity tests
        "torch": ["torch==2.13.0", "transformers~=5.23.0", "safetensors>=0.5"],
        # ahead-of-time compilation for TPU topologies (launch/aot.py)
        "tpu": ["jax[tpu]~=0.10.2"],
        # the loss-curve plot of a reproducibility certificate (launch/certify.py)
        "certify": ["matplotlib>=3.8"],
        "test": ["pytest>=8", "pytest-xdist>=3", "matplotlib>=3.8", "pyflakes>=3"],
        # decoding video/audio files (mp4/webm/mkv) with FFmpeg through PyAV (omni_jax/data/video_io.py)
        "media": ["av>=14"],
    },
    entry_points={
        "console_scripts": [
            "omni-train=launch.train:main",
        ]
    },
)
