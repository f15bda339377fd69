"""Catastrophic forgetting: measure it and mitigate it (issue 5, phase 1: the building blocks).

- ``augment``     EDA-style text augmentation of a training set (Wei & Zou 2019), seeded.
- ``replay``      mix a stated share of general / earlier-task examples into the training epoch.
- ``regularize``  L2-SP (Li et al. 2018) and EWC (Kirkpatrick et al. 2017) penalties toward earlier weights.
- ``calibration`` prompt-based classification with a causal LM and contextual calibration
                  (Zhao et al. 2021, "Calibrate Before Use").
- ``topics``      a second embedded classification task (ChatterBot questions by category) for the
                  sequential "task 1, then task 2, measure task 1 again" set-up.
"""
