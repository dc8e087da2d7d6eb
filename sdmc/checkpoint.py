"""Checkpoint I/O: released ``.pt`` files, training checkpoints and the native safetensors format.

* Released files (``SDM_TSM_8T.pt``, SDDPM/pytorch-ddpm ``ckpt.pt``) hold ``{'net_model': sd}`` and
  possibly ``'ema_model'``; bare state_dicts work too.  They are read with ``torch.load(weights_only=True)``:
  nothing but tensors and plain containers is ever unpickled unless the caller passes ``unsafe=True``.
* The architecture is inferred from the state_dict (TSM or not, T from ``tsmp``, ``ch``, ``ch_mult``,
  ``num_res_blocks``, ``img_ch``, diffusion steps), then checked key by key against a freshly built model.
* Native files: ``.safetensors`` weights whose header metadata carries the :class:`SdmcConfig` JSON
  (architecture, T, threshold, diffusion schedule, provenance), written atomically.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import DiffusionConfig, ModelConfig, SdmcConfig
from .errors import CheckpointError, ConfigError, LimitError, SdmcError, first_line
from .utils import save_safetensors
from .validate import LIMITS, check_finite, check_limit

CONFIG_KEY = "sdmc_config"
DEFAULT_SDDPM_STEPS = 4  # SDDPM's default SNN steps; a plain SDDPM state_dict does not record T


# ------------------------------------------------------------------------------------------ reading
def check_readable(path: str | os.PathLike, err: type = CheckpointError) -> Path:
    """``path`` if it is a file this process can read; else one ``err`` line saying why (no such file,
    permission denied, a directory...), as the operating system says it."""
    path = Path(path)
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise err(f"{path}: cannot read: {e.strerror or e}") from None
    return path


def _check_zip_members(path: Path) -> None:
    """A ``.pt`` file in torch's zip form: refuse members that inflate past the weights limit before
    ``torch.load`` reads them."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as z:
            total = sum(i.file_size for i in z.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {e}") from None
    check_limit(f"{path}: uncompressed size", total, LIMITS.weights_bytes, " bytes")


def _load_torch(path: Path, unsafe: bool) -> Any:
    _check_zip_members(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=not unsafe)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, zipfile errors ...
        text = str(e)
        if "Unsupported global" in text or "not an allowed global" in text:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(
                f"{path}: contains Python objects other than tensors{what}; refusing to unpickle them "
                "(re-save it as a plain state_dict, or pass --unsafe-load if you trust the file)"
            ) from None
        if "WeightsUnpickler error:" in text:
            detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0]
        else:
            detail = first_line(e)
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {detail}") from None


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from None
    return tensors, meta


