"""The local pool: the engine of ``ClusterExecutor()`` on this machine, warm worker processes.

The parent side is :mod:`.engine` (:class:`~.engine.LocalPoolEngine`, imported by its module
path); the worker side is :mod:`._worker`. This package's ``__init__`` imports nothing: the
worker processes import the package, and must not pay for the parent's side.
"""
