"""Tables and the plot of bench/peers.py, from its results dict (also what ``--json`` writes).

Cost bounds for inference, in multiply-accumulates per image per block (N tokens including [CLS], width d,
MLP width I, p prompt tokens, batch B); patch embedding and head are left out (under 1 % of ViT-B):

* base: ``N (4 d^2 + 2 d I) + 2 N^2 d`` (q, k, v, out projections, MLP, then scores and weighted sum);
* prompts in the sequence (VPT-shallow, the in-sequence path): the same with ``N + p`` tokens. The
  token-count bound ``(N + p) / N`` leaves out the quadratic attention term, the FLOP model keeps it;
* key/value prompts (the fast path, E2VPT): ``N`` queries over ``N + p`` keys, plus the prompts' own
  key/value projections ``2 d^2 p``, computed once per batch at inference (so divided by B);
* LoRA r on query and value, unmerged: ``2 * 2 d r`` more per token.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from common import markdown_table

MIB = 2**20


def _ratios(row: dict, reference: dict, key: str) -> list[float]:
    return [a / b for a, b in zip(row[key], reference[key])]


def _spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def _params(count: int) -> str:
    return f"{count / 1e6:.2f} M" if count >= 1e5 else f"{count / 1e3:.1f} k"


def _train_row(name: str, row: dict, full: dict) -> tuple[str, ...]:
    """A method's cells against the full fine-tuning run of the same process."""
    cpu, wall = _ratios(row, full, "cpu"), _ratios(row, full, "wall")
    return (
        name,
        _params(row["trainable"]),
        f"{statistics.median(row['cpu']):.2f}",
        f"{statistics.median(cpu):.3f}",
        _spread(cpu),
        f"{statistics.median(wall):.2f}",
        f"{row['memory'] / MIB:,.0f}",
        f"{row['memory'] / full['memory']:.2f}",
    )


def train_table(results: dict) -> str:
    """One row per method: CPU time and memory against full fine-tuning, both from the same run."""
    lines = [_train_row(row["name"], row, results["train"][0]) for row in results["train"]]
    peer = results["adapters"]
    if "rows" in peer:
        label = f"(adapters {peer['versions']['adapters']}, own process)"
        lines += [_train_row(f"{row['name']} {label}", row, peer["rows"][0]) for row in peer["rows"]]
    else:
        lines.append(("adapters prompt tuning", "-", "-", "-", "-", "-", "-", f"not run: {peer['error']}"))
    headers = (
        "method",
        "trainable",
        "CPU s/step",
        "CPU vs full FT",
        "spread",
        "wall vs full FT",
        "step memory MiB",
        "memory vs full FT",
    )
    return markdown_table(headers, lines)


def macs_per_block(config: dict, kind: str, tokens: int, lora_rank: int) -> float:
    """The cost model of the module docstring, for one image and one block."""
    n, d, width, b = (
        (config["image"] // config["patch"]) ** 2 + 1,
        config["width"],
        config["intermediate"],
        config["batch"],
    )
    per_token = 4 * d * d + 2 * d * width + 4 * d * lora_rank
    if kind == "sequence":
        return (n + tokens) * per_token + 2 * (n + tokens) ** 2 * d
    if kind == "kv":
        return n * per_token + 2 * n * (n + tokens) * d + 2 * d * d * tokens / b
    return n * per_token + 2 * n * n * d


def inference_table(results: dict) -> str:
    """Images/s of each adapter against the base model's, next to what its token count predicts."""
    config, rows = results["config"], results["inference"]
    base = rows[0]
    n = (config["image"] // config["patch"]) ** 2 + 1
    base_macs = macs_per_block(config, "plain", 0, 0)
    lines = []
    for row in rows:
        cpu, wall = _ratios(row, base, "cpu"), _ratios(row, base, "wall")
        token_bound = (n + row["tokens"]) / n if row["kind"] == "sequence" else 1.0
        flops = macs_per_block(config, row["kind"], row["tokens"], row["lora_rank"]) / base_macs
        lines.append(
            (
                row["name"],
                row["kind"],
                f"{config['batch'] / statistics.median(row['cpu']):.2f}",
                f"{statistics.median(cpu):.3f}",
                _spread(cpu),
                f"{statistics.median(wall):.2f}",
                f"{token_bound:.3f}",
                f"{flops:.3f}",
            )
        )
    headers = (
        "model",
        "prompts",
        "images/s (CPU)",
        "time vs base (CPU)",
        "spread",
        "wall vs base",
        "token bound (N+p)/N",
        "FLOP model",
    )
    return markdown_table(headers, lines)


def plot(results: dict, path: Path) -> None:
    """Step time and step memory (both vs full fine-tuning) against trainable parameters, one point per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = []
    full = results["train"][0]
    for row in results["train"]:
        cpu = statistics.median(_ratios(row, full, "cpu"))
        points.append((row["name"], row["trainable"], cpu, row["memory"] / full["memory"], "C0"))
    peer = results["adapters"]
    if "rows" in peer:
        peer_full = peer["rows"][0]
        row = peer["rows"][1]
        cpu = statistics.median(_ratios(row, peer_full, "cpu"))
        points.append(
            (
                f"{row['name']} (adapters library, own process)",
                row["trainable"],
                cpu,
                row["memory"] / peer_full["memory"],
                "C3",
            )
        )
    figure, axes = plt.subplots(1, 2, figsize=(15, 6))
    colors, markers = plt.get_cmap("tab20").colors, "osD^v<>pP*Xh"
    for axis, index, label in ((axes[0], 2, "train-step CPU time / full FT"), (axes[1], 3, "step memory / full FT")):
        for number, point in enumerate(points):
            trainable = max(point[1], 1)
            style = dict(color=colors[number % 20], marker=markers[number % len(markers)], s=60)
            axis.scatter(trainable, point[index], label=f"{number + 1}. {point[0]}", **style)
            axis.annotate(
                str(number + 1), (trainable, point[index]), fontsize=8, xytext=(5, 3), textcoords="offset points"
            )
        axis.set_xscale("log")
        axis.set_xlabel("trainable parameters (floor: none, drawn at 1)")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    config = results["config"]
    size = f"{config['layers']} layers, width {config['width']}, {config['image']} px, batch {config['batch']}"
    figure.suptitle(f"{size} | {results['environment']}", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
