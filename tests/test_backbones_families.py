"""What the families added for issue 16 need beyond the generic matrix: parameter counts from the papers' formula on
every family, ViT-MAE's masking kept off, SigLIP2's NaFlex inputs checked.

The matrix (tests/backbone_cases.py) already runs the reference forward (which rotates DINOv3's patches and never
its prompts, and hides SigLIP2's padding from every token, prompts included), the two prompt paths, the adapter
round trip and a Trainer run on each of these rows.
"""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from transformers import ViTMAEConfig, ViTMAEModel

from vpt_peft import UnsupportedModelError, VisualPromptConfig, find_backbone
from vpt_peft.engine.backbones import BACKBONES

from .backbone_cases import (
    CASES,
    BackboneCase,
    MethodCase,
    adapted,
    assert_same,
    build,
    family,
    family_representative,
    matrix,
    method_case,
    run,
)
from .helpers import NO_DROPOUT, SIZES


def formula_count(config, num_layers: int, width: int) -> int:
    """Prompt parameters as the papers count them: p·d per prompted layer (VPT, VFPT: the Fourier transform adds
    nothing), plus T·d per key-value layer (twice when keys and values are separate) and E2VPT's p token gates and
    p·R segment gates."""
    p = config.num_prompts
    count = len(config.prompted_layers(num_layers)) * p * width
    if hasattr(config, "num_kv_prompts"):
        copies = 1 if config.share_kv else 2
        count += len(config.kv_layers(num_layers)) * config.num_kv_prompts * width * copies
        if config.gates:
            count += p + p * config.num_segments
    return count


def _uniform_width_vision(case: BackboneCase, method: MethodCase) -> bool:
    """Vision prompts on a backbone of one width (Swin's stage widths have their own test), once per family."""
    in_sequence = BACKBONES[family(case)].prompts_in_sequence
    return in_sequence and not method.dual_encoder and family_representative(case, method)


@pytest.mark.parametrize("case, method", matrix(_uniform_width_vision))
def test_prompt_parameters_follow_the_papers_formula(case: BackboneCase, method: MethodCase):
    model = adapted(case, method)
    config = model.peft_config["default"]
    backbone = find_backbone(model.base_model.model)
    prompts = sum(p.numel() for n, p in model.named_parameters() if "prompt_adapter" in n and p.requires_grad)
    assert prompts == formula_count(config, backbone.num_layers, backbone.hidden_size)


def _mae(mask_ratio: float) -> ViTMAEModel:
    torch.manual_seed(0)
    return ViTMAEModel(ViTMAEConfig(**SIZES, **NO_DROPOUT, mask_ratio=mask_ratio)).eval()


def test_mae_with_random_masking_is_refused_before_the_model_is_touched():
    model = _mae(0.75)
    with pytest.raises(UnsupportedModelError, match=r"mask_ratio is 0.75.*mask_ratio=0.0"):
        get_peft_model(model, VisualPromptConfig(num_prompts=2))
    assert not any("prompt_adapter" in name for name, _ in model.named_modules())
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


def test_prompted_mae_sees_every_patch_in_image_order(pixels):
    """Without ``noise`` the base encoder shuffles its patches anew at every call; prompted, they stay in image
    order: no patch masked, the identity restore, and the same outputs as with an explicit increasing noise."""
    base = _mae(0.0)
    shuffled = base(pixel_values=pixels)
    assert not torch.equal(shuffled.ids_restore, torch.arange(16).expand(2, -1))
    model = get_peft_model(_mae(0.0), VisualPromptConfig(num_prompts=2, deep=True)).eval()
    out = run(model, {"pixel_values": pixels})
    assert torch.equal(out["mask"], torch.zeros(2, 16))
    assert torch.equal(out["ids_restore"], torch.arange(16).expand(2, -1))
    in_order = torch.arange(16, dtype=torch.float32).expand(2, -1)
    assert_same(out, run(model, {"pixel_values": pixels, "noise": in_order}))
    with model.disable_adapter():
        assert_same(run(model, {"pixel_values": pixels}), run(base, {"pixel_values": pixels, "noise": in_order}))


def test_naflex_models_refuse_images_that_are_not_patches(pixels):
    siglip2 = next(case for case in CASES if case.name == "siglip2")
    model = adapted(siglip2, method_case("vpt-shallow"))
    with pytest.raises(ValueError, match=r"flattened patches \(batch, patches, 192\)"):
        model(pixel_values=pixels, spatial_shapes=torch.tensor([[4, 4], [4, 4]]))


def test_the_docs_dual_encoder_families_are_the_ones_dpt_runs_on():
    """docs/gen_backbones.py marks DPT's families by ``dual_encoder_tower``: exactly the families of the matrix's
    dual-encoder rows, where DPT runs every check."""
    dual = {find_backbone(build(case)).model_type for case in CASES if case.dual_encoder}
    assert dual == {model_type for model_type, spec in BACKBONES.items() if spec.dual_encoder_tower}
