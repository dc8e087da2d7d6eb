"""Custom Lava processes used by :mod:`sdmc.backends.lava.lava_processes`.

They live in their own package because Lava's compiler, when it looks for the ProcessModels of a Process,
imports every ``.py`` module in that Process's directory (and its parent package's modules).  Keep only
process definitions here; this ``__init__`` imports nothing, so importing the package does not import Lava.
"""
