"""Transports carry commands and files: local subprocesses or one SSH connection."""

from __future__ import annotations

from .base import CommandResult, Transport

__all__ = ["CommandResult", "Transport"]
