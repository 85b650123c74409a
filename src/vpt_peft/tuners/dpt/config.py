"""Configuration of DPT (dual-modality prompt tuning with class-aware visual prompts) for ``CLIPModel``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...engine.checks import check_bool, check_choice, check_count, check_number, check_string_list
from ...engine.config import PROMPT_PATHS, AdapterFolderConfig


def _formats_one_name(template: str) -> bool:
    if template.count("{}") != 1:
        return False
    try:
        return template.format("\x00").count("\x00") == 1
    except (IndexError, KeyError, ValueError):
        return False


def prompt_text(class_name: str) -> str:
    """How a class name reads in its prompt: ``"_"`` as a space, as the reference code and CLIP's tokenizer see it
    (lower case, single spaces), so two names that read the same cannot become two classes with one prompt."""
    return " ".join(class_name.replace("_", " ").lower().split())


@dataclass
class DualPromptConfig(AdapterFolderConfig):
    """DPT (Xing et al., TMM 2023): CoOp text context + deep visual prompts + class-aware visual prompts (CAVPT).

    Defaults are the released runs' (ViT-B/32, 16 shots): 16 text context vectors, 10 visual prompts in
    every layer below the CAVPT layer, CAVPT in the last layer only with K = 10 tokens, alpha = 0.3,
    beta = 0.1, 30 zero-shot-guided warm-up epochs. Ablations are settings of the same config:
    ``visual_n_ctx=0, use_cavpt=False`` is CoOp, ``text_n_ctx=0, use_cavpt=False`` is VPT on CLIP (the
    classifier is the frozen template text), ``use_cavpt=False`` is VLP (CoOp + VPT-deep).
    """

    class_names: list[str] | None = field(
        default=None, metadata={"help": "The class names, in label order (required). '_' is read as a space."}
    )
    text_n_ctx: int = field(
        default=16, metadata={"help": "Learnable text context vectors (CoOp N_CTX); 0 = frozen template text."}
    )
    ctx_init: str = field(
        default="",
        metadata={"help": "Initialise the context from this phrase's token embeddings (n_ctx = its token count)."},
    )
    csc: bool = field(
        default=False, metadata={"help": "Class-specific context: one (n_ctx, d) context per class (CoOp CSC)."}
    )
    zero_shot_template: str = field(
        default="a photo of a {}.",
        metadata={
            "help": "Hand-crafted prompt of the frozen zero-shot text features (top-K selection, warm-up branch)."
        },
    )
    visual_n_ctx: int = field(
        default=10, metadata={"help": "Deep visual prompts per layer below the CAVPT layers (VPT.N_CTX)."}
    )
    use_cavpt: bool = field(
        default=True,
        metadata={"help": "Class-aware visual prompts in the top layers; False = VLP (prompts in every layer)."},
    )
    cavpt_start_layer: int | None = field(
        default=None,
        metadata={
            "help": "1-based first CAVPT layer (BOTTOMLIMIT): CAVPT in layers start..N, visual prompts in 1..start-1. "
            "None = N (last layer only, released); N+1 = no CAVPT."
        },
    )
    cavpt_num_tokens: int = field(
        default=10, metadata={"help": "Class-aware tokens per CAVPT layer: K = min(this, number of classes) (CPN)."}
    )
    cavpt_extra_kv_tokens: int = field(
        default=10, metadata={"help": "Learnable tokens appended to the CAVPT keys/values."}
    )
    cavpt_attn_dim: int = field(
        default=32, metadata={"help": "Query/key width of the single-head CAVPT cross-attention."}
    )
    aux_loss_weight: float = field(
        default=0.3, metadata={"help": "alpha: weight of the auxiliary CE on the true class's CAVPT token."}
    )
    warmup_vlp_weight: float = field(
        default=0.1, metadata={"help": "beta: weight of the DPT logits' CE during the zero-shot-guided warm-up."}
    )
    zs_warmup_epochs: int = field(
        default=30, metadata={"help": "Epochs of zero-shot-guided warm-up (PRETRAIN.C); 0 = none."}
    )
    prompt_path: str = field(
        default="auto",
        metadata={
            "help": "'kv' (= 'auto'): prompts enter attention as extra keys/values (exact); "
            "'sequence': appended tokens."
        },
    )
    backbone_eval_mode: bool = field(
        default=True, metadata={"help": "Keep frozen CLIP in eval mode while prompts train."}
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "CLIPTokenizer to load when no `tokenizer` is given; None = the base model's path."},
    )
    tokenizer: Any | None = field(
        default=None, metadata={"help": "A CLIPTokenizer used once at creation (runtime only, never saved)."}
    )
    text_length: int | None = field(
        default=None, metadata={"help": "Filled in automatically: token length the class prompts are padded to."}
    )
    target_modules: str | list[str] | None = field(
        default=None, metadata={"help": "Filled in automatically: CLIP's text and vision embeddings."}
    )
    backbone: dict | None = field(
        default=None, metadata={"help": "Filled in automatically: vision model_type and sizes, checked when loading."}
    )

    def __post_init__(self) -> None:
        from peft.utils.peft_types import PeftType

        self.peft_type = PeftType.DPT
        super().__post_init__()
        self.class_names = check_string_list("class_names", self.class_names)
        readings: dict[str, str] = {}
        for name in self.class_names:
            other = readings.setdefault(prompt_text(name), name)
            if other != name or self.class_names.count(name) > 1:
                raise ValueError(
                    f"class_names {other!r} and {name!r} give the same prompt text {prompt_text(name)!r}: "
                    "rename one (each class needs a prompt of its own)."
                )
        for name in ("text_n_ctx", "visual_n_ctx", "cavpt_extra_kv_tokens", "zs_warmup_epochs"):
            check_count(name, getattr(self, name))
        check_count("cavpt_num_tokens", self.cavpt_num_tokens, minimum=1)
        check_count("cavpt_attn_dim", self.cavpt_attn_dim, minimum=1)
        if self.cavpt_start_layer is not None:
            check_count("cavpt_start_layer", self.cavpt_start_layer, minimum=1)
        for name in ("aux_loss_weight", "warmup_vlp_weight"):
            check_number(name, getattr(self, name), minimum=0)
        for name in ("csc", "use_cavpt", "backbone_eval_mode"):
            check_bool(name, getattr(self, name))
        check_choice("prompt_path", self.prompt_path, PROMPT_PATHS)
        if not isinstance(self.zero_shot_template, str) or not _formats_one_name(self.zero_shot_template):
            raise ValueError(
                "zero_shot_template must contain '{}' exactly once, for the class name, and no other braces; "
                f"got {self.zero_shot_template!r}."
            )
        if self.ctx_init and self.text_n_ctx == 0:
            raise ValueError("ctx_init needs learnable text context; text_n_ctx=0 uses the frozen template instead.")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def cavpt_layers(self, num_layers: int) -> list[int]:
        """0-based indices of the CAVPT layers, checked against the vision tower's depth."""
        start = num_layers if self.cavpt_start_layer is None else self.cavpt_start_layer
        if start > num_layers + 1:
            raise ValueError(
                f"cavpt_start_layer={start} out of range: the vision tower has {num_layers} layers "
                f"(1..{num_layers}, or {num_layers + 1} for no CAVPT)."
            )
        return list(range(start - 1, num_layers)) if self.use_cavpt else []

    def visual_prompt_layers(self, num_layers: int) -> list[int]:
        cavpt = self.cavpt_layers(num_layers)
        return list(range(cavpt[0] if cavpt else num_layers))

    def to_dict(self) -> dict:
        """The tokenizer is a runtime helper: its ids are saved as adapter buffers, the object never is."""
        tokenizer, self.tokenizer = self.tokenizer, None
        try:
            return super().to_dict()
        finally:
            self.tokenizer = tokenizer
