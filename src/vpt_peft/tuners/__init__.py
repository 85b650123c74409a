"""One package per method, peft-style: ``config.py``, ``layer.py`` (modules owning the prompts), ``model.py``."""
