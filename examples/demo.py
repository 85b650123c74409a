"""The vpt_peft demo, fully offline: one frozen "foundation model", a mini VTAB, every method, the papers' protocol.

1. Pretrain a small ViT on scikit-learn's digits (cached under $VPT_PEFT_CACHE, default ~/.cache/vpt_peft,
   so a second run skips it).
2. Freeze it and adapt it to shifted tasks, one per VTAB group (noisy: natural; inverted: specialized;
   orientation and loops: structured), with a linear probe, full fine-tuning, VPT shallow and deep, VFPT and
   E2VPT (scored, pruned, rewound, retrained), through the same sweep machinery as ``vpt-peft sweep``: a small
   lr grid on train -> val, the papers' selection rule, retraining on train+val for two seeds, test top-1.
3. Reload every final adapter onto a fresh backbone and check it reproduces its recorded test accuracy.
4. Print the table and the papers' qualitative claims next to what this run measured; write the sweep's
   trials.csv, report.md and plots, the adapters and one attention map per task to --output.

Run: ``make demo`` (or ``python examples/demo.py [--quick] [--output DIR]``). A rerun into the same --output
resumes: finished trials are not trained again.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from peft import PeftModel

from vpt_peft.demo.benchmark import DOWNSTREAM_TASKS
from vpt_peft.demo.digits import DIGIT_TASKS, digits_task
from vpt_peft.demo.suite import GRIDS, adapter_folder, check_reloads, demo_entries, format_table
from vpt_peft.demo.training import pretrained_digits_vit
from vpt_peft.demo.viz import plot_accuracy_vs_params, plot_training_curves, save_attention_maps
from vpt_peft.reproduce.report import claim_lines, task_results, write_report
from vpt_peft.reproduce.sweep import run_sweep
from vpt_peft.reproduce.trial import SweepSettings, base_model, task_data
from vpt_peft.training import evaluate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 tasks, 2 epochs, tiny splits, one seed (smoke run)")
    parser.add_argument("--output", type=Path, default=Path("outputs/demo"), help="where the sweep, plots go")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # 2 cores: one thread avoids oversubscription with the data side and is as fast
    started = time.perf_counter()
    if args.quick:
        benchmark, tasks, pre_epochs, epochs, warmup, seeds = "digits-small", DOWNSTREAM_TASKS[::3], 2, 2, 1, (1,)
    else:
        benchmark, tasks, pre_epochs, epochs, warmup, seeds = "digits", DOWNSTREAM_TASKS, 30, 10, 2, (1, 2)
    out = args.output

    backbone, backbone_dir = pretrained_digits_vit(epochs=pre_epochs)
    settings = SweepSettings(model=str(backbone_dir), benchmark=benchmark, output=out, load={"image_size": 16})
    plain_acc = evaluate(backbone, digits_task("plain")[1])
    print(
        f"foundation model: ViT, {sum(p.numel() for p in backbone.parameters()):,} parameters, "
        f"plain-digits accuracy {plain_acc:.3f} (cached in {backbone_dir})"
    )

    entries = demo_entries(tasks, epochs=epochs, warmup_epochs=warmup, seeds=seeds)
    rows = run_sweep(settings, entries, log=lambda line: print(line) if line.startswith("[") else None)
    order = {method: i for i, method in enumerate(GRIDS)}
    results = sorted(task_results(rows), key=lambda r: (tasks.index(r.task), order[r.method]))
    print("\n" + format_table(results))
    print("\nThe papers' claims, checked on this run's group means:")
    print("\n".join(f"- {line}" for line in claim_lines(results)))
    report, plots = write_report(rows, out)
    checked = check_reloads(rows, settings)

    plot_accuracy_vs_params(
        [{"method": r.method, "trainable_pct": r.trainable_pct, "accuracy": r.mean} for r in results],
        out / "accuracy_vs_trainable.png",
    )
    curves: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        if row["stage"] == "final" and row["seed"] == seeds[0]:
            curves.setdefault(row["task"], {})[row["method"]] = row["losses"]
    plot_training_curves(curves, out / "training_curves.png", ylabel="training loss (final run)")
    (out / "attention").mkdir(parents=True, exist_ok=True)
    for task in tasks:
        data = task_data(settings, task, seeds[0])
        model = PeftModel.from_pretrained(
            base_model(settings.model, data, "image-classification"), adapter_folder(settings, rows, task, "vpt-deep")
        )
        test = data.splits["test"]
        save_attention_maps(
            model,
            test.pixel_values[:1],
            out / "attention" / f"{task}-vpt-deep.png",
            title=f"{task} ({DIGIT_TASKS[task].description}): VPT deep, label {int(test.labels[0])}",
        )

    print(f"\nEvery final adapter was reloaded onto a fresh backbone and reproduced its test accuracy ({checked}).")
    print(
        f"Wrote trials.csv, {report.name}, {', '.join(p.name for p in plots)}, accuracy_vs_trainable.png, "
        f"training_curves.png, attention/*.png and adapters/ to {out.resolve()} in "
        f"{time.perf_counter() - started:.0f} s."
    )
    print("Tasks:", "; ".join(f"{t} ({DIGIT_TASKS[t].group}): {DIGIT_TASKS[t].description}" for t in tasks))
    print("(Quick mode: 2 epochs on tiny splits, one seed; the numbers mean nothing.)" if args.quick else "")


if __name__ == "__main__":
    main()
