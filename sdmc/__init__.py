"""sdmc: a compiler and simulator for spiking diffusion models (SDDPM, SDM)."""

__version__ = "0.1.0"
