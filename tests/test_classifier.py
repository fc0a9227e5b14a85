"""The pieces shared by difflab's small CNNs: the conv block keeps the weight names that saved files use,
and the one classifier training loop draws one batch per step."""

from __future__ import annotations

import itertools
from functools import partial

import torch
from torch import nn

from difflab.evaluate.attributes import AttributeNet
from difflab.evaluate.classifier import LR, eval_batches, fit_classifier, lr_at
from difflab.evaluate.features import FeatureNet
from difflab.models.clip import CLIPModel
from difflab.nn.blocks import conv_block

BATCHNORM_KEYS = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]


def test_conv_block_shapes_and_norms():
    block = conv_block(3, 8, stride=2)
    assert block(torch.zeros(2, 3, 8, 8)).shape == (2, 8, 4, 4)
    assert block[0].bias is None and isinstance(block[1], nn.BatchNorm2d)
    group = conv_block(3, 8, norm=partial(nn.GroupNorm, 4))
    assert isinstance(group[1], nn.GroupNorm) and group[1].num_groups == 4
    assert group(torch.zeros(2, 3, 8, 8)).shape == (2, 8, 8, 8)


def test_weight_names_are_those_of_saved_files():
    """The names written by the code before the blocks were shared (each network had its own conv block):
    weights saved then still load."""
    for net in (FeatureNet(in_channels=1, num_classes=10, resolution=(8, 8)), AttributeNet(resolution=(16, 16))):
        body = [k for k in net.state_dict() if k.startswith("body.")]
        # a stem and 2 stages of 2 blocks: conv (no bias) + BatchNorm each
        assert body == [f"body.{i}.{k}" for i in range(5) for k in ["0.weight"] + [f"1.{n}" for n in BATCHNORM_KEYS]]
    clip = CLIPModel(3, 16, 50, embed_dim=32, image_width=16, text_width=32, text_layers=1, text_heads=2,
                     max_length=8, temperature=0.07)
    body = [k for k in clip.state_dict() if ".body." in k]
    # a stem and 3 stride-2 blocks: conv (no bias) + GroupNorm each
    assert body == [f"image_encoder.body.{i}.{k}" for i in range(4) for k in ("0.weight", "1.weight", "1.bias")]


def test_fit_classifier_draws_one_batch_per_step():
    """Any extra draw would shift every later draw of the task's seeded generator."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    drawn = []

    def batches():
        for step in itertools.count():
            drawn.append(step)
            yield torch.randn(8, 4), torch.randint(0, 2, (8,))

    fit_classifier(net, batches(), nn.functional.cross_entropy, 7, desc="test", progress=False)
    assert drawn == list(range(7)) and net.training


def test_lr_at_warms_up_then_decays_to_zero():
    steps = 200  # warm-up: 5% = 10 steps
    assert lr_at(0, steps) == LR / 10 and lr_at(9, steps) == LR
    assert lr_at(10, steps) == LR and abs(lr_at(steps, steps)) < 1e-12


def test_eval_batches_restores_the_mode():
    net = FeatureNet(in_channels=1, num_classes=10, resolution=(8, 8)).train()
    images = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    out = eval_batches(net, images, lambda x: net(x), batch_size=2)
    assert [len(o) for o in out] == [2, 2, 1] and net.training
    torch.testing.assert_close(torch.cat(out), net.eval()(images.float() / 127.5 - 1))
