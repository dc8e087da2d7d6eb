"""The SDDPM / SDM / ANN UNets: exact released parameter names and the golden forward semantics."""

import pytest
import torch
from conftest import REF_KEYS, randomize_bn
from spikingjelly.activation_based import neuron

from sdmc.config import ModelConfig
from sdmc.errors import ConfigError
from sdmc.models import ANNUNet, MembraneOutputLayer, SpikingUNet, TSMConv2d, build_model, set_threshold


def parse_reference(path=REF_KEYS):
    sections, cur = {}, None
    for line in open(path):
        if line.startswith("## "):
            cur = "sdm" if "Spk_UNet_TSM" in line else "sddpm"
            sections[cur] = {}
        elif cur and line.strip() and not line.startswith("#"):
            key, rest = line.split(" ", 1)
            shape = rest.rsplit(" ", 1)[0].strip()
            sections[cur][key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return sections


@pytest.mark.parametrize("arch,T", [("sdm", 8), ("sddpm", 4)])
def test_released_parameter_names_and_shapes(arch, T):
    ref = parse_reference()[arch]
    model = build_model(ModelConfig(arch=arch, snn_steps=T))
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(mine) == list(ref), "key order differs from the released checkpoint"
    assert mine == ref
    n = sum(p.numel() for p in model.parameters())
    assert round(n / 2**20, 2) == 63.61  # the papers' parameter count in 2^20 units


def test_ann_baseline_parameter_count():
    # pytorch-ddpm UNet with the middle attention block: the SDM paper's 64.47 "M"
    model = build_model(ModelConfig(arch="ann", ch=128, ch_mult=(1, 2, 2, 4), num_res_blocks=2))
    n = sum(p.numel() for p in model.parameters())
    assert round(n / 2**20, 2) == 64.47


def test_forward_shapes_and_neuron_reset(tiny_cfg):
    torch.manual_seed(0)
    model = build_model(tiny_cfg).eval()
    randomize_bn(model)
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0, 10, 999])
    y1 = model(x, t)
    assert y1.shape == x.shape
    for m in model.modules():  # state is reset after the call
        if isinstance(m, neuron.BaseNode):
            assert isinstance(m.v, float) and m.v == 0.0
    assert torch.equal(model(x, t), y1)


def test_membrane_output_layer():
    x = torch.randn(4, 2, 3)
    out = MembraneOutputLayer(4)(x)
    ref = sum(0.8 ** (3 - t) * x[t] for t in range(4))
    torch.testing.assert_close(out, ref)


def test_tsm_conv_scales_each_step():
    torch.manual_seed(0)
    conv = TSMConv2d(3, 2, 4)
    with torch.no_grad():
        conv.tsmp.copy_(torch.tensor([0.5, 1.0, 2.0]).view(3, 1, 1, 1, 1))
    x = torch.randn(3 * 2, 2, 5, 5)  # T=3, B=2
    y = conv(x).view(3, 2, 4, 5, 5)
    base = conv.tsmconv(x).view(3, 2, 4, 5, 5)
    for t, p in enumerate([0.5, 1.0, 2.0]):
        torch.testing.assert_close(y[t], p * base[t])  # the bias is scaled too


def test_bn_statistics_pooled_over_time_and_batch(tiny_cfg):
    torch.manual_seed(0)
    model = build_model(tiny_cfg).train()
    captured = {}
    model.conv.register_forward_hook(lambda m, i, o: captured.setdefault("head", o.detach()))
    model.bn.momentum = 1.0
    model(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]))
    head = captured["head"]  # [T*B, C, H, W]
    assert head.shape[0] == tiny_cfg.snn_steps * 2
    torch.testing.assert_close(model.bn.running_mean, head.mean(dim=(0, 2, 3)))


def test_threshold_guidance_changes_output_not_weights(tiny_cfg):
    torch.manual_seed(1)
    model = build_model(tiny_cfg).eval()
    randomize_bn(model)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 500])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    y1 = model(x, t)
    n = set_threshold(model, 0.5)
    assert n == sum(isinstance(m, neuron.IFNode) for m in model.modules()) > 0
    y2 = model(x, t)
    assert not torch.allclose(y1, y2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_lif_and_soft_reset_build(tiny_cfg):
    for kw in ({"neuron": "lif", "tau": 2.0}, {"soft_reset": True}):
        cfg = ModelConfig(**{**tiny_cfg.to_dict(), **kw})
        model = build_model(cfg).eval()
        nodes = [m for m in model.modules() if isinstance(m, neuron.BaseNode)]
        assert nodes and all(m.step_mode == "m" for m in nodes)
        if "neuron" in kw:
            assert all(isinstance(m, neuron.LIFNode) for m in nodes)
        else:
            assert all(m.v_reset is None for m in nodes)
        assert model(torch.randn(1, 1, 8, 8), torch.tensor([3])).shape == (1, 1, 8, 8)


def test_wrong_image_size_is_a_clear_error(tiny_cfg):
    model = build_model(tiny_cfg)
    with pytest.raises(ConfigError, match="not divisible by 2"):
        model(torch.randn(1, 1, 7, 7), torch.tensor([1]))
    with pytest.raises(ConfigError, match=r"expected an image batch \[B, 1, H, W\]"):
        model(torch.randn(1, 3, 8, 8), torch.tensor([1]))
    with pytest.raises(ConfigError, match="img_size=12 is not divisible"):
        ModelConfig(ch_mult=(1, 2, 2, 2), img_size=12)


def test_ann_unet_forward():
    model = ANNUNet(
        ModelConfig(arch="ann", ch=32, ch_mult=(1, 2), num_res_blocks=1, img_ch=1, img_size=8, attn=(1,))
    ).eval()
    assert model(torch.randn(2, 1, 8, 8), torch.tensor([0, 9])).shape == (2, 1, 8, 8)
    assert any("attn.proj_q" in k for k in model.state_dict())


def test_spiking_unet_rejects_ann_config():
    with pytest.raises(ConfigError):
        SpikingUNet(ModelConfig(arch="ann", ch=32))
