"""A spiking TSM UNet written the way the SDDPM / SDM papers' code writes it (for the frontend tests).

Same maths and the same ``state_dict`` names as ``sdmc.models.SpikingUNet(arch='sdm')``, but in the papers'
style, which a frontend must survive: its own TSM conv that reshapes with ``.contiguous()`` and multiplies by
a ``[T, 1, 1, 1, 1]`` parameter, its own Swish, a read-out that builds its decay coefficients with
``torch.arange(...)`` and ``.to(x.device)``, ``T, B, C, H, W = x.shape`` unpacking, the time embedding
repeated over H and W before a ``torch.add``, Python loops over module lists, ``hs.pop()``, asserts, and
neurons switched to multi-step mode with ``functional.set_step_mode``.  It never resets its neurons itself.
Written for sdmc's tests; not the papers' code.
"""

import math

import torch
from spikingjelly.activation_based import functional, surrogate
from spikingjelly.activation_based.neuron import IFNode
from torch import nn
from torch.nn import functional as F
from torch.nn import init


class TSMConv2d(nn.Module):
    def __init__(self, timestep, in_ch, out_ch, kernel_size=3, stride=1, padding=1):
        super().__init__()
        self.T = timestep
        self.tsmconv = nn.Conv2d(in_ch, out_ch, kernel_size=kernel_size, stride=stride, padding=padding)
        self.tsmp = nn.Parameter(torch.ones(self.T, 1, 1, 1, 1))
        init.xavier_uniform_(self.tsmconv.weight)
        init.zeros_(self.tsmconv.bias)

    def forward(self, inp):
        out = self.tsmconv(inp)  # [T*B, C, H, W]
        _, C, H, W = out.shape
        out = out.reshape(self.T, -1, C, H, W).contiguous()
        return (out * self.tsmp).flatten(0, 1)


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class TimeEmbedding(nn.Module):
    def __init__(self, T, d_model, dim):
        assert d_model % 2 == 0
        super().__init__()
        freq = torch.exp(-torch.arange(0, d_model, step=2) / d_model * math.log(10000))
        pos = torch.arange(T).float()
        ang = pos[:, None] * freq[None, :]
        assert list(ang.shape) == [T, d_model // 2]
        table = torch.stack([torch.sin(ang), torch.cos(ang)], dim=-1).view(T, d_model)
        self.timembedding = nn.Sequential(
            nn.Embedding.from_pretrained(table), nn.Linear(d_model, dim), Swish(), nn.Linear(dim, dim)
        )

    def forward(self, t):
        return self.timembedding(t)


class SpkDown(nn.Module):
    def __init__(self, ch, timestep):
        super().__init__()
        self.conv = TSMConv2d(timestep, ch, ch, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(ch)
        self.neuron = IFNode(surrogate_function=surrogate.ATan())
        functional.set_step_mode(self, step_mode="m")

    def forward(self, x, temb):
        T, B, C, H, W = x.shape
        x = self.conv(self.neuron(x).flatten(0, 1))
        _, C, H, W = x.shape
        return self.bn(x).reshape(T, B, C, H, W).contiguous()


class SpkUp(nn.Module):
    def __init__(self, ch, timestep):
        super().__init__()
        self.conv = TSMConv2d(timestep, ch, ch, 3, stride=1, padding=1)
        self.bn = nn.BatchNorm2d(ch)
        self.neuron = IFNode(surrogate_function=surrogate.ATan())
        functional.set_step_mode(self, step_mode="m")

    def forward(self, x, temb):
        T, B, C, H, W = x.shape
        x = F.interpolate(self.neuron(x).flatten(0, 1), scale_factor=2, mode="nearest")
        x = self.conv(x)
        _, C, H, W = x.shape
        return self.bn(x).reshape(T, B, C, H, W).contiguous()


class SpkResBlock(nn.Module):
    def __init__(self, in_ch, out_ch, tdim, timestep):
        super().__init__()
        self.temb_proj = nn.Sequential(Swish(), nn.Linear(tdim, out_ch))
        self.neuron1 = IFNode(surrogate_function=surrogate.ATan())
        self.conv1 = TSMConv2d(timestep, in_ch, out_ch)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.neuron2 = IFNode(surrogate_function=surrogate.ATan())
        self.conv2 = TSMConv2d(timestep, out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = TSMConv2d(timestep, in_ch, out_ch, 1, 1, 0) if in_ch != out_ch else nn.Identity()
        self.attn = nn.Identity()
        functional.set_step_mode(self, step_mode="m")

    def forward(self, x, temb):
        T, B, C, H, W = x.shape
        h = self.conv1(self.neuron1(x).flatten(0, 1))
        h = self.bn1(h).reshape(T, B, -1, H, W).contiguous()
        emb = self.temb_proj(temb).unsqueeze(-1).unsqueeze(-1).repeat(1, 1, 1, h.shape[-2], h.shape[-1])
        h = torch.add(h, emb)
        h = self.conv2(self.neuron2(h).flatten(0, 1))
        h = self.bn2(h).reshape(T, B, -1, H, W).contiguous()
        h = h + self.shortcut(x.flatten(0, 1)).reshape(T, B, -1, H, W).contiguous()
        return self.attn(h)


class MembraneOutputLayer(nn.Module):
    def __init__(self, timestep=4):
        super().__init__()
        self.n_steps = timestep

    def forward(self, x):
        arr = torch.arange(self.n_steps - 1, -1, -1)
        coef = torch.pow(0.8, arr)[:, None, None, None, None].to(x.device)
        return torch.sum(x * coef, dim=0)


class SpkUNetTSM(nn.Module):
    """``SpkUNetTSM(T=1000, ch=128, ch_mult=[1, 2, 2, 4], attn=[], num_res_blocks=2, dropout=0.1, timestep=4)``."""

    def __init__(self, T, ch, ch_mult, attn, num_res_blocks, dropout, timestep, img_ch=3):
        super().__init__()
        assert not attn, "this zoo model has no attention blocks"
        tdim = ch * 4
        self.timestep = timestep
        self.time_embedding = TimeEmbedding(T, ch, tdim)
        self.conv = TSMConv2d(timestep, img_ch, ch)
        self.bn = nn.BatchNorm2d(ch)
        self.neuron = IFNode(surrogate_function=surrogate.ATan())
        self.conv_identity = TSMConv2d(timestep, ch, ch)
        self.bn_identity = nn.BatchNorm2d(ch)
        self.downblocks = nn.ModuleList()
        chs, now = [ch], ch
        for i, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                self.downblocks.append(SpkResBlock(now, ch * mult, tdim, timestep))
                now = ch * mult
                chs.append(now)
            if i != len(ch_mult) - 1:
                self.downblocks.append(SpkDown(now, timestep))
                chs.append(now)
        self.middleblocks = nn.ModuleList([SpkResBlock(now, now, tdim, timestep) for _ in range(2)])
        self.upblocks = nn.ModuleList()
        for i, mult in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                self.upblocks.append(SpkResBlock(chs.pop() + now, ch * mult, tdim, timestep))
                now = ch * mult
            if i != 0:
                self.upblocks.append(SpkUp(now, timestep))
        assert len(chs) == 0
        self.tail_bn = nn.BatchNorm2d(now)
        self.tail_swish = Swish()
        self.tail_conv = TSMConv2d(timestep, now, img_ch)
        self.T_output_layer = nn.Conv3d(img_ch, img_ch, kernel_size=(3, 3, 1), stride=(1, 1, 1), padding=(1, 1, 0))
        self.last_bn = nn.BatchNorm2d(img_ch)
        self.swish = Swish()
        self.membrane_output_layer = MembraneOutputLayer(timestep=timestep)
        functional.set_step_mode(self, step_mode="m")

    def forward(self, x, t):
        x = x.unsqueeze(0).repeat(self.timestep, 1, 1, 1, 1)  # [T, B, C, H, W]
        temb = self.time_embedding(t)
        T, B, C, H, W = x.shape
        h = self.conv(x.flatten(0, 1))
        h = self.bn(h).reshape(T, B, -1, H, W).contiguous()
        h = self.neuron(h)
        h = self.conv_identity(h.flatten(0, 1))
        h = self.bn_identity(h).reshape(T, B, -1, H, W).contiguous()
        hs = [h]
        for layer in self.downblocks:
            h = layer(h, temb)
            hs.append(h)
        for layer in self.middleblocks:
            h = layer(h, temb)
        for layer in self.upblocks:
            if isinstance(layer, SpkResBlock):
                h = torch.cat([h, hs.pop()], dim=2)
            h = layer(h, temb)
        T, B, C, H, W = h.shape
        h = self.tail_swish(self.tail_bn(h.flatten(0, 1)))
        h = self.tail_conv(h).reshape(T, B, -1, H, W).contiguous()
        y = self.T_output_layer(h.permute(1, 2, 3, 4, 0)).permute(4, 0, 1, 2, 3)
        y = self.last_bn(y.flatten(0, 1)).reshape(T, B, -1, H, W).contiguous()
        h = self.swish(y) + h
        out = self.membrane_output_layer(h)
        assert len(hs) == 0
        return out
