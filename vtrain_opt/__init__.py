"""vtrain_opt: predict and optimize distributed LLM training plans."""

__version__ = "0.1.0"
