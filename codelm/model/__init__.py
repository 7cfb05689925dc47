"""The Llama 2 / Code Llama model: config, network, position encodings, checkpoints."""
from codelm.model.config import PRESETS, ModelConfig
from codelm.model.llama import KVCache, Transformer

__all__ = ["ModelConfig", "PRESETS", "Transformer", "KVCache"]
