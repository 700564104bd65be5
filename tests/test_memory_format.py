"""channels_last is refused for nets with a strided 1x1 convolution of few input channels,
whose NHWC weight gradient oneDNN gets wrong on AVX2 CPUs (oneDNN issue #6035)."""

import logging

import torch
from conftest import tiny_spec

from repas.config import TrainConfig
from repas.search import extract_subnet
from repas.supernet import build
from repas.tasks import ClassificationTask
from repas.train import Trainer
from repas.train.memory_format import channels_last_is_safe, nhwc_min_inputs, nhwc_unsafe_convs


def four_channel_subnet():
    """tiny_spec's dense supernet with its first layer cut to 4 channels: the stride-2 block
    after it has a 1x1 branch reading 4 channels."""
    torch.manual_seed(0)
    dense = build(tiny_spec())
    masks = [torch.arange(lay.out_channels) < (4 if i == 0 else lay.out_channels)
             for i, lay in enumerate(dense.spec.layers)]
    return dense, extract_subnet(dense, masks)


def test_the_strided_1x1_conv_with_few_inputs_is_found_and_nothing_else():
    dense, subnet = four_channel_subnet()
    assert nhwc_unsafe_convs(subnet, 8) == ["blocks.1.branches.conv1x1.conv"]
    assert nhwc_unsafe_convs(dense, 8) == []  # 8 inputs: the AVX2 block, measured right
    assert nhwc_unsafe_convs(dense, 16) == ["blocks.1.branches.conv1x1.conv"]  # elsewhere: the AVX-512 block
    assert nhwc_min_inputs() in (8, 16)
    others = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, stride=2, padding=1),  # 3x3: another kernel
                                 torch.nn.Conv2d(8, 8, 1, stride=2, groups=8),  # one input a group: right
                                 torch.nn.Conv2d(1, 8, 1, stride=2),
                                 torch.nn.Conv2d(4, 8, 1))  # no stride: no rtus workspace
    assert nhwc_unsafe_convs(others, 16) == []
    assert channels_last_is_safe(subnet, torch.device("cuda")) == (True, [])  # a oneDNN CPU bug only


def test_the_trainer_trains_such_a_net_in_the_default_format_and_says_why(tmp_path, caplog):
    _, subnet = four_channel_subnet()
    with caplog.at_level(logging.WARNING, logger="repas.train"):
        trainer = Trainer(subnet, ClassificationTask(), TrainConfig(epochs=1, channels_last=True), tmp_path,
                          progress=False)
    assert not trainer.channels_last
    assert all(p.is_contiguous() for p in subnet.parameters())  # not converted to NHWC
    assert "channels_last is off" in caplog.text and "blocks.1.branches.conv1x1.conv" in caplog.text
