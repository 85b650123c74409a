"""Fields shared by every visual-prompt method's config."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from peft.config import PeftConfig

from .checks import check_bool, check_choice, check_count, check_fraction, check_index_list

PROMPT_INITS = ("xavier_patch", "normal", "zeros")
PROMPT_PATHS = ("auto", "kv", "sequence")
KV_ONLY = "kv_only"
"""Windowed backbones only: every prompted block reads its prompts as keys/values and nothing else (no prompt
tokens, nothing pooled). Not the official function; what vpt_peft computed on Swin before it followed it."""
HEAD_INITS = ("model", "vpt")
PROMPT_INIT_STD = 0.02
"""Standard deviation of every normal prompt init in the reference code (VPT 'normal', CoOp context, CAVPT, E2VPT
'trunc_normal'): one constant so the methods cannot drift apart."""


LOADING_MARK = "_vpt_peft_loading"
"""Set on a config read from an adapter folder: the tuner knows the adapter it creates awaits that folder's weights."""

WEIGHTS_FILE = "adapter_model.safetensors"


def check_adapter_folder(folder: Path) -> None:
    """Refuse, before anything is built, a local adapter folder that cannot hold a prompt adapter's weights."""
    if (folder / WEIGHTS_FILE).is_file():
        return
    if (folder / "adapter_model.bin").is_file():
        raise ValueError(
            f"{folder} holds pickle weights (adapter_model.bin). vpt_peft loads prompt adapters from safetensors only "
            "(a pickle file can run code when loaded): save the adapter again with save_pretrained, or convert it "
            "with safetensors.torch.save_file(torch.load(path, weights_only=True), 'adapter_model.safetensors')."
        )
    raise FileNotFoundError(
        f"{folder} has no {WEIGHTS_FILE}: the adapter folder is incomplete (an interrupted save, or only the config "
        "was copied). Point at the folder save_pretrained wrote."
    )


class AdapterFolderConfig(PeftConfig):
    """A config that checks the folder it is read from (weights present, safetensors only) before peft loads it."""

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str, subfolder: Optional[str] = None, **kwargs: Any
    ) -> AdapterFolderConfig:
        folder = Path(pretrained_model_name_or_path, subfolder or "")
        if folder.is_dir():
            check_adapter_folder(folder)
        config = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        config.__dict__[LOADING_MARK] = True
        return config


@dataclass
class PromptConfigBase(AdapterFolderConfig):
    """Visual prompts for a frozen vision transformer (VPT, Jia et al., ECCV 2022), shared fields.

    Defaults are the official code's, with the released runs' prompt dropout (0.1 for deep, 0 for shallow).
    """

    num_prompts: int = field(default=5, metadata={"help": "Prompt tokens per prompted layer (p)."})
    deep: bool = field(
        default=False, metadata={"help": "Prompts at every prompted layer (VPT-deep) or only the first."}
    )
    prompt_layers: Optional[list[int]] = field(
        default=None, metadata={"help": "Deep mode: indices of the prompted layers (default: all)."}
    )
    prompt_dropout: Optional[float] = field(
        default=None, metadata={"help": "Dropout on the batch-expanded prompts; None = 0.1 deep, 0.0 shallow."}
    )
    prompt_init: str = field(
        default="xavier_patch",
        metadata={"help": "'xavier_patch' (official: U(+-sqrt(6/(C*ph*pw + d)))), 'normal' (N(0, 0.02)), 'zeros'."},
    )
    prompt_project_dim: int = field(
        default=-1, metadata={"help": "If > 0, prompts live in this dimension and one shared Linear maps them to d."}
    )
    prompt_path: str = field(
        default="auto",
        metadata={
            "help": "Deep prompts: 'kv' feeds them to attention as extra keys/values (exact, faster), 'sequence' "
            "runs them through the blocks (attention maps with prompt rows), 'auto' = 'kv' where exact. Swin: "
            "'kv' and 'auto' read all but the last block's prompts as keys/values; 'kv_only' (Swin only, not the "
            "official function) reads every block's prompts as keys/values only and never pools them."
        },
    )
    head_init: str = field(
        default="model",
        metadata={"help": "'model' keeps the head's own init; 'vpt' = Kaiming fan_out weights, bias -log(99)."},
    )
    backbone_eval_mode: bool = field(
        default=True, metadata={"help": "Keep the frozen backbone in eval mode (no dropout) while prompts train."}
    )
    target_modules: Optional[Union[str, list[str]]] = field(
        default=None, metadata={"help": "Filled in automatically: the module that hosts the prompts."}
    )
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "Trained and saved with the prompts; None = the model's head, auto-detected."}
    )
    num_labels: Optional[int] = field(
        default=None,
        metadata={"help": "Classes of this adapter's own head (a new Linear); None = a copy of the model's head."},
    )
    backbone: Optional[dict] = field(
        default=None, metadata={"help": "Filled in automatically: model_type and sizes, checked when loading."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_count("num_prompts", self.num_prompts)
        if self.num_labels is not None:
            check_count("num_labels", self.num_labels, minimum=1)
        if self.prompt_dropout is not None:
            check_fraction("prompt_dropout", self.prompt_dropout, upper_inclusive=False)
        check_choice("prompt_init", self.prompt_init, PROMPT_INITS)
        check_choice("prompt_path", self.prompt_path, (*PROMPT_PATHS, KV_ONLY))
        check_choice("head_init", self.head_init, HEAD_INITS)
        check_count("prompt_project_dim", self.prompt_project_dim, minimum=-1)
        for flag in ("deep", "backbone_eval_mode"):
            check_bool(flag, getattr(self, flag))
        if self.prompt_path == "kv" and not self.deep:
            raise ValueError(
                "prompt_path='kv' applies to deep prompts (shallow prompts flow on through every layer); set deep=True."
            )
        if self.prompt_layers is not None:
            if not self.deep:
                raise ValueError("prompt_layers only applies to deep prompts; set deep=True or drop prompt_layers.")
            self.prompt_layers = check_index_list("prompt_layers", self.prompt_layers)

    @property
    def effective_prompt_dropout(self) -> float:
        if self.prompt_dropout is not None:
            return self.prompt_dropout
        return 0.1 if self.deep else 0.0

    def prompted_layers(self, num_layers: int) -> list[int]:
        """Indices of the layers that receive their own prompts, checked against the backbone's depth."""
        if not self.deep:
            return [0]
        layers = self.prompt_layers if self.prompt_layers is not None else list(range(num_layers))
        if layers[-1] >= num_layers:
            raise ValueError(
                f"prompt_layers {layers} out of range: the backbone has {num_layers} layers (0..{num_layers - 1})."
            )
        return list(layers)
