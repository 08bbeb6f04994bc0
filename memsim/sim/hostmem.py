"""Host memory kinds: a plan whose host buffers are pageable copies at the links' pageable rate.

A copy from pageable memory is staged by the CUDA driver through its own pinned bounce buffer,
so it runs well below the link's pinned rate (NVIDIA's bandwidthTest ``--memory=pageable``
against ``--memory=pinned``). The simulator's copy engines read ``Link.rate``; a pageable plan
runs them on a System whose links carry their pageable bandwidth in both directions.
"""

from __future__ import annotations

from memsim.hardware.spec import Link, System


def pageable_link(link: Link) -> Link:
    """The link as a pageable copy sees it (unchanged when it defines no pageable rate)."""
    slow = link.pageable_bandwidth
    if slow is None:
        return link
    reverse = link.bandwidth_reverse or link.bandwidth
    return link.model_copy(update={"bandwidth": min(link.bandwidth, slow),
                                   "bandwidth_reverse": min(reverse, slow)})


def pageable_view(system: System) -> System:
    """``system`` with every link at its pageable rate."""
    return system.model_copy(update={"links": [pageable_link(link) for link in system.links]})
