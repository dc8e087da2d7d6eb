"""Frontends: turn torch models and checkpoints into the sdmc spiking IR.

``trace(model, example_shape)`` captures an ``nn.Module`` (torch, spikingjelly, sdmc or a paper's own
classes) and lowers it into a checked IR graph; ``from_checkpoint(path)`` loads a released ``.pt`` or native
``.safetensors`` model and traces it.  The package, one concept per module:

    capture    torch.fx tracing with concrete example values (shape arithmetic, loops, constants)
    layouts    where T and B sit in a traced tensor's torch shape
    lowering   the fx -> IR walk, naming, parameters
    modules    lowering rules keyed by module type
    functions  lowering rules keyed by torch function / tensor method
    structures TSM, membrane read-out and Swish, recognised by what they compute
    neurons    which spikingjelly neurons have known dynamics, and their IR node
    trace      the entry points and input-timing inference
    user_model a user's class from FILE.py:Class / module:Class with its checkpoint (sdmc ... --model)
"""

from .trace import from_checkpoint, steps_of, trace

__all__ = ["trace", "from_checkpoint", "steps_of"]
