"""Real disk I/O with the page cache out of the way, and scratch files that never outlive a run.

Why: a "disk" tier whose reads come back from the page cache measures DRAM, not the disk. Two
ways to bypass it, tried in order:

* ``O_DIRECT``: the kernel moves data straight between the device and our buffer. Buffers, sizes
  and offsets must be aligned to the logical block size, so buffers come from ``mmap`` (page
  aligned) and every file extent is rounded up to ``ALIGN``.
* ``fadvise``: ordinary buffered I/O, then ``fsync`` + ``posix_fadvise(POSIX_FADV_DONTNEED)``
  after each write and before each read, which drops the file's pages from the cache.

``probe_mode`` says which works on the file system of the scratch directory (ext4, xfs: O_DIRECT;
tmpfs refuses it). ``Scratch`` owns a temporary directory and removes it on exit, exception,
Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

ALIGN = 4096  # covers 512-byte and 4 KiB logical blocks
HUGE_PAGE = 2 << 20  # x86-64 and arm64 (4 KiB base pages) PMD size
Mode = Literal["O_DIRECT", "fadvise"]


def align_up(n: int, to: int = ALIGN) -> int:
    return -(-n // to) * to


def aligned_buffer(nbytes: int) -> mmap.mmap:
    """An anonymous, page-aligned, zero-filled buffer (what O_DIRECT needs), at least ALIGN bytes,
    backed by transparent huge pages where the kernel gives them (``huge_pages``).

    Why huge pages: a direct transfer's rate depends on the physical order of its buffer's pages.
    On a virtio VM a buffer whose 4 KiB pages descend (every page its own scatter-gather segment)
    reads at half the rate of one whose pages ascend in runs, and which order a buffer gets
    depends on what the process freed before it (the kernel hands freed pages back last in,
    first out), so calibration samples and a replay's staging pool drew different rates from
    the same disk (docs/validation.md). A 2 MiB huge page is physically contiguous: every 1 MiB
    request is one segment, in calibration and replay alike, as a pinned buffer behind an IOMMU
    is to a real offload engine. The mapping is private: Python's default shared anonymous
    mapping is shmem, which takes huge pages only under ``shmem_enabled``."""
    size = max(ALIGN, align_up(nbytes))
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if size >= HUGE_PAGE and hasattr(mmap, "MADV_HUGEPAGE"):
        with contextlib.suppress(OSError):
            buf.madvise(mmap.MADV_HUGEPAGE)
    return buf


def huge_pages() -> bool:
    """Whether ``aligned_buffer`` gets 2 MiB transparent huge pages on this kernel: the 2 MiB
    size's own setting, else the global one, is ``always`` or ``madvise``."""
    root = Path("/sys/kernel/mm/transparent_hugepage")

    def mode(path: Path) -> str | None:
        try:
            text = path.read_text()
        except OSError:
            return None
        return text[text.index("[") + 1:text.index("]")] if "[" in text else None

    size = mode(root / f"hugepages-{HUGE_PAGE >> 10}kB" / "enabled")
    chosen = mode(root / "enabled") if size in (None, "inherit") else size
    return chosen in ("always", "madvise")


def host_buffers() -> str:
    """What ``aligned_buffer`` maps here, as calibration records it."""
    return "2 MiB huge pages" if huge_pages() else "4 KiB pages"


def probe_mode(folder: str | Path) -> Mode:
    """``O_DIRECT`` if the folder's file system accepts an aligned direct write, else ``fadvise``."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return "fadvise"
    path = Path(folder) / ".memsim-odirect-probe"
    buf = aligned_buffer(ALIGN)
    try:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | flag, 0o600)
        try:
            os.pwrite(fd, buf, 0)
        finally:
            os.close(fd)
        return "O_DIRECT"
    except OSError:
        return "fadvise"
    finally:
        buf.close()
        with contextlib.suppress(OSError):
            path.unlink()


class DirectFile:
    """One file read and written around the page cache, by the chosen mode.

    ``read_into``/``write_from`` split a transfer into requests of ``request`` bytes (the size the
    calibration measured, so the System's read_size_curve applies) and release the GIL inside the
    system calls, so a copy thread overlaps the compute thread for real.
    """

    def __init__(self, path: str | Path, mode: Mode, create: bool = True):
        self.path, self.mode = Path(path), mode
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        if mode == "O_DIRECT":
            flags |= os.O_DIRECT
        self.fd = os.open(self.path, flags, 0o600)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> DirectFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def write_from(self, buf: mmap.mmap, offset: int, nbytes: int, request: int = 1 << 20) -> None:
        view = memoryview(buf)
        total = align_up(nbytes) if self.mode == "O_DIRECT" else nbytes
        done = 0
        while done < total:
            n = min(request, total - done)
            done += os.pwrite(self.fd, view[done:done + n], offset + done)
        view.release()
        if self.mode == "fadvise":
            os.fsync(self.fd)
            os.posix_fadvise(self.fd, offset, total, os.POSIX_FADV_DONTNEED)

    def read_into(self, buf: mmap.mmap, offset: int, nbytes: int, request: int = 1 << 20) -> None:
        total = align_up(nbytes) if self.mode == "O_DIRECT" else nbytes
        if self.mode == "fadvise":
            os.posix_fadvise(self.fd, offset, total, os.POSIX_FADV_DONTNEED)
        view = memoryview(buf)
        done = 0
        while done < total:
            n = min(request, total - done)
            got = os.preadv(self.fd, [view[done:done + n]], offset + done)
            if got <= 0:
                raise OSError(f"short read from {self.path} at {offset + done}")
            done += got
        view.release()

    def sync(self) -> None:
        os.fsync(self.fd)


class Scratch:
    """A temporary directory for disk tiers, removed on normal exit, exceptions, Ctrl-C and SIGTERM.

    SIGTERM is turned into KeyboardInterrupt while the scratch is open (SIGINT already is), so the
    ``finally`` that removes the directory always runs; the previous handlers come back on exit.
    """

    def __init__(self, parent: str | Path | None = None, prefix: str = "memsim-"):
        self.parent = Path(parent) if parent else Path(tempfile.gettempdir())
        self.prefix = prefix
        self.path: Path | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> Path:
        self.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=self.prefix, dir=self.parent))
        with contextlib.suppress(ValueError):  # not the main thread: leave handlers alone
            self._old[signal.SIGTERM] = signal.signal(signal.SIGTERM, _raise_interrupt)
        return self.path

    def __exit__(self, *exc) -> None:
        try:
            if self.path is not None:
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            for sig, handler in self._old.items():
                signal.signal(sig, handler)
            self._old.clear()


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def scratch(parent: str | Path | None = None) -> Iterator[Path]:
    with Scratch(parent) as path:
        yield path
