"""What differs between the transformers releases vpt_peft supports, apart from the backbone table's layouts.

Each answer is read from the installed package (whether an attribute exists), never from its version number,
so a release that backports or renames something is handled by what it actually has.
"""

from __future__ import annotations

from transformers import PreTrainedModel


def checkpointing_enable_call(use_reentrant: bool) -> str:
    """The call that turns on activation checkpointing in the installed transformers, for messages to users.

    transformers 5.23 renamed ``gradient_checkpointing_enable`` to ``activation_checkpointing_enable`` and made
    the old name warn; telling users to call a deprecated method would send them into that warning.
    """
    if hasattr(PreTrainedModel, "activation_checkpointing_enable"):
        return f"activation_checkpointing_enable(activation_checkpointing_kwargs={{'use_reentrant': {use_reentrant}}})"
    return f"gradient_checkpointing_enable(gradient_checkpointing_kwargs={{'use_reentrant': {use_reentrant}}})"
