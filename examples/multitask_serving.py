"""Multi-task serving, fully offline: one frozen ViT, three prompt adapters, one mixed batch.

1. Take the demo's small ViT pretrained on scikit-learn digits (built and cached on first use).
2. Train three task adapters on the frozen backbone and save them (kilobytes each):
   ``digits`` (the 10 digits), ``rotated`` (inverted + rotated digits, 10 classes) and ``parity``
   (even/odd, its own 2-class head). They use different prompt counts, so the batch needs padding.
3. Load all three onto one fresh copy of the backbone and serve a single batch that mixes samples of the
   three tasks and of the base model (``"__base__"``): ``model(pixel_values, adapter_names=[...])``.
4. Print each task's accuracy from the mixed batch, check that it predicts exactly what each task's
   samples predict as a batch of their own, and the memory saved against three fine-tuned models.

Run: ``python examples/multitask_serving.py [--quick]``.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model
from transformers import ViTForImageClassification

import vpt_peft  # noqa: F401  (registers the methods with peft)
from vpt_peft import BASE_ADAPTER, VisualPromptConfig
from vpt_peft.demo.digits import digits_task
from vpt_peft.demo.training import pretrained_digits_vit
from vpt_peft.training import fit


def tasks() -> dict[str, tuple[VisualPromptConfig, tuple, tuple]]:
    """name -> (adapter config, train split, test split)."""
    digits_train, digits_test, _ = digits_task("plain")
    rot_train, rot_test, _ = digits_task("inverted")
    parity = lambda split: (split[0], split[1] % 2)  # noqa: E731
    return {
        "digits": (VisualPromptConfig(num_prompts=5, deep=True), digits_train, digits_test),
        "rotated": (VisualPromptConfig(num_prompts=10, deep=True), rot_train, rot_test),
        "parity": (VisualPromptConfig(num_prompts=4, num_labels=2), parity(digits_train), parity(digits_test)),
    }


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs (used by the test suite)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pre_epochs, epochs = (4, 4) if args.quick else (30, 15)
    backbone, cache = pretrained_digits_vit(epochs=pre_epochs)
    data = tasks()

    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        for name, (config, task_train, _) in data.items():
            torch.manual_seed(0)
            model = get_peft_model(copy.deepcopy(backbone), config, adapter_name=name)
            fit(model, task_train, None, epochs=epochs, base_lr=1.0, warmup_epochs=1, desc=f"training {name}")
            model.save_pretrained(root)  # -> root/<name>/
        adapter_bytes = folder_bytes(root)

        names = list(data)
        served = PeftModel.from_pretrained(
            ViTForImageClassification.from_pretrained(cache), root / names[0], adapter_name=names[0]
        )
        for name in names[1:]:
            served.load_adapter(root / name, adapter_name=name)
        served.eval()

    # One batch: every task's test samples plus the original digits for the base model, shuffled together.
    parts = [(name, *data[name][2]) for name in names] + [(BASE_ADAPTER, *data["digits"][2])]
    pixels = torch.cat([x for _, x, _ in parts])
    labels = torch.cat([y for _, _, y in parts])
    adapter_names = [name for name, x, _ in parts for _ in range(len(x))]
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    pixels, labels, adapter_names = pixels[order], labels[order], [adapter_names[i] for i in order]

    with torch.no_grad():
        logits = served(pixel_values=pixels, adapter_names=adapter_names).logits
    predictions = logits.argmax(-1)  # narrower heads are padded with -inf: argmax needs no cutting
    print(f"mixed batch of {len(labels)} samples, {len(parts)} tasks, logits {tuple(logits.shape)}\n")
    print(f"{'task':<12}{'samples':>9}{'accuracy':>10}{'own batch':>11}")
    identical = True
    for name, _, _ in parts:
        rows = torch.tensor([i for i, n in enumerate(adapter_names) if n == name])
        with torch.no_grad():
            if name == BASE_ADAPTER:
                with served.disable_adapter():
                    alone = served(pixel_values=pixels[rows]).logits
            else:
                served.set_adapter(name)
                alone = served(pixel_values=pixels[rows]).logits
        # Equal to float rounding: a row's bits depend on its batch position and the CPU's kernels.
        same = torch.allclose(logits[rows, : alone.shape[1]], alone, rtol=1e-5, atol=1e-5)
        identical &= same
        acc = (predictions[rows] == labels[rows]).float().mean().item()
        print(f"{name:<12}{len(rows):>9}{acc:>10.3f}{'equal' if same else 'DIFFERENT':>11}")

    model_bytes = sum(p.numel() * p.element_size() for p in backbone.parameters())
    fine_tuned = len(names) * model_bytes
    shared = model_bytes + adapter_bytes
    print(
        f"\nthree fully fine-tuned models: {fine_tuned:,} bytes; one backbone + three adapters: {shared:,} bytes "
        f"(adapters {adapter_bytes:,} bytes); memory saved: {fine_tuned - shared:,} bytes "
        f"({100 * (1 - shared / fine_tuned):.1f}%)"
    )
    if not identical:
        raise SystemExit("the mixed batch does not reproduce each task's own predictions")
    print("mixed batch logits equal (to float rounding) to each task served alone")


if __name__ == "__main__":
    main()
