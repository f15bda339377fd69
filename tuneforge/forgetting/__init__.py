"""Catastrophic forgetting inside a run: measure it and mitigate it.

- ``probes``      what the model knew, measured before and after training (reference perplexity, task 1);
- ``replay``      mix a stated share of general / earlier-task examples into the training epoch;
- ``regularize``  L2-SP (Li et al. 2018) and EWC (Kirkpatrick et al. 2017) penalties toward earlier weights;
- ``pipeline``    the run-level glue: which probe, replay mixing, which regulariser.

Augmentation (``tuneforge.data.augment``) and prompt calibration (``tuneforge.prompting``) are remedies too;
they live with the data and with prompting.
"""
