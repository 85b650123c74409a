"""What the ``vpt-peft`` subcommands do (the argument parsing lives in :mod:`vpt_peft.cli.parser`).

The Trainer pitfalls are handled here once: the raw ``image`` column reaches the collator because
``remove_unused_columns=False`` (with ``with_transform`` the Trainer would drop it and fail with
``KeyError: 'image'``), ``label_names=["labels"]`` is explicit, accuracy is computed with numpy (no
``evaluate``), and the optimiser/scheduler are the papers' (SGD, per-step warm-up + cosine).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from .. import recipes
from ..atomic import staged_save
from ..data import ImageClassificationCollator, accuracy, image_processor_for, load_image_dataset
from .io import CLIError, read_labels, read_run_info, steps_per_epoch, write_labels

CONFIG_FLAGS = ("num_prompts", "fourier_ratio", "num_kv_prompts")
"""CLI flags that set a config field of the same name (or the recipe's alias for it)."""


def run(args: argparse.Namespace) -> None:
    {"train": train, "eval": evaluate, "predict": predict, "info": info, "convert": convert}[args.command](args)


def _peft_config(args: argparse.Namespace, labels: list[str]):
    """The recipe's preset config with the command line's overrides; flags the method has no field for are refused."""
    recipe = recipes.get_recipe(args.method)
    preset = recipe.presets(args.preset)
    fields = set(recipe.config_cls.__dataclass_fields__)
    overrides = {}
    for flag in CONFIG_FLAGS:
        value = getattr(args, flag)
        if value is None:
            continue
        name = recipe.field_aliases.get(flag, flag)
        if name not in fields:
            owners = [r.name for r in recipes.RECIPES.values() if flag in r.config_cls.__dataclass_fields__]
            raise CLIError(f"--{flag.replace('_', '-')} only applies to --method {' or '.join(owners)}")
        overrides[name] = value
    context = {"class_names": labels, "tokenizer_name_or_path": args.model}  # what a text-prompt method needs
    overrides.update({k: v for k, v in context.items() if k in fields})
    return preset.make_config(**overrides), preset.batch_size


def _load_model(path: str, labels: list[str], method: str):
    """The base model the recipe asks for: a dual encoder (classes are text prompts) or a classifier with a new head."""
    from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

    recipe = recipes.RECIPES.get(method)  # an adapter folder from an older run may not name its method
    if recipe is not None and recipe.base_model == "dual-encoder":
        config = AutoConfig.from_pretrained(path)
        if not (hasattr(config, "text_config") and hasattr(config, "vision_config")):
            raise CLIError(
                f"--method {method} needs a CLIP-like checkpoint (a text and a vision tower); {path} is a "
                f"{config.model_type!r} model. Use a vision method (e.g. --method vpt-deep) for it."
            )
        return AutoModel.from_pretrained(path)
    return AutoModelForImageClassification.from_pretrained(
        path,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
        ignore_mismatched_sizes=True,
    )


def _image_size(model) -> int:
    config = getattr(model.config, "vision_config", model.config)
    size = getattr(config, "image_size", 224)
    return size if isinstance(size, int) else size[0]


def _class_logits(logits, labels):
    """Keep the class scores only: DPT's output also carries auxiliary logits that would not stack."""
    return logits[0] if isinstance(logits, tuple) else logits


def train(args: argparse.Namespace) -> None:
    from peft import get_peft_model
    from transformers import Trainer, TrainingArguments

    train_set, eval_set, image_column, label_column, labels = load_image_dataset(
        args.dataset, args.eval_split, seed=args.seed
    )
    config, preset_batch = _peft_config(args, labels)
    batch_size = args.batch_size or preset_batch
    model = get_peft_model(_load_model(args.model, labels, args.method), config)
    processor = image_processor_for(args.model, _image_size(model))
    per_epoch = steps_per_epoch(len(train_set), batch_size)
    total_epochs = max(1, round(args.epochs))
    optimizer, scheduler, callbacks = recipes.get_recipe(args.method).training(
        model, args.lr, args.weight_decay, batch_size, per_epoch, total_epochs, args.warmup_epochs
    )
    training_args = TrainingArguments(
        output_dir=str(args.output),
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        logging_steps=args.logging_steps,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=2,
        seed=args.seed,
        report_to="none",
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        use_cpu=not torch.cuda.is_available(),
    )
    if args.max_steps > 0:  # a step budget: one checkpoint at the end, evaluated once after training
        training_args.eval_strategy, training_args.save_strategy = "no", "steps"
        training_args.save_steps = args.max_steps
    if args.resume and not any(p.name.startswith("checkpoint-") for p in args.output.glob("checkpoint-*")):
        raise CLIError(f"--resume: no checkpoint-* folder in {args.output} to resume from")
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=ImageClassificationCollator(processor, image_column, label_column),
        compute_metrics=lambda p: {"accuracy": accuracy(p.predictions, p.label_ids)},
        optimizers=(optimizer, scheduler),
        preprocess_logits_for_metrics=_class_logits,
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    metrics = trainer.evaluate()
    # One transaction: a crash leaves the previous adapter, processor and labels, or all the new ones.
    with staged_save(args.output, keep=("README.md",)) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        write_labels(
            staging,
            labels,
            {
                "base_model": args.model,
                "dataset": args.dataset,
                "method": args.method,
                "image_column": image_column,
                "label_column": label_column,
            },
        )
    print(f"eval accuracy {metrics.get('eval_accuracy', float('nan')):.4f}; adapter saved to {args.output}")


def _load_adapter(folder: Path):
    from peft import PeftConfig, PeftModel

    if not (folder / "adapter_config.json").exists():
        raise CLIError(f"{folder} is not an adapter folder (no adapter_config.json)")
    labels = read_labels(folder)
    method = read_run_info(folder).get("method", "")
    base = PeftConfig.from_pretrained(folder).base_model_name_or_path
    model = PeftModel.from_pretrained(_load_model(base, labels, method), folder).eval()
    processor = image_processor_for(str(folder), _image_size(model))
    return model, processor, labels


@torch.no_grad()
def evaluate(args: argparse.Namespace) -> None:
    model, processor, labels = _load_adapter(args.adapter)
    _, eval_set, image_column, label_column, names = load_image_dataset(args.dataset, args.split)
    if names != labels:
        raise CLIError(f"the dataset's labels {names[:5]}... differ from the adapter's {labels[:5]}...")
    collate = ImageClassificationCollator(processor, image_column, label_column)
    logits, targets = [], []
    for start in range(0, len(eval_set), args.batch_size):
        batch = collate([eval_set[i] for i in range(start, min(start + args.batch_size, len(eval_set)))])
        logits.append(model(pixel_values=batch["pixel_values"]).logits.numpy())
        targets.append(batch["labels"].numpy())
    print(
        json.dumps({"accuracy": accuracy(np.concatenate(logits), np.concatenate(targets)), "examples": len(eval_set)})
    )


@torch.no_grad()
def predict(args: argparse.Namespace) -> None:
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        raise CLIError(f"no such image file: {', '.join(missing)}")
    model, processor, labels = _load_adapter(args.adapter)
    batch = ImageClassificationCollator(processor, "image", None)([{"image": path} for path in args.images])
    probabilities = model(pixel_values=batch["pixel_values"]).logits.softmax(-1)
    k = min(max(1, args.top_k), len(labels))
    for path, row in zip(args.images, probabilities):
        top = row.topk(k)
        print(
            f"{path}\t" + "\t".join(f"{labels[i]} {p:.3f}" for p, i in zip(top.values.tolist(), top.indices.tolist()))
        )


def info(args: argparse.Namespace) -> None:
    from peft import PeftConfig
    from safetensors import safe_open

    folder = args.adapter
    weights = folder / "adapter_model.safetensors"
    if not (folder / "adapter_config.json").exists() or not weights.exists():
        raise CLIError(f"{folder} is not an adapter folder (needs adapter_config.json and adapter_model.safetensors)")
    config = PeftConfig.from_pretrained(folder)
    with safe_open(str(weights), framework="pt") as tensors:
        shapes = {name: tuple(tensors.get_slice(name).get_shape()) for name in tensors.keys()}
    parameters = sum(int(np.prod(s)) for s in shapes.values())
    fields = {
        k: getattr(config, k)
        for k in ("num_prompts", "deep", "fourier_ratio", "num_kv_prompts", "pruned")
        if hasattr(config, k)
    }
    print(f"method: {type(config).__name__} (peft_type {config.peft_type})")
    print(f"base model: {config.base_model_name_or_path}")
    print(f"backbone: {config.backbone}")
    print("config: " + ", ".join(f"{k}={v}" for k, v in fields.items()))
    print(f"tensors: {len(shapes)}, parameters: {parameters:,}, file size: {os.path.getsize(weights):,} bytes")
    for name, shape in shapes.items():
        print(f"  {name}: {list(shape)}")
    if (folder / "labels.json").exists():
        labels = read_labels(folder)
        print(f"labels ({len(labels)}): {', '.join(labels[:10])}{' ...' if len(labels) > 10 else ''}")


def convert(args: argparse.Namespace) -> None:
    """Write the official checkpoint's prompts and head as an adapter folder that ``eval``/``predict`` take."""
    from ..official import official_adapter, official_config

    if not args.checkpoint.is_file():
        raise CLIError(f"no such checkpoint file: {args.checkpoint}")
    official = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    official = official.get("model", official)  # a checkpointer's file keeps the state dict under "model"
    config = official_config(official, args.fourier_ratio)
    labels = [str(i) for i in range(config.num_labels)]
    method = "vpt-deep" if args.fourier_ratio is None else "vfpt"
    model = official_adapter(official, _load_model(args.model, labels, method), config)
    model.save_pretrained(args.output)
    write_labels(args.output, labels, {"base_model": args.model, "method": method, "source": str(args.checkpoint)})
    print(f"adapter with {config.num_labels} classes saved to {args.output}")
