"""Classification with a causal LM from a prompt, no training: zero/few-shot prompts and contextual
calibration (Zhao et al. 2021, "Calibrate Before Use").

- ``calibration``  scoring label words after a prompt; the calibration itself;
- ``classify``     a data set's test split classified from a prompt (``tuneforge calibrate``).
"""