def _strip_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a ``module.`` prefix left by DataParallel / DDP wrappers."""
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module.") :]: v for k, v in sd.items()}
    return dict(sd)


def read_checkpoint(
    path: str | os.PathLike, weights: str = "auto", unsafe: bool = False, allow_nonfinite: bool | None = None
) -> tuple[dict[str, torch.Tensor], SdmcConfig | None, dict[str, Any]]:
    """Return ``(state_dict, config or None, info)`` from any supported file.

    ``weights``: ``net`` (the raw weights), ``ema`` (the EMA weights) or ``auto`` (EMA when present).
    ``info`` says which entry was used and what else the file holds.  ``bundled:NAME`` names a model
    shipped with sdmc (:mod:`sdmc.models.bundled`).  A tensor holding NaN or Inf is refused, naming it,
    unless ``allow_nonfinite`` (``None``: as :func:`sdmc.validate.allowing_nonfinite` says).
    """
    from .models.bundled import resolve

    if weights not in ("auto", "net", "ema"):
        raise CheckpointError(f"weights must be 'auto', 'net' or 'ema', got {weights!r}")
    sd, cfg, info = _read_entry(check_readable(resolve(path)), weights, unsafe)
    check_finite(sd, f"{info['file']} ({info['entry']})", CheckpointError, allow=allow_nonfinite)
    return sd, cfg, info


def _stored_config(raw: Any, path: Path) -> SdmcConfig:
    try:
        return SdmcConfig.from_json(raw if isinstance(raw, str) else json.dumps(raw))
    except (TypeError, ValueError) as e:  # json.dumps of something that is not JSON
        raise CheckpointError(f"{path}: unreadable sdmc config: {e}") from None
    except LimitError as e:
        raise LimitError(f"{path}: {e}") from None
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None


def _read_entry(
    path: Path, weights: str, unsafe: bool
) -> tuple[dict[str, torch.Tensor], SdmcConfig | None, dict[str, Any]]:
    info: dict[str, Any] = {"file": str(path)}
    if path.suffix == ".safetensors":
        sd, meta = _load_safetensors(path)
        cfg = _stored_config(meta[CONFIG_KEY], path) if CONFIG_KEY in meta else None
        info.update(format="sdmc-safetensors", entry="weights")
        return sd, cfg, info

    obj = _load_torch(path, unsafe)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict (state_dict or {{'net_model': ...}}), got {type(obj).__name__}")
    cfg = None
    if CONFIG_KEY in obj:
        raw = obj[CONFIG_KEY]
        cfg = SdmcConfig.from_json(raw if isinstance(raw, str) else json.dumps(raw))
    entries = [k for k in ("net_model", "ema_model") if isinstance(obj.get(k), Mapping)]
    info["entries"] = entries + [k for k in obj if k not in entries and k != CONFIG_KEY]
    if entries:
        if weights == "ema" and "ema_model" not in entries:
            raise CheckpointError(f"{path}: has no 'ema_model' entry (entries: {', '.join(entries)})")
        if weights == "net" and "net_model" not in entries:
            raise CheckpointError(f"{path}: has no 'net_model' entry (entries: {', '.join(entries)})")
        key = "ema_model" if weights == "ema" or (weights == "auto" and "ema_model" in entries) else "net_model"
        sd = obj[key]
        info.update(format="released" if cfg is None else "sdmc-training", entry=key)
    else:
        sd = obj
        info.update(format="state_dict", entry="(top level)")
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor) or not isinstance(k, str)]
    if bad:
        raise CheckpointError(
            f"{path}: entry {info['entry']!r} is not a state_dict: key {bad[0]!r} holds a "
            f"{type(sd[bad[0]]).__name__}, not a tensor"
        )
    return _strip_prefix(sd), cfg, info


# ---------------------------------------------------------------------------- architecture inference
def _shape(sd: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"not an SDDPM/SDM/pytorch-ddpm checkpoint: expected key {key!r} is missing")
    return tuple(sd[key].shape)


def _indices(sd: Mapping[str, torch.Tensor], prefix: str) -> list[int]:
    pat = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return sorted({int(m.group(1)) for k in sd for m in [pat.match(k)] if m})


def infer_config(
    sd: Mapping[str, torch.Tensor], snn_steps: int | None = None, img_size: int | None = None
) -> ModelConfig:
    """Infer the :class:`ModelConfig` of a state_dict (spiking SDDPM/SDM or pytorch-ddpm ANN).

    Quantities that a state_dict cannot record take defaults that ``snn_steps``/``img_size`` override: the
    SNN steps of a non-TSM SDDPM model (4), the image size (32), the threshold (1.0), the neuron (IF).
    """
    if "head.weight" in sd or "net.head.weight" in sd:
        if "net.head.weight" in sd:
            raise CheckpointError(
                "a converted SNN state_dict (keys 'net.*') records no conversion settings; "
                "load the native .safetensors file that 'sdmc convert' wrote"
            )
        arch = "qann" if any(k.endswith(".alpha") for k in sd) else "ann"
        head = "head.weight"
        res_mark, down_mark = "block1.2.weight", "main.weight"
    elif "conv.tsmp" in sd:
        arch, head = "sdm", "conv.tsmconv.weight"
        res_mark, down_mark = "conv1.tsmconv.weight", "conv.tsmconv.weight"
    elif "conv.weight" in sd:
        arch, head = "sddpm", "conv.weight"
        res_mark, down_mark = "conv1.weight", "conv.weight"
    else:
        first = next(iter(sd), "(empty)")
        raise CheckpointError(
            "not an SDDPM/SDM/pytorch-ddpm checkpoint: none of 'conv.tsmp', 'conv.weight', "
            f"'head.weight' found (first key: {first!r})"
        )
    ch, img_ch = _shape(sd, head)[:2]
    diffusion_steps, d_model = _shape(sd, "time_embedding.timembedding.0.weight")
    if d_model != ch:
        raise CheckpointError(
            f"time_embedding.timembedding.0.weight has width {d_model}, but the head conv has {ch} channels"
        )
    if arch == "sdm":
        T = _shape(sd, "conv.tsmp")[0]
        if snn_steps is not None and snn_steps != T:
            raise CheckpointError(f"the checkpoint's TSM parameters (conv.tsmp) are for T={T}, not {snn_steps}")
    else:
        T = snn_steps or DEFAULT_SDDPM_STEPS
    levels: list[list[int]] = [[]]
    for i in _indices(sd, "downblocks"):
        p = f"downblocks.{i}."
        if p + res_mark in sd:
            levels[-1].append(_shape(sd, p + res_mark)[0])
        elif p + down_mark in sd:
            levels.append([])
        else:
            raise CheckpointError(
                f"downblocks.{i}: neither a residual block ({p + res_mark}) nor a downsample ({p + down_mark})"
            )
    if not levels[0]:
        raise CheckpointError("no residual blocks found under 'downblocks.*'")
    nres = len(levels[0])
    if any(len(lv) != nres for lv in levels):
        raise CheckpointError(f"levels have different numbers of residual blocks: {[len(lv) for lv in levels]}")
    ch_mult = []
    for lv in levels:
        if lv[-1] % ch:
            raise CheckpointError(f"a level has {lv[-1]} channels, not a multiple of ch={ch}")
        ch_mult.append(lv[-1] // ch)
    kw: dict[str, Any] = dict(
        arch=arch,
        ch=ch,
        ch_mult=tuple(ch_mult),
        num_res_blocks=nres,
        snn_steps=T,
        img_ch=img_ch,
        diffusion_steps=diffusion_steps,
    )
    if img_size:
        kw["img_size"] = img_size
    elif 32 % 2 ** (len(ch_mult) - 1):
        kw["img_size"] = 2 ** (len(ch_mult) - 1)
    if arch in ("ann", "qann"):  # a bare QANN state_dict does not record its bit width: the default (2) is assumed
        kw["mid_attn"] = "middleblocks.0.attn.proj.weight" in sd
        attn = sorted(
            {
                i
                for i, lv in enumerate(levels)
                for j in range(nres)
                if f"downblocks.{i * (nres + 1) + j}.attn.proj.weight" in sd
            }
        )
        kw["attn"] = tuple(attn)
        widths = [ch * m for m in ch_mult]
        kw["norm_groups"] = next(g for g in (32, 16, 8, 4, 2, 1) if all(w % g == 0 for w in widths))
    return ModelConfig(**kw)


# ---------------------------------------------------------------------------------------- building
def build_and_load(sd: Mapping[str, torch.Tensor], cfg: ModelConfig, source: str = "checkpoint") -> nn.Module:
    """Build the model of ``cfg`` and load ``sd`` strictly, naming the first mismatch on failure.

    The names and shapes are compared with a model built on the meta device first, so a config that does not
    match its tensors (say a header edited to ``ch: 1024``) is refused before the real model is allocated.
    """
    from .models import build_model

    what = f"a {cfg.arch} UNet (ch={cfg.ch}, ch_mult={list(cfg.ch_mult)}, blocks={cfg.num_res_blocks})"
    match_state_dict(build_model(cfg, device="meta"), sd, source, what)  # names and shapes: no storage yet
    model = build_model(cfg)
    model.load_state_dict(sd, strict=True)
    return model


def match_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str, what: str) -> None:
    """Raise :class:`CheckpointError` naming the first missing / unexpected key or wrong shape when ``sd`` does
    not load strictly into ``model`` (``what`` describes the model in the message; ``model`` may be on the meta
    device: only names and shapes are compared)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"first missing key {missing[0]!r} ({len(missing)} missing)")
        if unexpected:
            parts.append(f"first unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected)")
        raise CheckpointError(f"{source}: does not match {what}: " + "; ".join(parts))
    for k, v in expected.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{source}: key {k!r} has shape {list(sd[k].shape)}, expected {list(v.shape)}")


