"""Named training presets: the papers' settings plus a bundled ``digits`` run for a laptop CPU.

A preset is plain data (model fields, diffusion fields, training fields, the sources they come from);
:func:`make_config` turns one into a :class:`~sdmc.diffusion.train.TrainConfig` and applies overrides.
``batch_size`` is always the **global** batch (all ranks together); each rank gets
``batch_size / world_size``.

Sources (see ``reference/paper.md``): Table 7 and SDDPM ``main_SDDPM.py`` for the UNet and the schedule;
pytorch-ddpm (on which SDDPM is based) for Adam 2e-4, warm-up 5000, grad clip 1.0, EMA 0.9999, batch 128.
The SDDPM code defines warm-up and EMA but never applies them and the paper's SNN numbers are non-EMA;
here both are on (they help) and can be switched off (``--warmup 0 --no-ema``) to match the paper's runs.
Augmentation (random h-flip for CIFAR-10 / CelebA) belongs to the dataset (:func:`sdmc.data.load_dataset`).
TSM fine-tuning (stage 2): lr 1e-5 (paper §7.1, most plausible reading), fewer than 1/10 of the
500k training steps.
"""

from __future__ import annotations

import copy
from typing import Any

from ..errors import ConfigError

_CIFAR_UNET = dict(ch=128, ch_mult=(1, 2, 2, 4), num_res_blocks=2, img_ch=3, img_size=32, dropout=0.1)
_PDDPM_TRAIN = dict(
    lr=2e-4,
    warmup=5000,
    batch_size=128,
    grad_clip=1.0,
    ema_decay=0.9999,
    sample_every=5000,
    save_every=5000,
    log_every=100,
)

