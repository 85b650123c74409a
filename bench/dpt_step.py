"""DPT train-step cost on CLIP: CoOp, VPT-CLIP and DPT against a plain CLIP forward/backward, as ratios.

All variants share one random CLIP (same seed) and one batch, and are timed round-robin in one process
(bench/common.py). The plain CLIP step is the zero-shot classifier (images x all class prompts,
``logits_per_image``) with a cross-entropy loss and every weight trainable: the same text + vision work
without prompts. DPT adds a no-grad unprompted vision pass (top-K selection), the CAVPT generator and,
during warm-up, the two zero-shot branches; its class prompts must be encoded once per step however
large the batch, which the script asserts by counting text-tower rows.

The default is a small CLIP so that ``--quick`` finishes in well under a minute on one CPU thread;
``--vit-b32`` uses the ViT-B/32 sizes of ``openai/clip-vit-base-patch32`` (random weights, no download).
The tokenizer is the tests' tiny word-level CLIPTokenizer (speed does not depend on the vocabulary).

    python bench/dpt_step.py [--quick] [--vit-b32] [--batch N] [--steps N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import copy
import pathlib
import sys
import tempfile

import torch
import torch.nn.functional as F
from peft import get_peft_model
from torch import nn
from transformers import CLIPConfig, CLIPModel

from common import (
    Variant,
    describe_environment,
    markdown_table,
    mib,
    paired_ratios,
    setup,
    step_memory,
    time_round_robin,
)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from tests.clip_helpers import CLASSES, tiny_tokenizer

from vpt_peft import DualPromptConfig

SMALL = dict(
    text_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4),
    vision_config=dict(
        hidden_size=192, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4, image_size=96, patch_size=16
    ),
    projection_dim=128,
)


class PlainClip(nn.Module):
    """CLIP as a zero-shot classifier with a CE loss: the unprompted forward/backward DPT is compared with."""

    def __init__(self, clip: CLIPModel, class_ids: torch.Tensor) -> None:
        super().__init__()
        self.clip, self.class_ids = clip, class_ids

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor):
        logits = self.clip(input_ids=self.class_ids, pixel_values=pixel_values).logits_per_image
        return type("Out", (), {"loss": F.cross_entropy(logits, labels)})


def build(args, tokenizer) -> tuple[CLIPModel, dict]:
    ids = dict(
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    sizes = {} if args.vit_b32 else SMALL
    config = CLIPConfig(
        text_config={**sizes.get("text_config", {}), **ids},
        vision_config=sizes.get("vision_config"),
        **({"projection_dim": sizes["projection_dim"]} if sizes else {}),
    )
    torch.manual_seed(0)
    clip = CLIPModel(config).to(args.device).eval()
    clip.set_attn_implementation("sdpa")
    return clip, config.vision_config.to_dict()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 warm-up + 3 timed rounds")
    parser.add_argument("--vit-b32", action="store_true", help="ViT-B/32 sizes (slow on CPU)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    setup(args.device)
    steps, warmup = (3, 2) if args.quick else (args.steps, 3)
    tokenizer = tiny_tokenizer(pathlib.Path(tempfile.mkdtemp()))
    clip, vision = build(args, tokenizer)
    generator = torch.Generator().manual_seed(0)
    size = vision["image_size"]
    pixels = torch.randn(args.batch, 3, size, size, generator=generator).to(args.device)
    labels = torch.randint(0, len(CLASSES), (args.batch,), generator=generator).to(args.device)
    configs = {
        "CoOp": dict(visual_n_ctx=0, use_cavpt=False),
        "VPT-CLIP": dict(text_n_ctx=0, use_cavpt=False),
        "DPT (warm-up)": {},
    }
    variants, text_rows = [], []
    for name, overrides in configs.items():
        model = get_peft_model(
            copy.deepcopy(clip), DualPromptConfig(class_names=CLASSES, tokenizer=tokenizer, **overrides)
        )
        variants.append(Variant(name, model.train(), pixels, labels))
    class_ids = (
        variants[-1].model.base_model.model.text_model.embeddings.prompt_adapter.dpt_text["default"].template_token_ids
    )
    plain = copy.deepcopy(clip).train()
    variants.insert(0, Variant("CLIP fwd/bwd", PlainClip(plain, class_ids), pixels, labels))

    dpt = variants[-1].model.base_model.model
    dpt.text_model.register_forward_pre_hook(
        lambda m, a, kw: text_rows.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    variants[-1].step()  # caches the template features
    text_rows.clear()
    variants[-1].step()
    assert text_rows == [len(CLASSES), 1], f"class prompts must be encoded once per step, saw text batches {text_rows}"

    print(describe_environment(args.device))
    print(
        f"CLIP {'ViT-B/32' if args.vit_b32 else 'small'}, batch {args.batch}, {len(CLASSES)} classes, "
        f"{steps} timed rounds"
    )
    timings = time_round_robin(variants, steps, warmup, args.device)
    memory = {v.name: step_memory(v, args.device) for v in variants}
    base = variants[0].name
    rows = []
    for variant in variants:
        wall, cpu = paired_ratios(timings[variant.name], timings[base])
        rows.append(
            (
                variant.name,
                f"{timings[variant.name].median_wall * 1e3:.1f}",
                f"{wall:.2f}x",
                f"{cpu:.2f}x",
                mib(memory[variant.name].total),
                f"{memory[variant.name].total / memory[base].total:.2f}x",
            )
        )
    print(markdown_table(["variant", "step ms", "wall vs CLIP", "CPU vs CLIP", "step MiB", "memory vs CLIP"], rows))


if __name__ == "__main__":
    main()
