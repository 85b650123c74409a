"""``vpt-peft``: train, evaluate, inspect and apply visual-prompt adapters from the command line.

``parser`` declares the arguments (the ``--method`` choices are the registered recipes), ``commands`` does the
work, ``io`` reads and writes what the CLI keeps beside an adapter.
"""

from .parser import build_parser, main

__all__ = ["build_parser", "main"]
