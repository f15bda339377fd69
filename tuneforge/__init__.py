"""tuneforge: fine-tune pre-trained transformers on your own data, with seven methods behind one interface."""
__version__ = "0.1.0"

__all__ = ["finetune", "load"]


def __getattr__(name: str):
    """Lazy top-level API so ``import tuneforge`` stays cheap: ``tuneforge.finetune(config)`` trains
    (see :func:`tuneforge.run.train`), ``tuneforge.load(run_dir)`` reloads a run."""
    if name in __all__:
        from tuneforge import run
        return run.train if name == "finetune" else run.load
    raise AttributeError(name)
