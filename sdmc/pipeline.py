"""``sdmc demo``: the whole pipeline on the bundled digits data, on a laptop CPU, in minutes.

Each stage writes into ``--out`` and prints one summary line; stages that later work adds (training,
sampling, compile, energy, Lava) slot in here in order.  Nothing is faked: a stage that is not available
says so and is skipped.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch

from .config import DiffusionConfig, ModelConfig, SdmcConfig

DEMO_MODEL = ModelConfig(arch="sddpm", ch=32, ch_mult=(1, 2), num_res_blocks=1, snn_steps=4, img_ch=1,
                         img_size=16)


class Pipeline:
    def __init__(self, out: Path, quick: bool = False, device: str = "cpu", seed: int = 0) -> None:
        self.out, self.quick, self.device, self.seed = Path(out), quick, device, seed
        self.out.mkdir(parents=True, exist_ok=True)
        self.summary: dict[str, dict] = {}
        self.model_path: Path | None = None

    def stage(self, name: str, fn: Callable[[], dict]) -> None:
        t0 = time.perf_counter()
        print(f"[{name}] ...", flush=True)
        result = fn()
        result["seconds"] = round(time.perf_counter() - t0, 2)
        self.summary[name] = result
        print(f"[{name}] done in {result['seconds']:.1f}s: " +
              ", ".join(f"{k}={v}" for k, v in result.items() if k != "seconds"), flush=True)

    # ------------------------------------------------------------------------------------ stages
    def data(self) -> dict:
        from .data import load_dataset
        from .data.images import save_grid

        ds = load_dataset("digits", img_size=DEMO_MODEL.img_size)
        x = torch.stack([ds[i][0] for i in range(64)])
        save_grid(x, self.out / "data_digits.png", nrow=8)
        return {"images": len(ds), "grid": str(self.out / "data_digits.png")}

    def model(self) -> dict:
        from .checkpoint import save_model
        from .models import build_model

        torch.manual_seed(self.seed)
        cfg = SdmcConfig(model=DEMO_MODEL, diffusion=DiffusionConfig(), provenance={"stage": "untrained"})
        model = build_model(cfg.model)
        self.model_path = save_model(self.out / "untrained.safetensors", model, cfg)
        n = sum(p.numel() for p in model.parameters())
        return {"arch": cfg.model.arch, "T": cfg.model.snn_steps, "parameters": n, "file": str(self.model_path)}

    def run(self) -> dict:
        self.stage("data", self.data)
        self.stage("model", self.model)
        path = self.out / "summary.json"
        from .utils import atomic_write_text
        atomic_write_text(path, json.dumps(self.summary, indent=1))
        print(f"summary: {path}")
        return self.summary


def run_demo(out: str | Path = "runs/demo", quick: bool = False, device: str = "cpu", seed: int = 0) -> dict:
    return Pipeline(Path(out), quick=quick, device=device, seed=seed).run()
