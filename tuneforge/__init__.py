"""tuneforge: fine-tune pre-trained transformers on your own data, with nine methods behind one interface.

Methods: full, freeze, lora, adapter (Houlsby/Pfeiffer bottleneck adapters), prompt, p-tuning, prefix, ia3 and
bitfit (``tuneforge.methods.registry``). Tasks: classification, causal_lm (instruction pairs, chat, plain
text), token_classification (named entities) and seq2seq (input -> output pairs for encoder-decoders). ``tuneforge.finetune(config)`` trains (see
:func:`tuneforge.run.train`); ``tuneforge.load(run_dir)`` reloads a run to predict, evaluate, generate or merge.
"""
__version__ = "0.1.0"

__all__ = ["finetune", "load"]


def __getattr__(name: str):
    """Lazy top-level API so ``import tuneforge`` stays cheap: ``tuneforge.finetune(config)`` trains
    (see :func:`tuneforge.run.train`), ``tuneforge.load(run_dir)`` reloads a run."""
    if name in __all__:
        from tuneforge import run
        return run.train if name == "finetune" else run.load
    raise AttributeError(name)
