"""Fine-tuning methods: one small module per method behind one interface.

Each ``tuneforge/methods/<name>.py`` defines

* ``Config``: a dataclass of the method's settings (one comment per field);
* ``apply(model, config) -> model``: inject/wrap modules in place and leave
  ``requires_grad=True`` on exactly the method's parameters (everything else frozen);
* optionally ``merge(model)`` / ``unmerge(model)`` (fold trained weights into the base),
  ``fold(model)`` (turn training-only reparameterisations into plain parameters before saving),
  and ``TRAIN_DEFAULTS`` (a dict of recommended ``train.*`` settings, e.g. a higher learning rate).

Nothing outside this package knows method names: use :mod:`tuneforge.methods.registry`.
"""
