"""``AutoPeftModelForImageClassification``: peft has Auto classes for text tasks only."""

from __future__ import annotations

from typing import Any

from peft import PeftConfig, PeftModel
from peft.auto import _BaseAutoPeftModel
from transformers import AutoModelForImageClassification


class AutoPeftModelForImageClassification(_BaseAutoPeftModel):
    """Load the base model named in an adapter's config, then the adapter on top of it.

    Needs ``base_model_name_or_path`` in the adapter config, i.e. a base loaded with ``from_pretrained``.
    """

    _target_class = AutoModelForImageClassification
    _target_peft_class = PeftModel

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, *args: Any, **kwargs: Any) -> PeftModel:
        config = PeftConfig.from_pretrained(pretrained_model_name_or_path, revision=kwargs.get("revision"))
        if not config.base_model_name_or_path:
            raise ValueError(
                f"The adapter at {pretrained_model_name_or_path!r} does not name its base model "
                "(base_model_name_or_path is empty: the base was built from a config, "
                "not loaded with from_pretrained). "
                "Load the base yourself and use PeftModel.from_pretrained(base, adapter_path)."
            )
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
