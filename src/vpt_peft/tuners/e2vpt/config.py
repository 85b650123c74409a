from __future__ import annotations

from dataclasses import dataclass, field

from ...engine.checks import check_bool, check_choice, check_count, check_fraction
from ...engine.config import PromptConfigBase

KV_INITS = ("kaiming_uniform", "trunc_normal")
PRUNE_MODES = ("remove", "zero")


@dataclass
class KVPromptConfig(PromptConfigBase):
    """E2VPT (Han et al., ICCV 2023): deep visual prompts plus learnable key-value prompts in every attention,
    with token- and segment-wise pruning of the visual prompts (see :func:`vpt_peft.prune_prompts`).

    Key-value prompts join the attention *after* the frozen K/V projections and the head split: the real
    queries attend over ``[K ; P_kv]`` and ``[V ; P_kv]``. One tensor serves as keys and values by default
    (``share_kv``, as the official code). Defaults are the released runs' (dropout 0.1 visual, 0 key-value).
    """

    deep: bool = field(default=True, metadata={"help": "E2VPT's visual prompts are VPT-deep."})
    num_kv_prompts: int = field(default=5, metadata={"help": "Key-value prompts per layer (T)."})
    kv_dropout: float = field(default=0.0, metadata={"help": "Dropout on the key copy and the value copy, separately."})
    share_kv: bool = field(default=True, metadata={"help": "One tensor for keys and values (official default)."})
    kv_deep: bool = field(
        default=True, metadata={"help": "Key-value prompts in every prompted layer, else the first only."}
    )
    kv_init: str = field(
        default="kaiming_uniform",
        metadata={"help": "'kaiming_uniform' (official: U(+-sqrt(6/(T*head_dim)))) or 'trunc_normal' (std 0.02)."},
    )
    gates: bool = field(
        default=True,
        metadata={"help": "Learnable token/segment gates on the visual prompts (needed for pruning scores)."},
    )
    num_segments: int = field(
        default=16, metadata={"help": "Segments per prompt token (R); channel c belongs to segment c mod R."}
    )
    pruned: bool = field(
        default=False, metadata={"help": "Set by prune_prompts: gates replaced by fixed binary masks."}
    )
    prune_mode: str = field(
        default="remove",
        metadata={"help": "'remove' drops pruned tokens from the sequence; 'zero' zeroes them (official)."},
    )

    def __post_init__(self) -> None:
        from peft.utils.peft_types import PeftType

        self.peft_type = PeftType.KVPROMPT
        super().__post_init__()
        check_count("num_kv_prompts", self.num_kv_prompts)
        check_count("num_segments", self.num_segments, minimum=1)
        check_choice("kv_init", self.kv_init, KV_INITS)
        check_choice("prune_mode", self.prune_mode, PRUNE_MODES)
        check_fraction("kv_dropout", self.kv_dropout, upper_inclusive=False)
        for flag in ("share_kv", "kv_deep", "gates", "pruned"):
            check_bool(flag, getattr(self, flag))

    def kv_layers(self, num_layers: int) -> list[int]:
        layers = self.prompted_layers(num_layers)
        return layers if self.kv_deep else layers[:1]
