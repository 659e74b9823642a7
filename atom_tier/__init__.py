"""atom-tier: vLLM on AMD Instinct GPUs, fast with no hand tuning."""

__version__ = "0.1.0"
