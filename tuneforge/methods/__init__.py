"""Fine-tuning methods: one small module per method behind one interface.

Each ``tuneforge/methods/<name>.py`` defines

* ``Config``: a dataclass of the method's settings (one comment per field);
* ``apply(model, config) -> model``: inject/wrap modules in place. It is called only through
  :func:`registry.apply`, which first freezes every parameter but the heads trained in full (a method leaves
  those alone), so a method only sets ``requires_grad=True`` on what it adds or selects (new modules and
  ``nn.Parameter``s train by default; ``full`` unfreezes everything, ``freeze``/``bitfit`` their selection);
  what trains is then exactly the method's parameters (plus the heads);
* optionally ``merge(model)`` (fold the trained weights into a plain Hugging Face model; defined by every
  method whose run can be saved as one), ``fold(model)`` (turn training-only reparameterisations into plain
  parameters before saving), ``training(model, sample, bf16)`` (a context manager: the method's faster paths while
  the loop trains), ``to_peft(model, config, task_type, modules_to_save)`` (the adapter in PEFT's
  file format: config dict + tensors) and ``TRAIN_DEFAULTS`` (a dict of recommended ``train.*`` settings,
  e.g. a higher learning rate: a value, a task -> value mapping, or a function of the model's width and depth).

Shared helpers: :mod:`.layers` (transformer blocks, linear/norm layers, module replacement),
:mod:`.virtual_tokens` (prompt/prefix mechanics), :mod:`.peft_format` (PEFT file layout); LoRA's layer and its
stacked groups live beside it (:mod:`.lora_layer`, :mod:`.lora_stack`).
Nothing outside this package knows method names: use :mod:`tuneforge.methods.registry`.
"""
