"""The forward (noising) process shared by training and every solver.

Discrete DDPM: ``q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)`` with ``abar_t = prod_{s<=t} (1 - beta_s)``,
t = 0..N-1 (index t here is the paper's t+1).  Linear betas 1e-4..0.02 over 1000 steps are the default;
the cosine schedule of Nichol & Dhariwal is available.
"""

from __future__ import annotations

import math

import torch

from ..config import DiffusionConfig
from ..errors import ConfigError


def make_betas(cfg: DiffusionConfig) -> torch.Tensor:
    """float64 betas of length ``cfg.num_timesteps``."""
    n = int(cfg.num_timesteps)
    if cfg.schedule == "linear":
        return torch.linspace(cfg.beta_1, cfg.beta_T, n, dtype=torch.float64)
    if cfg.schedule == "cosine":
        s = 0.008
        steps = torch.arange(n + 1, dtype=torch.float64) / n
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        abar = f / f[0]
        return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    raise ConfigError(f"diffusion.schedule: unknown schedule {cfg.schedule!r}; choose 'linear' or 'cosine'")


class NoiseSchedule:
    """Precomputed float64 tables of a discrete diffusion process.

    Attributes: ``betas``, ``alphas``, ``alphas_cumprod`` (abar), ``alphas_cumprod_prev``, ``sqrt_abar``,
    ``sqrt_one_minus_abar``, ``posterior_variance`` (beta tilde), ``log_snr`` (log abar/(1-abar)).
    """

    def __init__(self, cfg: DiffusionConfig | None = None) -> None:
        self.config = cfg or DiffusionConfig()
        if self.config.mean_type not in ("epsilon", "x0", "v"):
            raise ConfigError(f"diffusion.mean_type: unknown {self.config.mean_type!r}; choose 'epsilon', 'x0' or 'v'")
        self.betas = make_betas(self.config)
        self.num_timesteps = len(self.betas)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, 0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.sqrt_abar = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_abar = (1 - self.alphas_cumprod).sqrt()
        self.posterior_variance = self.betas * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)
        self.log_snr = torch.log(self.alphas_cumprod) - torch.log1p(-self.alphas_cumprod)

    @staticmethod
    def gather(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``table[t]`` reshaped to broadcast against ``like`` ([B, 1, 1, ...]) in ``like``'s dtype/device."""
        out = table.to(like.device)[t.to(like.device)].to(like.dtype)
        return out.view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Draw ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``."""
        return self.gather(self.sqrt_abar, t, x0) * x0 + self.gather(self.sqrt_one_minus_abar, t, x0) * noise

    def target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The regression target for ``mean_type``: eps, x0, or v = sqrt(abar) eps - sqrt(1-abar) x0."""
        mt = self.config.mean_type
        if mt == "epsilon":
            return noise
        if mt == "x0":
            return x0
        return self.gather(self.sqrt_abar, t, x0) * noise - self.gather(self.sqrt_one_minus_abar, t, x0) * x0

    def eps_from_output(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Convert a network output of any ``mean_type`` to the noise prediction eps."""
        mt = self.config.mean_type
        if mt == "epsilon":
            return out
        a = self.gather(self.sqrt_abar, t, x_t)
        s = self.gather(self.sqrt_one_minus_abar, t, x_t)
        if mt == "x0":
            return (x_t - a * out) / s
        return s * x_t + a * out

    def loss(
        self,
        model,
        x0: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Mean-squared error between ``model(x_t, t)`` and the target, t uniform over all steps."""
        if t is None:
            t = torch.randint(self.num_timesteps, (x0.shape[0],), device=x0.device, generator=generator)
        if noise is None:
            noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x_t = self.q_sample(x0, t, noise)
        return torch.mean((model(x_t, t) - self.target(x0, t, noise)) ** 2)
