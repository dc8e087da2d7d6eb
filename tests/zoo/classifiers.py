"""Spiking classifiers written the way spikingjelly users write them (for the frontend tests).

Each takes a per-step sequence ``[T, B, ...]`` and returns ``[T, B, classes]`` or the mean over T.
"""

import torch
from spikingjelly.activation_based import functional, layer, neuron, surrogate
from torch import nn


class CSNN(nn.Module):
    """The textbook multi-step CSNN: ``layer.Conv2d -> layer.BatchNorm2d -> IFNode -> layer.MaxPool2d`` twice,
    then ``layer.Flatten -> layer.Dropout -> layer.Linear -> LIFNode``; ``[T, B, C, H, W] -> [T, B, classes]``."""

    def __init__(self, in_ch=1, ch=8, classes=10, size=8):
        super().__init__()
        self.conv_fc = nn.Sequential(
            layer.Conv2d(in_ch, ch, kernel_size=3, padding=1, bias=False),
            layer.BatchNorm2d(ch),
            neuron.IFNode(surrogate_function=surrogate.ATan()),
            layer.MaxPool2d(2, 2),
            layer.Conv2d(ch, ch, kernel_size=3, padding=1, bias=False),
            layer.BatchNorm2d(ch),
            neuron.IFNode(surrogate_function=surrogate.ATan(), v_reset=None),
            layer.MaxPool2d(2, 2),
            layer.Flatten(),
            layer.Dropout(0.5),
            layer.Linear(ch * (size // 4) ** 2, classes, bias=False),
            neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan()),
        )
        functional.set_step_mode(self, step_mode="m")

    def forward(self, x_seq):
        return self.conv_fc(x_seq)


class SeqToANNNet(nn.Module):
    """``SeqToANNContainer(Conv2d, BatchNorm2d)`` blocks with average and sum pooling, ParametricLIF neurons
    (soft reset, ``decay_input=False``) and a read-out averaged over T: ``[T, B, C, H, W] -> [B, classes]``."""

    def __init__(self, in_ch=2, ch=6, classes=5, size=8):
        super().__init__()
        self.block1 = layer.SeqToANNContainer(nn.Conv2d(in_ch, ch, 3, padding=1), nn.BatchNorm2d(ch))
        self.sn1 = neuron.ParametricLIFNode(init_tau=2.5, surrogate_function=surrogate.Sigmoid(), step_mode="m")
        self.pool1 = layer.SeqToANNContainer(nn.AvgPool2d(2))
        self.block2 = layer.SeqToANNContainer(nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch))
        self.sn2 = neuron.ParametricLIFNode(
            init_tau=3.0, v_reset=None, decay_input=False, detach_reset=True, step_mode="m"
        )
        self.pool2 = layer.SeqToANNContainer(nn.AvgPool2d(2, divisor_override=1))  # sum pooling
        self.fc = layer.SeqToANNContainer(nn.Flatten(), nn.Dropout(0.2), nn.Linear(ch * (size // 4) ** 2, classes))

    def forward(self, x_seq):
        h = self.pool1(self.sn1(self.block1(x_seq)))
        h = self.pool2(self.sn2(self.block2(h)))
        return self.fc(h).mean(0)


class LIFClassifier(nn.Module):
    """A fully connected LIF / PLIF classifier over feature sequences ``[T, B, F] -> [T, B, classes]``: Linear
    layers applied straight to the sequence, LIF with soft reset and no input decay, a hard-reset PLIF, a
    ``MultiStepContainer`` of a single-step Linear + IF, and ``functional.multi_step_forward`` over a
    single-step LIF."""

    def __init__(self, features=12, hidden=16, classes=4):
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.lif1 = neuron.LIFNode(
            tau=1.5,
            v_reset=None,
            decay_input=False,
            detach_reset=True,
            surrogate_function=surrogate.Sigmoid(alpha=3.0),
            step_mode="m",
        )
        self.fc2 = nn.Linear(hidden, hidden, bias=False)
        self.plif = neuron.ParametricLIFNode(init_tau=4.0, v_threshold=0.5, step_mode="m")
        self.block = layer.MultiStepContainer(nn.Linear(hidden, hidden), neuron.IFNode(v_threshold=0.7))
        self.drop = nn.Dropout(0.3)
        self.fc3 = nn.Linear(hidden, classes)
        self.lif_out = neuron.LIFNode(tau=2.0, decay_input=True)  # single-step, driven below

    def forward(self, x_seq):
        h = self.lif1(self.fc1(x_seq))
        h = self.plif(self.fc2(h))
        h = self.block(h)
        h = self.fc3(self.drop(h))
        return functional.multi_step_forward(h, self.lif_out)


def jitter_plif(net: nn.Module, seed: int = 0) -> nn.Module:
    """Move every ParametricLIF's ``w`` off its initial value, so each neuron has its own decay."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, neuron.ParametricLIFNode):
                m.w.add_(0.3 * torch.randn((), generator=g))
    return net
