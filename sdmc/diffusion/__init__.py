"""Diffusion: the noise schedule, training loss, solvers."""

from .schedule import NoiseSchedule, make_betas

__all__ = ["NoiseSchedule", "make_betas"]
