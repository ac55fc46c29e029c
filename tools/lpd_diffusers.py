#!/usr/bin/env python3
"""Load an lpd export (``final/``) as a diffusers ``UNet2DConditionModel``.

diffusers cannot describe a U-Net with removed layers in its config, so an
lpd export carries the teacher's ``config.json`` plus ``lpd_pruning.json``
naming the removed units. This helper builds the model from the config,
replaces each removed unit by a parameter-free pass-through with the
semantics lpd trains with (DESIGN §4.2), and loads the student's weights
strictly::

    from lpd_diffusers import load_pruned_unet
    unet = load_pruned_unet("final/", torch_dtype=torch.float16)
    pipe = StableDiffusionXLPipeline.from_pretrained(base, unet=unet, ...)

Pass-through semantics:
  * a removed down-path or mid resnet returns its input ``h`` unchanged
    (a down block still records that ``h`` as its skip output);
  * a removed up-path resnet receives ``cat([h, skip])`` from its block and
    returns ``h``: the skip tensor is dropped;
  * a removed ``Transformer2DModel`` (attention) returns its input;
  * a removed ``BasicTransformerBlock`` returns its input.

Written against diffusers' module structure (``down_blocks[i].resnets[j]``,
``.attentions[j].transformer_blocks[k]``, ``mid_block``, ``up_blocks``) and
the block forward loops of diffusers 0.2x-0.3x; checked against diffusers
outside lpd's CI.
"""
import json
import os
import re
import sys
from types import SimpleNamespace

import torch
from torch import nn


class PassThroughResnet(nn.Module):
    """A removed ResnetBlock2D: returns the first ``main_channels`` channels
    of its input (all of them on the down path, ``h`` without the
    concatenated skip on the up path)."""

    def __init__(self, main_channels):
        super().__init__()
        self.main_channels = main_channels

    def forward(self, input_tensor, temb=None, *args, **kwargs):
        return input_tensor[:, : self.main_channels]


class PassThroughTransformer2D(nn.Module):
    """A removed Transformer2DModel: returns its input."""

    def forward(self, hidden_states, *args, return_dict=True, **kwargs):
        if return_dict:
            return SimpleNamespace(sample=hidden_states)
        return (hidden_states,)


class PassThroughTransformerBlock(nn.Module):
    """A removed BasicTransformerBlock: returns its input."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


_UNIT = re.compile(
    r"^(down_blocks\.(\d+)|mid_block|up_blocks\.(\d+))\.(resnets|attentions)\.(\d+)"
    r"(?:\.transformer_blocks\.(\d+))?$"
)


def _resolve(unet, unit_id):
    m = _UNIT.match(unit_id)
    if not m:
        raise ValueError(f"lpd_pruning.json: unknown unit id {unit_id!r}")
    block_path, down_i, up_i, kind, j, k = m.groups()
    if block_path == "mid_block":
        block = unet.mid_block
    elif down_i is not None:
        block = unet.down_blocks[int(down_i)]
    else:
        block = unet.up_blocks[int(up_i)]
    container = getattr(block, kind)
    return block, container, int(j), (int(k) if k is not None else None), up_i is not None


def apply_pruning(unet, removed_units):
    """Replaces each removed unit of ``unet`` (a diffusers
    UNet2DConditionModel) by its pass-through, in place."""
    for unit_id in removed_units:
        block, container, j, k, on_up_path = _resolve(unet, unit_id)
        if k is not None:
            blocks = container[j].transformer_blocks
            blocks[k] = PassThroughTransformerBlock()
        elif isinstance(container[j], nn.Module) and hasattr(container[j], "conv1"):
            resnet = container[j]
            out_channels = resnet.conv2.out_channels
            if on_up_path:
                # The main path h has the resnet's output width; the rest of
                # its input is the skip tensor, which is dropped.
                main = out_channels
            else:
                main = resnet.conv1.in_channels
                if main != out_channels:
                    raise ValueError(f"{unit_id}: changes channels, not removable")
            container[j] = PassThroughResnet(main)
        else:
            container[j] = PassThroughTransformer2D()
    return unet


def _read_state_dict(folder):
    from safetensors.torch import load_file

    single = os.path.join(folder, "diffusion_pytorch_model.safetensors")
    if os.path.exists(single):
        return load_file(single)
    index = os.path.join(folder, "diffusion_pytorch_model.safetensors.index.json")
    with open(index) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    state = {}
    for shard in shards:
        state.update(load_file(os.path.join(folder, shard)))
    return state


def load_pruned_unet(folder, torch_dtype=None):
    """Builds the pruned student of an lpd export folder as a diffusers
    UNet2DConditionModel with its weights loaded strictly."""
    from diffusers import UNet2DConditionModel

    config = UNet2DConditionModel.load_config(folder)
    unet = UNet2DConditionModel.from_config(config)
    pruning_path = os.path.join(folder, "lpd_pruning.json")
    removed = []
    if os.path.exists(pruning_path):
        with open(pruning_path) as f:
            removed = json.load(f)["removed_units"]
    apply_pruning(unet, removed)
    unet.load_state_dict(_read_state_dict(folder), strict=True)
    if torch_dtype is not None:
        unet = unet.to(torch_dtype)
    return unet.eval()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: lpd_diffusers.py EXPORT_FOLDER  (prints parameter counts)")
    model = load_pruned_unet(sys.argv[1])
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters")
