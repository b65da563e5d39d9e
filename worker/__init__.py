"""Embedding worker: arq job handler, per-model micro-batcher, model registry. The only code that imports torch."""
