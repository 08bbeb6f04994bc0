"""Validation on real hardware: calibrate this machine, replay plans with torch, compare with the
simulator. torch is imported lazily inside these modules, never by ``import memsim``."""

from __future__ import annotations

import importlib

_API = {
    "calibrate": "memsim.validation.calibrate",
    "write_system": "memsim.validation.calibrate",
    "replay": "memsim.validation.replay",
    "validate": "memsim.validation.compare",
    "load_suite": "memsim.validation.suite",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'memsim.validation' has no attribute {name!r}")