def load_model(
    path: str | os.PathLike,
    weights: str = "auto",
    snn_steps: int | None = None,
    device: str | torch.device = "cpu",
    img_size: int | None = None,
    unsafe: bool = False,
    allow_nonfinite: bool | None = None,
) -> tuple[nn.Module, SdmcConfig]:
    """Load any supported checkpoint into a model in eval mode; returns ``(model, config)``.

    The config comes from the file when it records one (native and training checkpoints), otherwise it
    is inferred; ``provenance`` records the source file and entry.  Non-finite weights are refused unless
    ``allow_nonfinite``.
    """
    sd, stored, info = read_checkpoint(path, weights=weights, unsafe=unsafe, allow_nonfinite=allow_nonfinite)
    cfg = resolve_config(sd, stored, info, snn_steps=snn_steps, img_size=img_size)
    model = build_and_load(sd, cfg.model, source=str(path))
    return model.to(device).eval(), cfg


def resolve_config(
    sd: Mapping[str, torch.Tensor],
    stored: SdmcConfig | None,
    info: Mapping[str, Any],
    snn_steps: int | None = None,
    img_size: int | None = None,
) -> SdmcConfig:
    """The stored config with user overrides applied, or one inferred from ``sd``."""
    path = info.get("file", "checkpoint")
    if stored is None:
        return SdmcConfig(
            model=infer_config(sd, snn_steps=snn_steps, img_size=img_size),
            diffusion=DiffusionConfig(),
            provenance={"source": str(path), "entry": info.get("entry"), "format": info["format"], "inferred": True},
        )
    cfg = SdmcConfig.from_json(stored.to_json())  # a copy the overrides may change
    if snn_steps is not None and snn_steps != cfg.model.snn_steps:
        if cfg.model.tsm:
            raise CheckpointError(f"{path}: TSM model trained for T={cfg.model.snn_steps}; cannot run at T={snn_steps}")
        cfg.model.snn_steps = snn_steps
    if img_size is not None:
        cfg.model.img_size = img_size
    cfg.model.validate()
    return cfg


