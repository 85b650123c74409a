"""Quickstart, fully offline: adapt a frozen ViT to a new task with VPT-deep and ship a kilobyte adapter.

1. Pretrain a small ViT "foundation model" on scikit-learn's digits (no download; cached in
   ~/.cache/vpt_peft/quickstart-backbone so a second run skips it).
2. Freeze it and learn a shifted task (rotated, inverted digits) with a linear probe and with VPT-deep.
3. Save the VPT adapter, reload it onto a fresh copy of the backbone with PeftModel.from_pretrained,
   and check it gives the same predictions.

Run: ``python examples/quickstart.py [--quick]`` (``make demo`` runs the full demo, examples/demo.py).
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model
from sklearn.datasets import load_digits
from tqdm.auto import tqdm
from transformers import ViTConfig, ViTForImageClassification

import vpt_peft  # noqa: F401  (registers the methods with peft)
from vpt_peft import VisualPromptConfig

CACHE = Path(os.environ.get("VPT_PEFT_CACHE", Path.home() / ".cache" / "vpt_peft")) / "quickstart-backbone"


def digits(transform=None, seed=0):
    """Digits as 3x16x16 tensors in [-1, 1], split 75/25."""
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32) / 16.0
    if transform is not None:
        x = transform(x)
    x = F.interpolate(x[:, None], size=16, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1) * 2 - 1
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(0.75 * len(y))
    return (x[order[:cut]], y[order[:cut]]), (x[order[cut:]], y[order[cut:]])


def train(model, data, epochs, lr, desc):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    x, y = data
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in tqdm(range(epochs), desc=desc, leave=False):
        for batch in torch.randperm(len(y), generator=generator).split(64):
            loss = model(pixel_values=x[batch], labels=y[batch]).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return model.eval()


@torch.no_grad()
def accuracy(model, data):
    x, y = data
    return (model(pixel_values=x).logits.argmax(-1) == y).float().mean().item()


def pretrained_backbone(epochs):
    if (CACHE / "config.json").exists():
        return ViTForImageClassification.from_pretrained(CACHE)
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=16,
        patch_size=4,
        num_labels=10,
    )
    model = train(ViTForImageClassification(config), digits()[0], epochs, 2e-3, "pretraining the backbone")
    model.save_pretrained(CACHE)
    return ViTForImageClassification.from_pretrained(CACHE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs (used by the test suite)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pre_epochs, epochs = (2, 2) if args.quick else (25, 15)

    backbone = pretrained_backbone(pre_epochs).eval()
    print(
        f"backbone: pretrained ViT, {sum(p.numel() for p in backbone.parameters()):,} parameters, "
        f"digits accuracy {accuracy(backbone, digits()[1]):.3f}"
    )

    shifted = lambda x: 1.0 - torch.rot90(x, 1, dims=(1, 2))  # noqa: E731  a new domain: rotated + inverted
    task_train, task_test = digits(shifted, seed=1)

    rows = []
    for name, config in [
        ("linear probe", VisualPromptConfig(num_prompts=0)),
        ("VPT-deep", VisualPromptConfig(num_prompts=10, deep=True)),
    ]:
        torch.manual_seed(0)
        model = get_peft_model(copy.deepcopy(backbone), config)
        trainable, total = model.get_nb_trainable_parameters()
        start = time.process_time()
        train(model, task_train, epochs, 1e-2, f"training {name}")
        rows.append(
            (name, accuracy(model, task_test), trainable, 100 * trainable / total, time.process_time() - start, model)
        )

    print(f"\n{'method':<14}{'accuracy':>10}{'trainable':>12}{'%':>8}{'cpu s':>8}")
    for name, acc, trainable, pct, seconds, _ in rows:
        print(f"{name:<14}{acc:>10.3f}{trainable:>12,}{pct:>8.2f}{seconds:>8.1f}")

    vpt = rows[-1][-1]
    with tempfile.TemporaryDirectory() as folder:
        vpt.save_pretrained(folder)
        size = os.path.getsize(os.path.join(folder, "adapter_model.safetensors"))
        reloaded = PeftModel.from_pretrained(ViTForImageClassification.from_pretrained(CACHE), folder).eval()
        same = torch.equal(reloaded(pixel_values=task_test[0]).logits, vpt(pixel_values=task_test[0]).logits)
    backbone_bytes = sum(p.numel() * p.element_size() for p in backbone.parameters())
    print(
        f"\nVPT adapter: {size:,} bytes on disk ({100 * size / backbone_bytes:.1f}% of the backbone); "
        f"reloaded onto a fresh backbone: {'identical' if same else 'DIFFERENT'} logits"
    )
    if not same:
        raise SystemExit("reloaded adapter does not reproduce the trained model")


if __name__ == "__main__":
    main()
