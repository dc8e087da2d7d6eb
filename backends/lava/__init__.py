"""Lava-DL backend: netx HDF5 export of sequential spiking chains, Loihi quantisation, Lava CPU runner.

Importing this package does not import Lava.  ``compat.install_import_fixes()`` (called by ``run``) makes
lava-nc 0.10 / lava-dl 0.6 importable on Python 3.11; install them with ``python -m sdmc.backends.lava.install``.
"""
