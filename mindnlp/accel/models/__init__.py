"""Accelerated model implementations, one file per Hugging Face model_type."""
