"""``python -m memsim``: the same entry point as the ``memsim`` console script."""

from memsim.cli import main

main()