PRESETS: dict[str, dict[str, Any]] = {
    "digits": dict(
        description="bundled scikit-learn 8x8 digits at 16x16: learns visible digits on a 2-core CPU in minutes",
        source="sdmc default, measured on a shared 2-core CPU: 600 steps take loss 0.69 -> 0.05 and digits-FID "
        "5638 (untrained) -> 1331 (EMA; 256 samples, DDIM 20); lr 5e-3 is ahead at step 300 "
        "(1776 vs 2068) but ends behind (1529)",
        model=dict(
            arch="sddpm", ch=32, ch_mult=(1, 2), num_res_blocks=1, snn_steps=4, img_ch=1, img_size=16, dropout=0.0
        ),
        train=dict(
            dataset="digits",
            steps=600,
            batch_size=32,
            lr=2e-3,
            warmup=50,
            ema_decay=0.995,
            log_every=20,
            sample_every=200,
            save_every=200,
            sample_steps=20,
            sample_n=64,
        ),
    ),
    "digits-bundled": dict(
        description="the bundled digits model (load it as bundled:digits): the 'digits' UNet at the digits' "
        "native 8x8, trained long enough to draw recognisable digits",
        source="sdmc, measured on a 2-core CPU, 1 thread (sdmc/models/bundled/README.md): lr 1e-3 after a "
        "200-step warm-up, constant to step 32000, then linear decay to 0 over the last 16000 steps; EMA 0.999, "
        "batch 32. 48000 steps rather than 24000 (decay over the last 8000): digits-FID 184 vs 203 (DPM-Solver++ 10, "
        "n=256 x 12 seeds; the paired difference -20 +- 9), rather than 12000: 241 (6 seeds). At the native 8x8 rather than the 16x16 resize: digits-FID 238 vs 370 at 12000 steps, a third "
        "of the training time. The cosine schedule was worse at step 1000 (DDIM-20 digits-FID 1253 vs 1076, at "
        "16x16)",
        model=dict(
            arch="sddpm", ch=32, ch_mult=(1, 2), num_res_blocks=1, snn_steps=4, img_ch=1, img_size=8, dropout=0.0
        ),
        train=dict(
            dataset="digits",
            steps=48000,
            batch_size=32,
            lr=1e-3,
            warmup=200,
            lr_decay=16000,
            ema_decay=0.999,
            threads=1,  # a CPU run is bit-reproducible for a fixed thread count; the shipped run used 1
            log_every=100,
            sample_every=2000,
            save_every=1000,
            sample_steps=20,
            sample_n=64,
        ),
    ),
    "digits-ann": dict(
        description="float ANN UNet (pytorch-ddpm, GroupNorm, no attention) on digits, sized like 'digits': the "
        "conversion table's ANN row",
        source="sdmc; the architecture of 'digits-qann-2bit' with Swish activations",
        model=dict(
            arch="ann",
            ch=32,
            ch_mult=(1, 2),
            num_res_blocks=1,
            img_ch=1,
            img_size=16,
            dropout=0.0,
            norm_groups=8,
            mid_attn=False,
        ),
        train=dict(
            dataset="digits",
            steps=600,
            batch_size=32,
            lr=2e-3,
            warmup=50,
            ema_decay=0.995,
            log_every=20,
            sample_every=200,
            save_every=200,
            sample_steps=20,
            sample_n=64,
        ),
    ),
    "digits-qann-2bit": dict(
        description="2-bit quantised ANN UNet on digits (source of 'sdmc convert', T=3), sized like 'digits'",
        source="SDM §6 / ANN2SNN code: QuantReLU on every activation, learnable clip, no attention; alpha_init "
        "2.0 instead of the code's 6.0 (digits activations are O(1))",
        model=dict(
            arch="qann",
            bits=2,
            alpha_init=2.0,
            ch=32,
            ch_mult=(1, 2),
            num_res_blocks=1,
            img_ch=1,
            img_size=16,
            dropout=0.0,
            norm_groups=8,
            mid_attn=False,
        ),
        train=dict(
            dataset="digits",
            steps=600,
            batch_size=32,
            lr=2e-3,
            warmup=50,
            ema_decay=0.995,
            log_every=20,
            sample_every=200,
            save_every=200,
            sample_steps=20,
            sample_n=64,
        ),
    ),
    "cifar10-sddpm-t4": dict(
        description="SDDPM on CIFAR-10, T=4 (paper FID 19.73 with DDPM sampling)",
        source="paper Table 7; SDDPM main_SDDPM.py; pytorch-ddpm recipe",
        model=dict(arch="sddpm", snn_steps=4, **_CIFAR_UNET),
        train=dict(dataset="cifar10", steps=500_000, **_PDDPM_TRAIN),
    ),
    "cifar10-sddpm-t8": dict(
        description="SDDPM on CIFAR-10, T=8 (paper FID 17.27)",
        source="paper Table 7; SDDPM main_SDDPM.py; pytorch-ddpm recipe",
        model=dict(arch="sddpm", snn_steps=8, **_CIFAR_UNET),
        train=dict(dataset="cifar10", steps=500_000, **_PDDPM_TRAIN),
    ),
    "cifar10-sdm-t4": dict(
        description="SDM stage 2: TSM fine-tuning of an SDDPM T=4 model (needs --init-from; paper FID 18.57)",
        source="paper §2.3 (Alg. 1), §7.1 lr 1e-5, fine-tune < 1/10 of 500k steps",
        model=dict(arch="sdm", snn_steps=4, **_CIFAR_UNET),
        train=dict(dataset="cifar10", steps=50_000, tsm=True, **{**_PDDPM_TRAIN, "lr": 1e-5, "warmup": 0}),
    ),
    "cifar10-sdm-t8": dict(
        description="SDM stage 2: TSM fine-tuning of an SDDPM T=8 model (needs --init-from; paper FID 15.45)",
        source="paper §2.3 (Alg. 1), §7.1 lr 1e-5, fine-tune < 1/10 of 500k steps",
        model=dict(arch="sdm", snn_steps=8, **_CIFAR_UNET),
        train=dict(dataset="cifar10", steps=50_000, tsm=True, **{**_PDDPM_TRAIN, "lr": 1e-5, "warmup": 0}),
    ),
    "celeba64-sddpm-t4": dict(
        description="SDDPM on CelebA 64x64, T=4 (paper FID 25.09); ch_mult not stated, SDDPM code default used",
        source="paper §1.4 (CenterCrop 148, Resize 64, h-flip), Table 7",
        model=dict(arch="sddpm", snn_steps=4, **{**_CIFAR_UNET, "img_size": 64}),
        train=dict(dataset="celeba64", steps=500_000, **_PDDPM_TRAIN),
    ),
    "mnist-sddpm-t4": dict(
        description="SDDPM on MNIST resized to 32x32, T=4 (paper FID 29.48)",
        source="paper §1.4 (resize 32, img_ch 1), Table 7",
        model=dict(arch="sddpm", snn_steps=4, **{**_CIFAR_UNET, "img_ch": 1}),
        train=dict(dataset="mnist", steps=500_000, **_PDDPM_TRAIN),
    ),
    "fashion-mnist-sddpm-t4": dict(
        description="SDDPM on Fashion-MNIST resized to 32x32, T=4 (paper FID 21.38)",
        source="paper §1.4 (resize 32, img_ch 1), Table 7",
        model=dict(arch="sddpm", snn_steps=4, **{**_CIFAR_UNET, "img_ch": 1}),
        train=dict(dataset="fashion-mnist", steps=500_000, **_PDDPM_TRAIN),
    ),
    "cifar10-ann": dict(
        description="ANN baseline: pytorch-ddpm UNet on CIFAR-10 (paper ANN DDPM FID 19.04 non-EMA, 13.38 EMA)",
        source="pytorch-ddpm defaults (ch_mult 1,2,2,2, attn at 16x16, 800k steps)",
        model=dict(
            arch="ann", ch=128, ch_mult=(1, 2, 2, 2), attn=(1,), num_res_blocks=2, img_ch=3, img_size=32, dropout=0.1
        ),
        train=dict(dataset="cifar10", steps=800_000, **_PDDPM_TRAIN),
    ),
}

DEFAULT_PRESET = "digits"


def get_preset(name: str) -> dict[str, Any]:
    """A deep copy of the preset ``name`` (``description``, ``source``, ``model``, ``train`` [, ``diffusion``])."""
    if name not in PRESETS:
        raise ConfigError(f"unknown training preset {name!r}; choose one of {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def describe_presets() -> str:
    """One line per preset: name, description."""
    width = max(map(len, PRESETS))
    return "\n".join(f"{name:<{width}}  {p['description']}" for name, p in PRESETS.items())