# ----------------------------------------------------------------------------------------- writing
def save_model(
    path: str | os.PathLike,
    model: nn.Module | Mapping[str, torch.Tensor],
    cfg: SdmcConfig,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write the native format: safetensors weights with the config JSON in the header (atomic);
    ``metadata``: more header entries (strings; e.g. a bundled model's recipe and quality)."""
    sd = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    tensors = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    path = Path(path)
    if path.suffix != ".safetensors":
        raise SdmcError(f"{path}: native sdmc models use the .safetensors suffix")
    return save_safetensors(path, tensors, {**(metadata or {}), CONFIG_KEY: cfg.to_json(), "format": "sdmc"})


# ---------------------------------------------------------------------------------- TSM inheritance
def inherit_tsm_state_dict(sd: Mapping[str, torch.Tensor], snn_steps: int) -> dict[str, torch.Tensor]:
    """SDDPM -> SDM weight inheritance: ``X.weight -> X.tsmconv.weight`` for every Conv2d, ``X.tsmp = 1``.

    Everything else (BN, Linear, the Conv3d output layer) keeps its name.
    """
    cfg = infer_config(sd, snn_steps=snn_steps)
    if cfg.arch != "sddpm":
        raise CheckpointError(f"TSM inheritance needs an SDDPM (non-TSM spiking) model, got arch {cfg.arch!r}")
    from .models import build_model

    target = build_model(ModelConfig(**{**cfg.to_dict(), "arch": "sdm"})).state_dict()
    out: dict[str, torch.Tensor] = {}
    for k in target:
        if k.endswith(".tsmp"):
            out[k] = torch.ones_like(target[k])
        elif ".tsmconv." in k:
            out[k] = sd[k.replace(".tsmconv.", ".")].clone()
        else:
            out[k] = sd[k].clone()
    return out


def inherit_tsm(model: nn.Module) -> nn.Module:
    """Return an SDM TSM UNet that computes exactly what the SDDPM ``model`` computes (every p = 1)."""
    from .models import SpikingUNet, build_model

    if not isinstance(model, SpikingUNet) or model.config.arch != "sddpm":
        raise CheckpointError("inherit_tsm expects an SDDPM SpikingUNet (arch 'sddpm')")
    cfg = ModelConfig(**{**model.config.to_dict(), "arch": "sdm"})
    new = build_model(cfg)
    sd = inherit_tsm_state_dict(model.state_dict(), model.config.snn_steps)
    new.load_state_dict(sd, strict=True)
    return new.to(next(model.parameters()).device)


def inherit_tsm_file(src: str | os.PathLike, dst: str | os.PathLike, snn_steps: int | None = None) -> SdmcConfig:
    """CLI helper: SDDPM checkpoint -> native SDM file with inherited weights."""
    model, cfg = load_model(src, weights="auto", snn_steps=snn_steps)
    new = inherit_tsm(model)
    out = SdmcConfig(
        model=new.config,
        diffusion=cfg.diffusion,
        provenance={**cfg.provenance, "inherited_from": str(src), "tsm_init": "p=1"},
    )
    save_model(dst, new, out)
    return out


# -------------------------------------------------------------------------------------------- info
def describe(
    path: str | os.PathLike,
    weights: str = "auto",
    as_json: bool = False,
    unsafe: bool = False,
    allow_nonfinite: bool | None = None,
) -> str:
    """A readable summary of a checkpoint (architecture, parameter counts, provenance)."""
    sd, stored, info = read_checkpoint(path, weights=weights, unsafe=unsafe, allow_nonfinite=allow_nonfinite)
    cfg = resolve_config(sd, stored, info)
    model = build_and_load(sd, cfg.model, source=str(path))
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_tsm = sum(1 for k in sd if k.endswith(".tsmp"))
    data = {
        "file": str(path),
        "format": info["format"],
        "entry": info.get("entry"),
        "entries": info.get("entries"),
        "config_stored": stored is not None,
        "model": cfg.model.to_dict(),
        "diffusion": cfg.diffusion.to_dict(),
        "provenance": cfg.provenance,
        "parameters": n_params,
        "trainable": n_train,
        "tsm_layers": n_tsm,
        "state_dict_keys": len(sd),
    }
    extras: dict[str, Any] = {}
    if info["format"] == "sdmc-safetensors":
        from .models.bundled import read_extras

        extras = {k: v for k, v in read_extras(info["file"]).items() if v is not None}
        data.update(extras)
    if as_json:
        return json.dumps(data, indent=1)
    m = cfg.model
    kind = {
        "sddpm": "SDDPM spiking UNet",
        "sdm": "SDM spiking UNet with TSM",
        "ann": "ANN UNet (pytorch-ddpm)",
        "qann": f"quantised ANN UNet ({m.bits}-bit QuantReLU)",
        "qsnn": f"converted SNN of a {m.bits}-bit quantised ANN (IF, soft reset, "
        f"{'signed' if m.signed_spikes else 'unsigned'} spikes, {m.snn_norm} GroupNorm)",
    }[m.arch]
    lines = [
        f"{path}",
        f"  format       {info['format']} (weights from {info.get('entry')})",
        f"  model        {kind}",
        f"  channels     ch={m.ch} ch_mult={list(m.ch_mult)} res_blocks={m.num_res_blocks} img_ch={m.img_ch}",
    ]
    if m.arch == "qsnn":
        lines.append(f"  SNN          T={m.snn_steps}")
    elif m.spiking:
        t_note = (
            "" if (m.tsm or stored is not None) else " (not recorded in the file; assumed, override with --snn-steps)"
        )
        lines.append(
            f"  SNN          T={m.snn_steps}{t_note} neuron={m.neuron.upper()} threshold={m.threshold}"
            f" reset={'soft' if m.soft_reset else 'hard'}"
        )
        if n_tsm:
            lines.append(f"  TSM          {n_tsm} TSM convs x T={m.snn_steps} = {n_tsm * m.snn_steps} scalars")
    d = cfg.diffusion
    lines += [
        f"  parameters   {n_params:,} ({n_params / 2**20:.2f} M in 2^20 units, as the papers print); "
        f"trainable {n_train:,}",
        f"  diffusion    {d.schedule} beta {d.beta_1:g}..{d.beta_T:g}, {d.num_timesteps} steps, "
        f"{d.mean_type}-prediction",
    ]
    if cfg.provenance:
        lines.append("  provenance   " + ", ".join(f"{k}={v}" for k, v in cfg.provenance.items()))
    if "recipe" in extras:
        r = extras["recipe"]
        took = f" ({r['train_seconds']:.0f} s of training)" if r.get("train_seconds") else ""
        lines.append(f"  recipe       {r.get('command')}{took}")
    if "quality" in extras:
        from .metrics.quality import Quality

        q = extras["quality"]
        qual = Quality(q["n"], q["seeds"], q["per_seed"], q.get("floor"), q.get("floor_note") or "")
        lines.append(f"  quality      {q.get('solver')} {q.get('steps')} steps: {qual.line()}")
    return "\n".join(lines)
