"""A LLaMA-style Flax NNX model trained with Adam-mini (see README.md)."""
