"""Checking where the user asked memsim to write, before any work is done.

A plan that took minutes should not end in a traceback because ``-o`` named a missing folder or
a directory: the path is checked up front and a mistake is a SpecError naming the flag.
"""

from __future__ import annotations

from pathlib import Path

from memsim.errors import SpecError


def check_output_file(path: str | None, flag: str) -> None:
    """A file to write: its folder must exist and it must not be a directory."""
    if not path:
        return
    target = Path(path)
    if target.is_dir():
        raise SpecError(f"{path} is a directory; give a file name", key=flag)
    parent = target.parent
    if not parent.exists():
        raise SpecError(f"folder {parent} does not exist (create it first)", key=flag)
    if not parent.is_dir():
        raise SpecError(f"{parent} is a file, not a folder", key=flag)


def check_output_folder(path: str | None, flag: str) -> None:
    """A results folder: it may be missing (it is created) but must not be a file, and the
    folder above it must exist."""
    if not path:
        return
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise SpecError(f"{path} is an existing file; give a folder", key=flag)
    for above in target.parents:
        if above.exists():
            if not above.is_dir():
                raise SpecError(f"{above} is a file, not a folder", key=flag)
            break
