"""Where a replay keeps bytes: buffers on the compute tier, files on disk, pinned host memory.

Each tier keeps a ledger of the bytes it holds, by tensor, and its peak: these are the replay's
measured peak bytes per tier (the buffers really allocated and the file extents really written).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
from pathlib import Path
from typing import Any

from memsim.validation.backend import Backend
from memsim.validation.diskio import ALIGN, DirectFile, Mode, align_up, aligned_buffer

# Bytes per disk request: the simulator's SSD request size (memsim.sim.flows.IO_REQUEST_BYTES,
# DeepSpeed's aio block size), which calibration measures the read_size_curve at.
REQUEST = 1 << 20


class Ledger:
    """Bytes held per tensor on one tier, and the peak of their sum."""

    def __init__(self):
        self.held: dict[str, int] = {}
        self.now = 0
        self.peak = 0
        self.lock = threading.Lock()  # copy engines allocate from their own threads

    def add(self, name: str, nbytes: int) -> None:
        with self.lock:
            self.now += nbytes - self.held.get(name, 0)
            self.held[name] = nbytes
            self.peak = max(self.peak, self.now)

    def remove(self, name: str) -> None:
        with self.lock:
            self.now -= self.held.pop(name, 0)

    def reset_peak(self) -> None:
        self.peak = self.now


class ComputeTier:
    """Buffers on the tier the kernels compute from: mmap'd DRAM on the CPU (page aligned, so the
    disk engine reads straight into them), device memory on CUDA."""

    def __init__(self, name: str, backend: Backend):
        self.name, self.backend = name, backend
        self.buffers: dict[str, Any] = {}
        self.ledger = Ledger()
        # Freed host buffers are kept for reuse by size, as DeepSpeed and FlexGen keep their
        # pinned swap buffers: a fresh mmap per fetch would page-fault and zero every page on
        # the copy thread, a cost no real offload engine pays per transfer.
        self.pool: dict[int, list[mmap.mmap]] = {}

    def alloc(self, key: str, nbytes: int, account: bool = True) -> Any:
        """A buffer of ``nbytes`` under ``key``; ``account=False`` defers the ledger entry to
        ``account()`` (a fetch's buffer counts from when its copy starts, as in the simulator)."""
        if key in self.buffers:
            return self.buffers[key]
        if self.backend.is_cuda:
            buf = self.backend.torch.empty(max(1, nbytes), dtype=self.backend.torch.uint8, device="cuda")
        else:
            free = self.pool.get(align_up(max(1, nbytes)))
            buf = free.pop() if free else aligned_buffer(nbytes)
        self.buffers[key] = buf
        if account:
            self.ledger.add(key, nbytes)
        return buf

    def account(self, key: str, nbytes: int) -> None:
        self.ledger.add(key, nbytes)

    def free(self, tensor: str) -> None:
        buf = self.buffers.pop(tensor, None)
        if isinstance(buf, mmap.mmap):
            self.pool.setdefault(len(buf), []).append(buf)
        self.ledger.remove(tensor)

    def close(self) -> None:
        """Unmap every buffer (held and pooled)."""
        for buf in [*self.buffers.values(), *(b for bufs in self.pool.values() for b in bufs)]:
            if isinstance(buf, mmap.mmap):
                with contextlib.suppress(BufferError):
                    buf.close()
        self.buffers.clear()
        self.pool.clear()

    def __contains__(self, tensor: str) -> bool:
        return tensor in self.buffers


class DiskTier:
    """A slow tier as files in a scratch folder, read and written around the page cache. On
    CUDA, transfers bounce through a pinned staging buffer (what GPUDirect-less systems do).

    A dead tensor's file is kept as swap space and reused by the next tensor of its size, as
    DeepSpeed's and FlexGen's swap files are allocated once: after a warm-up step every write
    overwrites allocated blocks. A write that allocates runs about a third slower on ext4 (1.6
    against 2.5 GB/s on a 2-vCPU virtio VM), which an offload engine does not pay per
    step.
    """

    def __init__(self, name: str, folder: Path, mode: Mode, backend: Backend):
        self.name, self.folder, self.mode, self.backend = name, folder, mode, backend
        self.files: dict[str, DirectFile] = {}
        self.spare: dict[int, list[DirectFile]] = {}  # by allocated bytes
        self.ledger = Ledger()
        self._made = 0

    def _file(self, tensor: str, extent: int = 0) -> DirectFile:
        f = self.files.get(tensor)
        if f is None:
            free = self.spare.get(align_up(max(1, extent)))
            if free:
                f = free.pop()
            else:
                self._made += 1
                f = DirectFile(self.folder / f"{self.name}.{self._made}.bin", self.mode)
            self.files[tensor] = f
        return f

    def write(self, tensor: str, buf: Any, nbytes: int, stream=None, offset: int = 0,
              reserve: int = 0) -> None:
        """Write ``nbytes`` at ``offset`` (an append: rounded down to the O_DIRECT alignment).
        ``reserve`` is the tensor's whole extent on this tier: a KV cache written a token at a
        time is allocated whole at its first write (FlexGen preallocates it; so does the
        simulator), so the file is extended to it and the ledger counts it."""
        extent = max(nbytes, reserve)
        self.ledger.add(tensor, max(extent, self.ledger.held.get(tensor, 0)))  # from the write's start
        host = self._to_host(buf, nbytes, stream)
        f = self._file(tensor, extent)
        if extent > nbytes and os.fstat(f.fd).st_size < align_up(extent):
            os.ftruncate(f.fd, align_up(extent))
        f.write_from(host, offset - offset % ALIGN, nbytes, REQUEST)

    def read(self, tensor: str, buf: Any, nbytes: int, stream=None) -> None:
        if not self.backend.is_cuda:
            self.files[tensor].read_into(buf, 0, nbytes, REQUEST)
            return
        staging = aligned_buffer(nbytes)  # disk → host (O_DIRECT) → pinned → device
        self.files[tensor].read_into(staging, 0, nbytes, REQUEST)
        torch = self.backend.torch
        pinned = torch.frombuffer(staging, dtype=torch.uint8)[:nbytes].pin_memory()
        buf.record_stream(stream)
        buf[:nbytes].copy_(pinned, non_blocking=True)
        stream.synchronize()

    def _to_host(self, buf: Any, nbytes: int, stream) -> mmap.mmap:
        if isinstance(buf, mmap.mmap):
            return buf
        staging = aligned_buffer(nbytes)  # device → host, then host → disk
        torch = self.backend.torch
        if stream is not None:
            buf.record_stream(stream)
        torch.frombuffer(staging, dtype=torch.uint8)[:nbytes].copy_(buf[:nbytes])
        return staging

    def delete(self, tensor: str) -> None:
        """The tensor is gone (the ledger stops counting it); its file becomes swap space."""
        f = self.files.pop(tensor, None)
        if f is not None:
            self.spare.setdefault(align_up(os.fstat(f.fd).st_size), []).append(f)
        self.ledger.remove(tensor)

    def close(self) -> None:
        for f in [*self.files.values(), *(f for fs in self.spare.values() for f in fs)]:
            f.close()
            with contextlib.suppress(OSError):
                os.unlink(f.path)
        self.files.clear()
        self.spare.clear()


class HostTier:
    """CUDA only: DRAM as a slow tier, pinned host tensors copied on the engine's stream."""

    def __init__(self, name: str, backend: Backend):
        self.name, self.backend = name, backend
        self.tensors: dict[str, Any] = {}
        self.ledger = Ledger()

    def write(self, tensor: str, buf: Any, nbytes: int, stream=None, offset: int = 0,
              reserve: int = 0) -> None:
        """Write ``nbytes`` at ``offset``; ``reserve``: the tensor's whole extent (see DiskTier)."""
        torch = self.backend.torch
        extent = max(nbytes, reserve, offset + nbytes)
        if tensor not in self.tensors:
            self.tensors[tensor] = torch.empty(max(1, extent), dtype=torch.uint8, pin_memory=True)
        if stream is not None:
            buf.record_stream(stream)
        self.tensors[tensor][offset:offset + nbytes].copy_(buf[:nbytes], non_blocking=True)
        self.ledger.add(tensor, max(extent, self.ledger.held.get(tensor, 0)))

    def read(self, tensor: str, buf: Any, nbytes: int, stream=None) -> None:
        if stream is not None:
            buf.record_stream(stream)
        buf[:nbytes].copy_(self.tensors[tensor][:nbytes], non_blocking=True)

    def delete(self, tensor: str) -> None:
        self.tensors.pop(tensor, None)
        self.ledger.remove(tensor)

    def close(self) -> None:
        self.tensors.clear()


def fill_random(buf: Any, nbytes: int, seed: int) -> None:
    """Deterministic non-zero bytes (so a disk write is not a hole in a sparse file)."""
    if isinstance(buf, mmap.mmap):
        pattern = (seed.to_bytes(8, "little") * 512)[:4096]
        for off in range(0, align_up(max(1, nbytes)), 4096):
            buf[off:off + 4096] = pattern
    else:
        buf.random_(0, 255)
