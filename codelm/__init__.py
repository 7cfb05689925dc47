"""codelm: the Code Llama system end to end (model, tokenizer, FIM training, generation, sandboxed evaluation)."""
__version__ = "0.1.0"


def load(path, dtype=None, device="cpu", tokenizer: bool = True):
    """Open an HF or Meta checkpoint directory: returns an object with .model, .tokenizer and .config."""
    from codelm.model.checkpoint import load as _load  # late: `import codelm` stays light (no torch)

    return _load(path, dtype=dtype, device=device, tokenizer=tokenizer)


__all__ = ["load", "__version__"]
