"""Reproduce the literature: published figures beside memsim's, written to docs/reproductions.md.

Each case is a YAML file in ``studies/reproductions/`` (shipped in the wheel): the published
figures with their source, and the memsim setup that should reproduce them (hardware, workload,
plans). A kind module (registered in ``reproduce_kinds.py``) turns one case into ``Figure`` rows
by running memsim's own parts (accounting formulas, the simulator, the MIP planner); nothing here
knows a memsim figure in advance. The document is regenerated from scratch and is byte-identical
on a re-run: no times, no dates, fixed number formats.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from memsim.catalog import catalog_dir
from memsim.errors import SpecError, did_you_mean
from memsim.specio import read_yaml, validate

# the case types, re-exported: a kind module imports them from reproduce_spec (no cycle)
from memsim.studies.reproduce_spec import GAP, CaseResult, CaseSpec, Figure

__all__ = ["GAP", "CaseResult", "CaseSpec", "Figure", "case_names", "cases_dir", "load_case",
           "reproduce", "run_case", "select"]

Progress = Callable[[str], None]


# -- loading ------------------------------------------------------------------------------------


def cases_dir() -> Path:
    return catalog_dir("studies") / "reproductions"


def case_names() -> list[str]:
    return sorted(p.stem for p in cases_dir().glob("*.yaml"))


def load_case(name: str) -> tuple[CaseSpec, Path]:
    """A case by name (studies/reproductions/NAME.yaml) or a path to a user's own case file."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else cases_dir() / f"{name}.yaml"
    if name.endswith((".yaml", ".yml")) and not path.exists():
        raise SpecError("file not found", file=name, key="--case")
    if not path.exists():
        names = case_names()
        raise SpecError(f"no reproduction named {name!r}{did_you_mean(name, names)}; "
                        f"known: {', '.join(names)}", key="--case")
    spec = validate(CaseSpec, read_yaml(path), str(path))
    from memsim.studies.reproduce_kinds import KINDS

    if spec.kind not in KINDS:
        raise SpecError(f"unknown kind {spec.kind!r}{did_you_mean(spec.kind, KINDS)}", file=str(path),
                        key="kind")
    return spec, path


def select(names: Iterable[str] = (), quick: bool = False) -> list[str]:
    """The cases to run: those named, else the quick set with ``quick``, else all."""
    names = list(dict.fromkeys(names))
    if names:
        for n in names:
            load_case(n)  # unknown names fail before anything runs
        return names
    specs = sorted((load_case(n)[0] for n in case_names()), key=lambda c: (c.order, c.name))
    return [c.name for c in specs if c.quick or not quick]


# -- running ------------------------------------------------------------------------------------


def run_case(name: str, progress: Progress | None = None) -> CaseResult:
    from memsim.studies.reproduce_kinds import KINDS

    spec, path = load_case(name)
    say = progress or (lambda _msg: None)
    result = KINDS[spec.kind](spec, path, say)
    for f in result.figures:  # the YAML's explanation of a gap, shown only where there is one
        extra = spec.notes.get(f.key)
        if extra and (f.gap or f.memsim is None):
            f.note = f"{f.note.rstrip('.')}. {extra}" if f.note else extra
    return result


def reproduce(names: Iterable[str] = (), quick: bool = False, output: str | Path | None = None,
              progress: Callable[[str, int, int], None] | None = None) -> tuple[list[CaseResult], str]:
    """Run the selected cases and render the document; write it to ``output`` when given."""
    chosen = select(names, quick)
    results = []
    for i, name in enumerate(chosen):
        if progress:
            progress(name, i, len(chosen))
        say = (lambda msg, i=i, name=name: progress(f"{name}: {msg}", i, len(chosen))) if progress else None
        results.append(run_case(name, say))
    if progress:
        progress("done", len(chosen), len(chosen))
    from memsim.studies.reproduce_doc import render

    partial = bool(names) or quick
    text = render(results, full=not partial)
    if output is not None:
        write_document(text, Path(output), partial)
    return results, text


def default_output(partial: bool) -> Path | None:
    """Where ``reproduce`` writes without ``-o``: a full run into the project's own
    docs/reproductions.md when memsim runs from a checkout, else ./reproductions.md (never a
    docs/ folder made wherever the user stands); a partial run writes no file."""
    if partial:
        return None
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "docs").is_dir():
        return root / "docs" / "reproductions.md"
    return Path("reproductions.md")


def write_document(text: str, output: Path, partial: bool) -> None:
    """Write the document; a partial run (``--case``, ``--quick``) never replaces a full one."""
    if partial and output.is_file() and FULL_MARK in output.read_text(errors="replace")[:2000]:
        raise SpecError("holds the document of a full run, which a partial run (--case/--quick) "
                        "would replace; write the partial run elsewhere with -o", file=str(output),
                        key="--output")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
    except OSError as exc:
        raise SpecError(f"cannot write: {exc.strerror}", file=str(output), key="--output") from None


FULL_MARK = "Generated by `memsim reproduce` —"  # the header of a full run (see reproduce_doc.HEADER)
