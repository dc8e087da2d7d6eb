"""Frontends: turn torch models and checkpoints into the sdmc spiking IR.

``trace(model, example_shape)`` traces an ``nn.Module`` (torch + spikingjelly + sdmc layers) with
torch.fx; ``from_checkpoint(path)`` loads a released ``.pt`` or native ``.safetensors`` model and
traces it.  See :mod:`sdmc.frontends.fx`.
"""

from .fx import from_checkpoint, trace

__all__ = ["trace", "from_checkpoint"]
