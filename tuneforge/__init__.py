"""tuneforge: fine-tune pre-trained transformers on your own data, with seven methods behind one interface."""
__version__ = "0.1.0"

__all__ = ["train", "load"]


def __getattr__(name: str):
    """Lazy top-level API (``tuneforge.train``, ``tuneforge.load``) so ``import tuneforge`` stays cheap."""
    if name in __all__:
        from tuneforge import run
        return getattr(run, name)
    raise AttributeError(name)
