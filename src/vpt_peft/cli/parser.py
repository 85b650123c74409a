"""``vpt-peft`` argument parsing and entry point: train, evaluate, inspect and apply adapters from a shell.

``train`` runs the HF ``Trainer`` (progress bars, logging, per-epoch checkpoints, ``--resume``) with the
papers' optimiser (:mod:`vpt_peft.recipes`) on a Hub dataset, a local image folder or the built-in digits,
and writes the adapter plus ``labels.json`` and the image processor, which ``eval``, ``predict`` and
``info`` read back. Errors are reported on one line, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn, Optional

import vpt_peft

from .. import recipes
from .commands import run
from .io import CLIError


def _methods() -> tuple[str, ...]:
    """The --method choices: every registered recipe (methods register their own)."""
    return recipes.recipe_names()


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a default only where there is one and the help text does not already explain it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _method(value: str) -> str:
    if value not in _methods():
        raise argparse.ArgumentTypeError(f"invalid method {value!r}; choose from {', '.join(_methods())}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="vpt-peft",
        description="Train, evaluate, inspect and apply visual-prompt adapters (VPT, VFPT, E2VPT, DPT).",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"vpt-peft {vpt_peft.__version__}")
    parser.epilog = (
        "example: vpt-peft train --model google/vit-base-patch16-224-in21k --dataset ./images "
        "--method vpt-deep --output runs/vpt; then eval/predict/info runs/vpt"
    )
    sub = parser.add_subparsers(
        dest="command", required=True, parser_class=_Parser, metavar="{train,eval,predict,info,convert}"
    )

    train = sub.add_parser(
        "train", help="adapt a frozen model to a dataset with the HF Trainer", formatter_class=_Formatter
    )
    train.add_argument("--model", required=True, help="Hub id or local folder of an image-classification model")
    train.add_argument(
        "--dataset",
        required=True,
        help="Hub id, a local image folder (class sub-folders), or 'digits[:task]' (built in, offline)",
    )
    train.add_argument("--method", type=_method, default="vpt-deep", help=f"one of {', '.join(_methods())}")
    train.add_argument("--output", required=True, type=Path, help="folder for checkpoints and the final adapter")
    train.add_argument("--preset", help="a paper task name (e.g. cifar100): prompt counts from vpt_peft.recipes")
    train.add_argument("--num-prompts", type=int, help="prompt tokens per layer (default: the preset's)")
    train.add_argument("--fourier-ratio", type=float, help="VFPT: share of Fourier prompts (default: the preset's)")
    train.add_argument("--num-kv-prompts", type=int, help="E2VPT: key-value prompts per layer (default: the preset's)")
    train.add_argument(
        "--epochs", type=float, default=recipes.EPOCHS, help=f"training epochs (the papers: {recipes.EPOCHS})"
    )
    train.add_argument(
        "--warmup-epochs",
        type=int,
        default=recipes.WARMUP_EPOCHS,
        help="linear warm-up epochs, starting at lr 0 (not dpt)",
    )
    train.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (overrides --epochs)")
    train.add_argument("--batch-size", type=int, help="per-device batch (default: the preset's, 64 or 128)")
    train.add_argument(
        "--lr",
        type=float,
        default=0.25,
        help="base lr for batch 256 (the papers search 0.05-50; dpt uses its paper's lrs)",
    )
    train.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay (not on the head bias)")
    train.add_argument("--eval-split", help="evaluation split (default: validation/val/test, else 20%% of train)")
    train.add_argument("--logging-steps", type=int, default=10, help="log the loss every N steps")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output")
    train.add_argument("--seed", type=int, default=42, help="random seed")

    evaluate = sub.add_parser(
        "eval", help="accuracy of a trained adapter on a dataset split", formatter_class=_Formatter
    )
    evaluate.add_argument("adapter", type=Path, help="folder written by 'vpt-peft train'")
    evaluate.add_argument("--dataset", required=True, help="as for train")
    evaluate.add_argument("--split", help="split to score (default: as train's evaluation split)")
    evaluate.add_argument("--batch-size", type=int, default=64, help="batch size")

    predict = sub.add_parser("predict", help="top-k labels for image files", formatter_class=_Formatter)
    predict.add_argument("adapter", type=Path, help="folder written by 'vpt-peft train'")
    predict.add_argument("images", nargs="+", type=Path, help="image files")
    predict.add_argument("--top-k", type=int, default=1, help="labels to show per image")

    info = sub.add_parser("info", help="method, base model, sizes of an adapter", formatter_class=_Formatter)
    info.add_argument("adapter", type=Path, help="an adapter folder (any vpt_peft method)")

    convert = sub.add_parser(
        "convert",
        help="an official VPT/VFPT checkpoint (prompts + head) as an adapter folder",
        formatter_class=_Formatter,
    )
    convert.add_argument("checkpoint", type=Path, help="the official code's saved model (a torch state dict)")
    convert.add_argument("--model", required=True, help="Hub id or folder of the backbone the run started from")
    convert.add_argument("--output", required=True, type=Path, help="folder for the adapter")
    convert.add_argument("--fourier-ratio", type=float, help="a VFPT checkpoint: its Fourier share (alpha)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``vpt-peft`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)

    try:
        run(args)
    except CLIError as error:
        print(f"vpt-peft: error: {error}", file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError, TypeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"vpt-peft: error: {type(error).__name__}: {first}", file=sys.stderr)
        return 1
    return 0
