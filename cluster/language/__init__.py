"""Prompts in any language: detection (`detect`), which models need a translation (`needs`), and the
translator stage (`stage`, a Ray actor loaded once and kept warm like the model replicas)."""
