"""Quickstart, fully offline: adapt a frozen ViT to a new task with VPT-deep and ship a kilobyte adapter.

1. Take a small ViT "foundation model" pretrained on scikit-learn's digits (no download; built on the first
   run and cached under ``$VPT_PEFT_CACHE``, default ~/.cache/vpt_peft, so a second run skips it).
2. Freeze it and learn a shifted task (inverted, rotated digits) with a linear probe and with VPT-deep,
   using the papers' recipe (SGD, lr x batch/256, warm-up then cosine).
3. Save the VPT adapter, reload it onto a fresh copy of the backbone with PeftModel.from_pretrained,
   and check it gives the same predictions.

Run: ``python examples/quickstart.py [--quick]`` (``make demo`` runs the full demo, examples/demo.py).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model

import vpt_peft  # noqa: F401  (registers the methods with peft)
from vpt_peft import VisualPromptConfig
from vpt_peft.demo.digits import digits_task
from vpt_peft.demo.training import fresh_backbone, pretrained_digits_vit
from vpt_peft.training import evaluate, fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs (used by the test suite)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pre_epochs, epochs = (2, 2) if args.quick else (30, 25)

    backbone, folder = pretrained_digits_vit(epochs=pre_epochs)
    print(
        f"backbone: pretrained ViT, {sum(p.numel() for p in backbone.parameters()):,} parameters, "
        f"digits accuracy {evaluate(backbone, digits_task('plain')[1]):.3f}"
    )
    train, test, task = digits_task("inverted")  # a new "imaging modality": inverted, rotated digits

    rows = []
    # Base lrs (for batch 256) from the papers' grid, as the demo picked them.
    for name, config, base_lr in [
        ("linear probe", VisualPromptConfig(num_prompts=0), 10.0),
        ("VPT-deep", VisualPromptConfig(num_prompts=10, deep=True), 1.0),
    ]:
        model = get_peft_model(fresh_backbone(folder, task.num_labels), config)
        trainable, total = model.get_nb_trainable_parameters()
        start = time.process_time()
        fit(model, train, None, epochs=epochs, base_lr=base_lr, warmup_epochs=min(3, epochs - 1), desc=name)
        rows.append((name, evaluate(model, test), trainable, 100 * trainable / total, time.process_time() - start))

    print(f"\n{'method':<14}{'accuracy':>10}{'trainable':>12}{'%':>8}{'cpu s':>8}")
    for name, acc, trainable, pct, seconds in rows:
        print(f"{name:<14}{acc:>10.3f}{trainable:>12,}{pct:>8.2f}{seconds:>8.1f}")

    vpt = model.eval()  # the last one trained: VPT-deep
    with tempfile.TemporaryDirectory() as adapter:
        vpt.save_pretrained(adapter)
        size = (Path(adapter) / "adapter_model.safetensors").stat().st_size
        reloaded = PeftModel.from_pretrained(fresh_backbone(folder, task.num_labels), adapter).eval()
        with torch.no_grad():
            same = torch.equal(reloaded(pixel_values=test[0]).logits, vpt(pixel_values=test[0]).logits)
    backbone_bytes = sum(p.numel() * p.element_size() for p in backbone.parameters())
    print(
        f"\nVPT adapter: {size:,} bytes on disk ({100 * size / backbone_bytes:.1f}% of the backbone); "
        f"reloaded onto a fresh backbone: {'identical' if same else 'DIFFERENT'} logits"
    )
    if not same:
        raise SystemExit("reloaded adapter does not reproduce the trained model")


if __name__ == "__main__":
    main()
