"""r2g: chest X-ray report generation with a frozen LLM (R2GenGPT), trained with DeepSpeed."""

__version__ = "0.1.0"
