"""``AutoPeftModelForImageClassification``: peft has Auto classes for text tasks only."""

from __future__ import annotations

from peft import PeftModel
from peft.auto import _BaseAutoPeftModel
from transformers import AutoModelForImageClassification


class AutoPeftModelForImageClassification(_BaseAutoPeftModel):
    """Load the base model named in an adapter's config, then the adapter on top of it.

    Needs ``base_model_name_or_path`` in the adapter config, i.e. a base loaded with ``from_pretrained``.
    """

    _target_class = AutoModelForImageClassification
    _target_peft_class = PeftModel
