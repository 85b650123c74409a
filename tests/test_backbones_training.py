"""Training over the backbone x method matrix: where gradients go, gradient checkpointing, torch.compile, bf16.

Cells come from tests/backbone_cases.py: every registered method on the first row of every backbone family (the
other rows of a family differ in their heads, which tests/test_backbones*.py check on every row); compile runs a
representative subset (see :func:`_compile_cells`).
"""

from __future__ import annotations

import copy

import pytest
import torch

import vpt_peft

from .backbone_cases import (
    CASES,
    BackboneCase,
    MethodCase,
    adapted,
    family,
    family_representative,
    inputs,
    is_adapter_parameter,
    main_output,
    matrix,
    method_cases,
    perturb,
    tensors,
)
from .helpers import enable_checkpointing


def _gradients(model: torch.nn.Module, kwargs: dict, seed: int = 4) -> dict[str, torch.Tensor]:
    """Gradients of one training step (prompt dropout on, drawn from ``seed``) on every parameter that gets one."""
    model.train()
    torch.manual_seed(seed)
    main_output(model(**kwargs)).float().pow(2).mean().backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("case, method", matrix(family_representative))
def test_gradients_reach_only_prompts_and_heads(case: BackboneCase, method: MethodCase, pixels):
    """The frozen backbone gets no gradient; what trains is exactly the adapter's tensors, and the prompts learn."""
    model = adapted(case, method)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(is_adapter_parameter(n) for n in trainable), sorted(trainable)
    grads = _gradients(model, inputs(case, method, pixels))
    assert set(grads) <= trainable
    assert any("prompt_adapter" in n and g.abs().sum() > 0 for n, g in grads.items())


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
@pytest.mark.parametrize("case, method", matrix(family_representative))
def test_gradient_checkpointing_gives_the_same_gradients(case: BackboneCase, method: MethodCase, reentrant, pixels):
    """Checkpointing enabled on the peft model (as the Trainer does; forwarded to the base model) recomputes the
    blocks in backward (the prompts' keys/values and their dropout included) and gives a plain run's gradients."""
    kwargs = inputs(case, method, pixels)
    plain, checkpointed = adapted(case, method), adapted(case, method)
    perturb(plain)
    checkpointed.load_state_dict(plain.state_dict())
    enable_checkpointing(checkpointed, reentrant)
    calls: dict[str, list] = {"plain": [], "checkpointed": []}
    for model, counter in ((plain, calls["plain"]), (checkpointed, calls["checkpointed"])):
        for layer in vpt_peft.find_backbone(model.base_model.model).layers:
            for inner in list(layer.modules())[1:]:  # transformers checkpoints a block's forward, not its hooks
                inner.register_forward_pre_hook(lambda *_, counter=counter: counter.append(1))
    want = _gradients(plain, kwargs)
    if reentrant and (method.dual_encoder or not case.reentrant_checkpointing):
        # Prompts computed outside the checkpointed blocks (DPT's class-aware prompts from text features, Swin's
        # prompt tokens beside the windows) cannot be differentiated by reentrant checkpointing, whose forward runs
        # without autograd: refused up front rather than gradients silently lost.
        with pytest.raises(ValueError, match="use_reentrant': False"):
            _gradients(checkpointed, kwargs)
        return
    got = _gradients(checkpointed, kwargs)
    assert len(calls["checkpointed"]) > len(calls["plain"]), "nothing was recomputed: checkpointing did not run"
    assert got.keys() == want.keys() and any("prompt_adapter" in n for n in got)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("case, method", matrix(family_representative))
def test_bfloat16_forward_and_backward(case: BackboneCase, method: MethodCase, pixels):
    """A bf16 model (prompts cast with it) computes what the float32 one does to bf16 precision, and trains."""
    model32 = adapted(case, method)
    perturb(model32)
    model16 = copy.deepcopy(model32).to(torch.bfloat16)
    want = tensors(model32(**inputs(case, method, pixels)))
    out = model16(**inputs(case, method, pixels.to(torch.bfloat16)))
    got = tensors(out)
    assert got.keys() == want.keys()
    for key, value in want.items():
        if value.requires_grad:  # computed from the prompts (not, say, ViT-MAE's float32 patch mask)
            assert got[key].dtype == torch.bfloat16, key
            error = (got[key].float() - value).norm() / value.norm()
            assert error < 0.03, (key, error)
    main_output(out).float().pow(2).mean().backward()
    grads = [p.grad for n, p in model16.named_parameters() if "prompt_adapter" in n and p.grad is not None]
    assert grads and all(torch.isfinite(g.float()).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def _compile_cells() -> list:
    """Tracing a tiny model costs dynamo 3-5 s of CPU whatever the backend, so all ~80 cells would take 5 minutes.

    Every method runs once. The families whose prompts go through hooks of their own (the rows without a
    hand-written layout: BEiT's relative position bias, Swin's windows) come first, each with a method not yet
    chosen; the remaining methods run on the first row that takes them. The other ViT-like families run the same
    hooks on the same kind of block."""
    own_hooks: dict[str, BackboneCase] = {}
    for case in CASES:
        if case.layout is None:
            own_hooks.setdefault(family(case), case)
    cells, chosen = [], set()
    for row in own_hooks.values():
        cell = next(c for c in matrix(lambda case, m, row=row: case is row) if c.values[1].name not in chosen)
        cells.append(cell)
        chosen.add(cell.values[1].name)
    for method in method_cases():
        if method.name not in chosen:
            cells.append(matrix(lambda case, m, name=method.name: m.name == name)[0])
    return cells


@pytest.mark.slow
@pytest.mark.parametrize("case, method", _compile_cells())
def test_torch_compile_fullgraph_matches_eager_and_trains(case: BackboneCase, method: MethodCase, pixels):
    """One graph, no break (fullgraph=True), in training mode: the eager outputs (prompt dropout drawn from the same
    seed) and gradients through the compiled forward.

    One trace per cell, with the ``eager`` backend: dynamo's capture (where the hooks and the keys/values parked on
    the attention modules must trace) without inductor's code generation, which costs ~20 s a cell and tests torch
    rather than vpt_peft."""
    torch._dynamo.reset()
    kwargs = inputs(case, method, pixels)
    model = adapted(case, method).train()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    torch.manual_seed(3)
    want = tensors(model(**kwargs))
    torch.manual_seed(3)
    out = compiled(**kwargs)
    got = tensors(out)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=0, msg=key)
    main_output(out).pow(2).mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "prompt" in n)
