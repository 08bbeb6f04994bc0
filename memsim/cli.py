"""The ``memsim`` command: parse, call the API, render. No logic of its own.

Every command takes ``--json`` and then prints exactly one JSON document on stdout. Errors are
rendered here from the exceptions the API raises: ``SpecError`` → exit 2 with one line naming the
file and key, ``Infeasible`` → exit 3 with the diagnosis. Never a traceback for a user mistake.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TextIO

import typer

try:  # typer vendors click from 0.25 on; before that its usage errors are click's own
    from typer.exceptions import Abort as _Abort
    from typer.exceptions import TyperException as _UsageError
except ImportError:  # pragma: no cover - older typer
    from click.exceptions import Abort as _Abort
    from click.exceptions import ClickException as _UsageError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from memsim import units
from memsim.errors import Infeasible, MemsimError, SpecError

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,  # --install-completion
                  help="Plan and simulate where every byte of a large model lives.")
hardware_app = typer.Typer(no_args_is_help=True, help="Machines in the catalog.")
workload_app = typer.Typer(no_args_is_help=True, help="Workloads in the catalog.")
app.add_typer(hardware_app, name="hardware")
app.add_typer(workload_app, name="workload")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)  # never break a file path or key across lines

def _print_version(value: bool) -> None:
    if value:
        from memsim import __version__

        print(f"memsim {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                help="Print memsim's version and exit.")] = False) -> None:
    """Plan and simulate where every byte of a large model lives."""


JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout and nothing else.")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a key by dotted path: training.zero_stage=3, hardware.tiers.dram.capacity=1TiB")]


def emit_json(doc: Any) -> None:
    """The one JSON document of a --json run: sorted keys, so output is byte-for-byte stable."""
    stream = _json_stream or sys.stdout
    stream.write(json.dumps(doc, indent=2, sort_keys=True, default=_jsonable) + "\n")
    stream.flush()


_json_stream: TextIO | None = None


@contextmanager
def _stdout_reserved_for_json() -> Iterator[None]:
    """While a --json command runs, file descriptor 1 points at stderr and only ``emit_json``
    writes to the real stdout: whatever a dependency prints (a C library writes to fd 1, past
    Python's ``sys.stdout``) lands on stderr instead of corrupting the document."""
    global _json_stream
    if not _is_fd1(sys.stdout):  # an in-process runner captured sys.stdout: write the document there
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    _json_stream = open(saved, "w", encoding="utf-8", closefd=False)  # noqa: SIM115 (closed below)
    try:
        yield
    finally:
        _json_stream.flush()
        _json_stream.close()
        _json_stream = None
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _is_fd1(stream: TextIO) -> bool:
    try:
        return stream.fileno() == 1
    except (AttributeError, OSError, ValueError):  # io.StringIO and friends have no descriptor
        return False


def _jsonable(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, set | tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def handle_errors(fn: Callable) -> Callable:
    """Turn memsim's own exceptions into exit codes 2 and 3 with a readable message; under
    --json the message is a JSON document too, so a script always has one to parse."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        as_json = bool(kwargs.get("as_json"))
        try:
            if not as_json:
                return fn(*args, **kwargs)
            with _stdout_reserved_for_json():
                return _run_for_json(fn, *args, **kwargs)
        except Infeasible as exc:
            render_diagnosis(exc.diagnosis)
            raise typer.Exit(3) from None
        except SpecError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True)
            raise typer.Exit(2) from None
        except MemsimError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def _run_for_json(fn: Callable, *args, **kwargs):
    """Run a --json command; memsim's errors become the document, then go on to the human
    handler (the same line on stderr, the same exit code)."""
    try:
        return fn(*args, **kwargs)
    except Infeasible as exc:
        emit_json({"feasible": False, "exit_code": 3, "error": str(exc),
                   "diagnosis": exc.diagnosis.to_dict(), **getattr(exc, "payload", {})})
        raise
    except SpecError as exc:
        emit_json(error_document(str(exc), 2, file=exc.file, key=exc.key))
        raise
    except MemsimError as exc:
        emit_json(error_document(str(exc), exc.exit_code))
        raise
    except KeyboardInterrupt:
        emit_json(error_document("interrupted", 130))
        raise


def error_document(message: str, exit_code: int, file: str | None = None, key: str | None = None) -> dict:
    """What a --json run prints when it fails: the same message as the human line, and where."""
    return {"error": message, "exit_code": exit_code, "file": file, "key": key}


def render_diagnosis(diagnosis) -> None:
    err.print(f"[bold red]does not fit:[/] {diagnosis.summary}", highlight=False)
    for s in diagnosis.shortfalls:
        err.print(f"  {s.tier}: needs {units.fmt_bytes(s.needed_bytes)}, has "
                  f"{units.fmt_bytes(s.capacity_bytes)} — short by {units.fmt_bytes(s.short_bytes)}",
                  highlight=False)
    for suggestion in diagnosis.suggestions:
        err.print(f"  [green]would fit:[/] {suggestion}", highlight=False)


# -- hardware -------------------------------------------------------------------------------------


@hardware_app.command("list")
@handle_errors
def hardware_list(as_json: JsonOpt = False) -> None:
    """List the machines in the catalog."""
    from memsim.hardware import list_systems

    systems = list_systems()
    if as_json:
        emit_json({"systems": [_system_summary(s) for s in systems]})
        return
    table = Table("name", "GPU", "tiers", "description", title="hardware catalog")
    for s in systems:
        gpu = s.gpu
        tiers = ", ".join(f"{n} {units.fmt_bytes(t.capacity)}" for n, t in s.tiers.items())
        table.add_row(s.name, f"{gpu.count}x {gpu.model or ''}" if gpu else "—", tiers, s.description)
    out.print(table)


def _system_summary(s) -> dict:
    return {"name": s.name, "description": s.description,
            "tiers": {n: {"kind": t.kind, "capacity_bytes": t.capacity} for n, t in s.tiers.items()},
            "tier_kinds": sorted({t.kind for t in s.tiers.values()}),
            "gpu": s.gpu.model if s.gpu else None}


def _print_ports_and_curves(system) -> None:
    """Shared switch ports and the measured curves of tiers, when a machine has them."""
    if system.ports:
        ports = Table("port", "bandwidth/dir", "links behind it", title="shared ports")
        for name, port in system.ports.items():
            behind = [link.name for link in system.links if link.port == name]
            ports.add_row(name, units.fmt_bandwidth(port.bandwidth), ", ".join(behind) or "—")
        out.print(ports)
    curves = Table("tier", "curve", "points", title="curves")
    for name, tier in system.tiers.items():
        if tier.read_size_curve:
            curves.add_row(name, "read size → throughput", ", ".join(
                f"{units.fmt_bytes(x)}: {units.fmt_bandwidth(y)}" for x, y in tier.read_size_curve.points))
        if tier.concurrency_curve:
            curves.add_row(name, "streams → bandwidth", ", ".join(
                f"{x:g}: {units.fmt_bandwidth(y)}" for x, y in tier.concurrency_curve.points))
    if curves.row_count:
        out.print(curves)


@hardware_app.command("show")
@handle_errors
def hardware_show(name: Annotated[str, typer.Argument(help="catalog name or path to a YAML file")],
                  overrides: SetOpt = None, as_json: JsonOpt = False) -> None:
    """Show one machine: tiers, links, routes between tiers, compute."""
    from memsim.hardware import Topology, load_system

    system = load_system(name, [f"hardware.{o}" if not o.startswith("hardware.") else o
                                for o in overrides or []])
    topo = Topology(system)
    fast = system.fast_tier
    routes = {t: {"via": topo.route(t, fast).via, "bottleneck_bytes_per_s": topo.bottleneck(t, fast)}
              for t in system.tiers if t != fast}
    if as_json:
        emit_json({**system.model_dump(mode="json"), "routes_to_" + fast: routes})
        return
    out.print(f"[bold]{system.name}[/] — {system.description}")
    table = Table("tier", "kind", "capacity", "read", "write", "latency", f"→ {fast} via", "bottleneck",
                  title="tiers")
    for n, t in system.tiers.items():
        r = routes.get(n)
        table.add_row(n, t.kind, units.fmt_bytes(t.capacity) + (" /GPU" if t.is_per_device else ""),
                      units.fmt_bandwidth(t.read_bw), units.fmt_bandwidth(t.write_bw),
                      units.fmt_time(t.latency) if t.latency else "—",
                      " → ".join(r["via"]) or "direct" if r else "—",
                      units.fmt_bandwidth(r["bottleneck_bytes_per_s"]) if r else "—")
    out.print(table)
    links = Table("link", "kind", "ends", "bandwidth/dir", "latency", "port", title="links")
    for link in system.links:
        fwd, rev = link.rate(link.ends[0]), link.rate(link.ends[1])
        rate = units.fmt_bandwidth(fwd) if fwd == rev else \
            f"{units.fmt_bandwidth(fwd)} → / {units.fmt_bandwidth(rev)} ←"
        links.add_row(link.name, link.kind, " ↔ ".join(link.ends), rate,
                      units.fmt_time(link.latency) if link.latency else "—", link.port or "—")
    out.print(links)
    _print_ports_and_curves(system)
    comp = Table("unit", "model", "count", "memory", "peak", "mem bw", title="compute")
    for n, c in system.compute.items():
        peak = ", ".join(f"{d} {units.fmt_flops(v)}" for d, v in c.peak_flops.items())
        comp.add_row(n, c.model or "—", str(c.count), c.memory, peak, units.fmt_bandwidth(c.mem_bw))
    out.print(comp)


# -- workloads ------------------------------------------------------------------------------------


@workload_app.command("list")
@handle_errors
def workload_list(as_json: JsonOpt = False) -> None:
    """List the workloads in the catalog."""
    from memsim.specio import catalog_names
    from memsim.workloads import load_workload
    from memsim.workloads.models import list_models
    from memsim.workloads.summary import list_entry

    rows = [list_entry(load_workload(name)) for name in catalog_names("workloads")]
    if as_json:
        emit_json({"workloads": rows, "models": list_models()})
        return
    table = Table("name", "kind", "model", "params", "description", title="workload catalog")
    for r in rows:
        table.add_row(r["name"], r["kind"], r["model"], f"{r['params'] / 1e9:.2f}B", r["description"])
    out.print(table)
    out.print(f"models: {', '.join(list_models())}", highlight=False)


@workload_app.command("show")
@handle_errors
def workload_show(name: Annotated[str, typer.Argument(help="catalog name or path to a workload YAML")],
                  overrides: SetOpt = None, as_json: JsonOpt = False) -> None:
    """Show one workload: parameters, per-device bytes by class, FLOPs and tokens per step."""
    from memsim.workloads import build_trace, load_workload
    from memsim.workloads.summary import workload_summary

    workload = load_workload(name, overrides or [])
    doc = workload_summary(workload, build_trace(workload))
    if as_json:
        emit_json(doc)
        return
    out.print(f"[bold]{doc['name']}[/] ({doc['kind']}, {doc['model']}) — {doc['description']}")
    info = Table("", "", title="workload", show_header=False)
    info.add_row("parameters", f"{doc['params']:,} ({doc['params'] / 1e9:.2f}B; "
                               f"active {doc['active_params'] / 1e9:.2f}B)")
    info.add_row("layers", str(doc["layers"]))
    info.add_row("job", ", ".join(f"{k}={v}" for k, v in doc["job"].items() if v is not None and k != "vllm"))
    info.add_row("tokens / step", f"{doc['tokens_per_step']:,}")
    info.add_row("model FLOPs / step", f"{doc['flops_per_step']:.4g}")
    t = doc["trace"]
    info.add_row("trace", f"{t['blocks']} blocks, {t['op_templates']} op templates → {t['ops']:,} ops, "
                          f"{t['tensors']:,} tensors, {units.fmt_bytes(t['json_bytes'])} JSON"
                 + (f", {t['requests']:,} requests" if t["requests"] else ""))
    out.print(info)
    mem = Table("class", "bytes", "GiB", "GB", title="per-device bytes")
    for key, value in doc["per_device_bytes"].items():
        mem.add_row(key, f"{value:,}", f"{value / 2**30:.2f}", f"{value / 1e9:.2f}")
    out.print(mem)
    for note in doc.get("workload_notes", []):
        out.print(f"note: {note}", highlight=False)


# -- torch tracer ---------------------------------------------------------------------------------


@app.command("trace")
@handle_errors
def trace_cmd(
    factory: Annotated[str, typer.Argument(
        help="MODULE:FACTORY or path/to/file.py:FACTORY, a callable returning an nn.Module")],
    inputs: Annotated[list[str] | None, typer.Option(
        "--input", help="shape of a forward input, BxS or BxS:dtype (8x512:int64); repeat per input")] = None,
    args: Annotated[list[str] | None, typer.Option(
        "--arg", help="keyword argument for the factory, KEY=VALUE (model=llama-3-8b); repeatable")] = None,
    dtype: Annotated[str | None, typer.Option(help="cast the module to fp32 | bf16 | fp16")] = None,
    train: Annotated[bool, typer.Option("--train", help="also run backward of the output's sum")] = False,
    attention: Annotated[str, typer.Option(
        help="math: sdpa as torch runs it on meta (bmm, softmax); flash: the fused GPU kernel")] = "math",
    output: Annotated[str, typer.Option("-o", "--output", help="Trace JSON to write")] = "trace.json",
    as_json: JsonOpt = False,
) -> None:
    """Trace a real PyTorch module on the meta device (no real memory) into a Trace JSON."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise SpecError("memsim trace needs torch: pip install torch==2.13.0 (CPU build)") from None
    from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

    from memsim.outpaths import check_output_file
    from memsim.progress import Progress
    from memsim.workloads.torch_trace import summary, trace_factory

    check_output_file(output, "-o")

    bar = Progress(SpinnerColumn(), TextColumn("[bold]tracing {task.description}: {task.completed} ops"),
                   TimeElapsedColumn(), console=err, transient=True, disable=as_json)
    task = bar.add_task(factory, total=None)
    with bar:
        trace = trace_factory(factory, inputs or [], dtype=dtype, train=train, attention=attention,
                              args=args or [], progress=lambda n: bar.update(task, completed=n))
    trace.save(output)
    info = {**summary(trace), "path": output}
    if as_json:
        emit_json(info)
        return
    _render_trace(trace, info)


def _render_trace(trace, info: dict) -> None:
    passes = "forward+backward" if trace.meta["train"] else "forward"
    table = Table("figure", "value", title=f"{trace.name} ({passes}, inputs "
                  f"{' '.join(trace.meta['inputs'])}, {trace.meta['attention']} attention, traced on meta)")
    table.add_row("ops", str(info["ops"]))
    table.add_row("tensors", str(info["tensors"]))
    table.add_row("parameters", f"{info['params']:,}")
    table.add_row("GFLOPs (torch flop counter)", f"{info['flops'] / 1e9:,.3f}")
    for key, value in info["per_device_bytes"].items():
        label = "peak live activations" if key == "activations" else key
        table.add_row(label, units.fmt_bytes(value))
    out.print(table)
    top = Table("op", "kind", "phase", "GFLOPs", "share", title="top ops by FLOPs")
    for op in info["top_ops"]:
        top.add_row(op["name"], op["kind"], op["phase"], f"{op['flops'] / 1e9:,.3f}",
                    f"{op['flops'] / info['flops']:.1%}" if info["flops"] else "—")
    out.print(top)
    out.print(f"wrote {info['path']}")


# -- planner --------------------------------------------------------------------------------------


@app.command("plan")
@handle_errors
def plan_cmd(
    hardware: Annotated[str, typer.Option("--hardware", "-H", help="catalog name or System YAML")],
    workload: Annotated[str, typer.Option("--workload", "-w", help="catalog name or workload YAML")],
    planner: Annotated[str, typer.Option(help="planner preset (planners/*.yaml) or kind: mip, flexgen, "
                                         "resident, zero-offload, ...")] = "mip",
    overrides: SetOpt = None,
    time_limit: Annotated[float, typer.Option("--time-limit", help="solver time limit, seconds")] = 10.0,
    output: Annotated[str | None, typer.Option("-o", "--output",
                                               help="write the plan (.yaml or .json)")] = None,
    emit: Annotated[str | None, typer.Option(
        "--emit", help="also write the plan as a framework config: deepspeed, accelerate, vllm, "
                       "flexgen")] = None,
    emit_path: Annotated[str | None, typer.Option(
        "--emit-path", help="where --emit writes (default: ds_config.json, device_map.json, vllm.yaml, "
                            "flexgen.args)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Plan where every byte lives (MIP or a named baseline), simulate it and the baselines."""
    from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

    from memsim.api import plan_case
    from memsim.outpaths import check_output_file
    from memsim.progress import Progress

    check_output_file(output, "-o")
    if emit_path and not emit:
        raise SpecError("--emit-path needs --emit FORMAT", key="--emit-path")
    if emit:
        from memsim.emit import check_format, default_path

        check_format(emit)  # an unknown format is refused before any planning
        emit_path = emit_path or default_path(emit)
        check_output_file(emit_path, "--emit-path")
    if not time_limit > 0 or time_limit == float("inf"):
        raise SpecError(f"expected a positive number of seconds, got {time_limit}", key="--time-limit")
    bar = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), TimeElapsedColumn(),
                   console=err, transient=True, disable=as_json)
    task = bar.add_task("loading", total=None)
    with bar:
        report = plan_case(hardware, workload, planner, overrides or [], time_limit,
                           progress=lambda msg: bar.update(task, description=msg))
    if output:
        report.plan.save(output)
    doc = report.to_dict()
    if output:
        doc["path"] = output
    if emit:
        from memsim.emit import write_config

        doc["emit"] = write_config(report, emit, emit_path)
    if as_json:
        emit_json(doc)
        return
    _render_plan(doc)
    if doc.get("batch_search"):  # the searched batch, for the commands printed below
        workload = f"{workload} --set inference.batch_size={doc['batch_search']['batch_size']}"
    if output:
        out.print(f"wrote {output} (reproduce: memsim simulate --hardware {hardware} --workload {workload} "
                  f"--plan {output})")
    if emit:
        _render_emit(doc["emit"], hardware, workload)


def _render_emit(info: dict, hardware: str, workload: str) -> None:
    if info["feasible"]:
        figures = (f"{units.fmt_time(info['step_time_s'])} per step, {info['tokens_per_s']:.4g} tokens/s "
                   f"(simulated{', same as the plan' if info['exact'] else ''})")
    else:
        figures = "[bold red]does not fit[/] (simulated)"
    out.print(f"wrote {escape(info['path'])} ({info['format']}): {figures}", highlight=False)
    for note in info["notes"]:
        out.print(f"  [yellow]not expressible:[/] {escape(note)}", highlight=False)
    out.print(f"  run: {escape(info['usage'])}", highlight=False)
    out.print(f"  check: memsim simulate --hardware {escape(hardware)} --workload {escape(workload)} "
              f"--plan {escape(info['path'])}", highlight=False)


def _render_slo(rows: list[dict]) -> None:
    table = Table("GPUs", "KV tiers", "TTFT p99", "TBT p99", "meets SLO", "goodput", "$/Mtok",
                  title="serving.slo: deployments simulated, best first")
    for c in rows:
        tiers = ", ".join(f"{t} {units.fmt_bytes(b)}" for t, b in c["kv_tiers"].items()) or "HBM only"
        usd = f"{c['usd_per_mtok']:.3f}" if c["usd_per_mtok"] is not None else "—"
        gpus = f"{c['gpus']} = {c.get('replicas', c['gpus'])}×TP{c.get('tensor', 1)}"
        table.add_row(gpus, tiers, f"{c['ttft_p99_s']:.3g} s", f"{c['tbt_p99_s'] * 1e3:.3g} ms",
                      "yes" if c["meets_slo"] else "no", f"{c['goodput_rps']:.3g} req/s", usd)
    out.print(table)


def _render_plan(doc: dict) -> None:
    from memsim.contracts.plan import Plan
    from memsim.headline import headline

    plan, info = doc["plan"], doc["planner"]
    out.print(f"[bold]{escape(headline(doc))}[/]", highlight=False)
    out.print(f"planner {info['name']} ({info['status']})", highlight=False)
    if doc.get("fallback"):
        out.print(f"[bold]{escape(doc['fallback']['summary'])}[/]", highlight=False)
    where = Table("class", "home", title="placement")
    for cls in ("weight", "grad", "optimizer", "kv", "activation"):
        split = plan["placement"].get(cls)
        if split:
            ranked = sorted(split.items(), key=lambda i: -i[1])
            where.add_row(cls, ", ".join(f"{t} {f:.1%}" for t, f in ranked))
    compute = (doc.get("job") or {}).get("compute_tier", "the compute tier")
    others = [c for c in ("weight", "grad", "optimizer", "kv", "activation") if not plan["placement"].get(c)]
    if others:
        where.add_row(", ".join(others), f"{compute} 100.0% (compute tier)")
    out.print(where)
    policy = Table("decision", "value", title="policy")
    counts = Plan.from_dict(plan).policy_counts(doc["layers"])
    policy.add_row("activations", ", ".join(f"{k} {n} layers" for k, n in counts.items() if n))
    if plan.get("activation_tier"):
        policy.add_row("activation tier", plan["activation_tier"])
    policy.add_row("optimizer step on", plan["optimizer_device"])
    policy.add_row("prefetch depth", str(plan["prefetch_depth"]))
    if plan.get("num_gpu_batches"):
        policy.add_row("batch schedule", f"{plan['gpu_batch_size']} × {plan['num_gpu_batches']} GPU batches"
                       + (", attention on CPU" if plan.get("cpu_attention") else ""))
    if doc.get("batch_search"):
        bs = doc["batch_search"]
        bound = f", latency ≤ {units.fmt_time(bs['max_latency_s'])}" if bs.get("max_latency_s") else ""
        policy.add_row("batch size", f"{bs['batch_size']} (auto: best of {len(bs['candidates'])} "
                       f"sizes searched{bound})")
    if plan.get("serving"):
        s = plan["serving"]
        swap = f" to {s['swap_tier']} ({units.fmt_bytes(s['swap_bytes'])})" if s.get("swap_tier") else ""
        policy.add_row("serving", f"max_num_seqs {s['max_num_seqs']}, preempt {s['preempt']}{swap}")
    out.print(policy)
    if doc.get("slo") is not None:
        _render_slo(doc["slo"])
    figures = Table("figure", "value", "source", title="result")
    label = "makespan" if doc["kind"] == "serving" else "step time"
    figures.add_row(label, units.fmt_time(doc["step_time_s"]), "simulated")
    if info.get("estimate_s") is not None:
        figures.add_row("step time", units.fmt_time(info["estimate_s"]), "MIP estimate")
    figures.add_row("tokens/s", f"{doc['tokens_per_s']:.4g}", "simulated")
    figures.add_row("MFU", f"{doc['mfu']:.1%}", "simulated")
    for tier, peak in sorted(doc["peak_bytes"].items()):
        cap = doc["capacity_bytes"].get(tier)
        figures.add_row(f"peak {tier}", f"{units.fmt_bytes(peak)} of {units.fmt_bytes(cap)}" if cap else
                        units.fmt_bytes(peak), "simulated")
        for line, nbytes in doc.get("reserved_bytes", {}).get(tier, {}).items():
            figures.add_row(f"  {line}", units.fmt_bytes(nbytes), "hardware/overheads")
    if info.get("solve_s") is not None:
        gap = f", gap {info['gap']:.2%}" if info.get("gap") is not None else ""
        figures.add_row("solve", f"{units.fmt_time(info['solve_s'])}{gap}", info["name"])
    for name, value in _serving_figures(doc.get("serving")):
        figures.add_row(name, value, "simulated")
    out.print(figures)
    _overload_warning(doc.get("serving"))
    if doc["baselines"]:
        base = Table("baseline", "fits", "step time (simulated)", "tokens/s", "vs plan", title="baselines")
        for b in doc["baselines"]:
            ok = b["feasible"]
            ratio = f"{b['step_time_s'] / doc['step_time_s']:.2f}×" if ok and doc["step_time_s"] else "—"
            step = units.fmt_time(b["step_time_s"]) if ok else b["note"]
            tps = f"{b['tokens_per_s']:.4g}" if ok else "—"
            base.add_row(b["name"], "yes" if ok else "no", step, tps, ratio)
        out.print(base)
    if doc.get("upgrade"):
        _render_upgrade(doc["upgrade"])
    for note in doc["notes"]:
        out.print(f"note: {note}", highlight=False)


def _render_upgrade(up: dict) -> None:
    """The buyable options for a throughput target, ranked, each simulated; the plan above is the first."""
    target = up["target_tokens_per_s"]
    verdict = "meets" if up.get("meets_target") else "does NOT meet"
    table = Table("option", "tokens/s (simulated)", "meets", "$/h", "buy",
                  title=f"upgrades for {target:g} tokens/s")
    for o in up.get("options", []):
        tps = f"{o['simulated_tokens_per_s']:.4g}" if o["simulated_tokens_per_s"] else o["note"] or "—"
        hourly = f"{o['usd_per_hour']:,.2f}" if o["usd_per_hour"] is not None else "—"
        buy = f"${o['cost_usd']:,.0f}" if o["cost_usd"] else "—"
        table.add_row(o["label"], tps, "yes" if o["meets_target"] else "no", hourly, buy)
    out.print(table)
    out.print(f"upgrade: {up.get('chosen')} {verdict} {target:g} tokens/s (planned and simulated above)",
              highlight=False)


def _serving_figures(serving: dict | None) -> list[tuple[str, str]]:
    """(figure, value) rows of a serving run: what a user of an online service asks first."""
    if not serving:
        return []
    rows = [("requests done", f"{serving['completed']} / {serving['requests']}")]
    for name in ("ttft_s", "tbt_s"):
        q = serving[name]
        rows.append((name[:-2].upper() + " p50 / p99",
                     f"{units.fmt_time(q['p50'])} / {units.fmt_time(q['p99'])}"))
    rows.append(("KV utilisation", f"{serving['kv_utilization']:.1%}"))
    rows.append(("preemptions", str(serving["preemptions"])))
    if serving.get("pools"):  # disaggregated prefill/decode (memsim/sim/disaggregated.py)
        q = serving["kv_transfer_seconds"]
        rows.append(("KV transfer p50 / p99", f"{units.fmt_time(q['p50'])} / {units.fmt_time(q['p99'])}"
                     f" ({units.fmt_bytes(serving['kv_transfer_bytes'])} sent)"))
        for role, pool in serving["pools"].items():
            pp = f" PP{pool['pipeline']}" if pool["pipeline"] > 1 else ""
            rows.append((f"{role} pool", f"{pool['instances']} × TP{pool['tensor']}{pp}, "
                                         f"busy {pool['utilization']:.0%}"))
    return rows


def _overload_warning(serving: dict | None) -> None:
    if serving and serving.get("overloaded"):
        out.print(f"[bold yellow]arrivals exceed capacity:[/] {escape(serving['overload_reason'])}",
                  highlight=False)


# -- simulator ------------------------------------------------------------------------------------


@app.command("simulate")
@handle_errors
def simulate_cmd(
    hardware: Annotated[str, typer.Option("--hardware", "-H", help="catalog name or System YAML")],
    workload: Annotated[str, typer.Option("--workload", "-w", help="catalog name or workload YAML")],
    plan: Annotated[str | None, typer.Option("--plan", help="a plan file (memsim plan -o)")] = None,
    planner: Annotated[str | None, typer.Option(help="plan first with this planner preset")] = None,
    timeline: Annotated[str | None, typer.Option(
        "--timeline", help="write a Chrome-trace JSON (open in ui.perfetto.dev)")] = None,
    overrides: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Simulate a case event by event: step time, tokens/s, bytes per tier, where time went."""
    from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

    from memsim.api import simulate_case
    from memsim.progress import Progress

    if plan and planner:
        raise SpecError("give --plan or --planner, not both", key="--plan")
    from memsim.outpaths import check_output_file

    check_output_file(timeline, "--timeline")
    bar = Progress(SpinnerColumn(), TextColumn("[bold]simulating"), TimeElapsedColumn(),
                   console=err, transient=True, disable=as_json)
    with bar:
        bar.add_task("simulating", total=None)
        _, doc = simulate_case(hardware, workload, plan_path=plan, planner=planner,
                               overrides=overrides or [], timeline_path=timeline)
    if as_json:
        emit_json(doc)
        return
    _render_simulation(doc)


def _render_simulation(doc: dict) -> None:
    from memsim.headline import headline

    info = doc["planner"]
    out.print(f"[bold]{escape(headline(doc))}[/]", highlight=False)
    out.print(f"plan {info['name']} ({info['status']})", highlight=False)
    figures = Table("figure", "value", title="simulated")
    label = "makespan" if doc["kind"] == "serving" else "step time"
    figures.add_row(label, units.fmt_time(doc["step_time_s"]))
    figures.add_row("tokens/s", f"{doc['tokens_per_s']:.4g}")
    figures.add_row("MFU", f"{doc['mfu']:.1%}")
    for key, secs in doc["breakdown"].items():
        share = secs / doc["step_time_s"] if doc["step_time_s"] else 0.0
        if share > 1e-6:
            figures.add_row(f"  {key.replace('_', ' ')}", f"{units.fmt_time(secs)} ({share:.0%})")
    for name, value in _serving_figures(doc.get("serving")):
        figures.add_row(name, value)
    figures.add_row("events", f"{doc['events']:,} in {units.fmt_time(doc['wall_s'])}")
    out.print(figures)
    _overload_warning(doc.get("serving"))
    tiers = Table("tier", "peak", "mean", "capacity", "peak/capacity", title="memory")
    for tier, peak in doc["peak_bytes"].items():
        cap = doc["capacity_bytes"][tier]
        tiers.add_row(tier, units.fmt_bytes(peak), units.fmt_bytes(doc["mean_bytes"][tier]),
                      units.fmt_bytes(cap), f"{peak / cap:.1%}")
        for line, nbytes in doc.get("reserved_bytes", {}).get(tier, {}).items():
            tiers.add_row(f"  {line}", units.fmt_bytes(nbytes), units.fmt_bytes(nbytes), "",
                          f"{nbytes / cap:.1%}")
    out.print(tiers)
    if doc["link_busy"]:
        links = Table("copy engine", "busy", title="links")
        for name, busy in doc["link_busy"].items():
            links.add_row(name, f"{busy:.1%}")
        out.print(links)
    for note in doc.get("notes", []):
        out.print(f"note: {note}", highlight=False)
    if doc.get("timeline"):
        out.print(f"timeline: {doc['timeline']} (open in https://ui.perfetto.dev)", highlight=False)


# -- validation -----------------------------------------------------------------------------------


def _progress(total: int | None, description: str, quiet: bool):
    """A rich progress bar on stderr (never on stdout, which --json keeps for its one document)."""
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

    from memsim.progress import Progress

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/"
                   "{task.total}"), TimeElapsedColumn(), console=err, transient=True, disable=quiet)
    return bar, bar.add_task(description, total=total)


@app.command("calibrate")
@handle_errors
def calibrate_cmd(
    output: Annotated[str, typer.Option("-o", "--output", help="System YAML to write")] = "my-machine.yaml",
    device: Annotated[str, typer.Option(help="cpu | cuda")] = "cpu",
    quick: Annotated[bool, typer.Option("--quick", help="small sizes, few repeats (tests)")] = False,
    scratch: Annotated[str | None, typer.Option(help="folder for temporary disk files")] = None,
    name: Annotated[str | None, typer.Option(help="system name (default: host-device)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure this machine (GEMM, memory, disk, copies, overlap) and write it as a System YAML."""
    from memsim.validation.calibrate import STEPS, calibrate, check_writable, write_system

    check_writable(output)
    bar, task = _progress(STEPS[(device, quick)], "calibrating", as_json)
    with bar:
        system = calibrate(device, quick, scratch, name,
                           progress=lambda msg: bar.update(task, advance=1, description=msg))
    path = write_system(system, output)
    if as_json:
        emit_json({"path": str(path), "system": system.model_dump(mode="json", exclude_none=True)})
        return
    cpu = system.gpu or system.cpu
    table = Table("figure", "value", title=f"{system.name} (measured, median of repeats)")
    for dtype, rate in cpu.peak_flops.items():
        table.add_row(f"best GEMM {dtype}", units.fmt_flops(rate))
    for kind, rate in cpu.achieved_flops.items():
        table.add_row(f"achieved {kind}", units.fmt_flops(rate))
    table.add_row("memory bandwidth", units.fmt_bandwidth(cpu.mem_bw))
    table.add_row("launch overhead", units.fmt_time(cpu.launch_overhead))
    table.add_row("copy slowdown", f"{cpu.copy_slowdown:.1%}")
    disk = system.tiers["disk"]
    table.add_row(f"disk read / write ({system.calibration['disk_mode']})",
                  f"{units.fmt_bandwidth(disk.read_bw)} / {units.fmt_bandwidth(disk.write_bw)}")
    table.add_row("disk latency (4 KiB)", units.fmt_time(disk.latency))
    out.print(table)
    out.print(f"wrote {path}")


@app.command("validate")
@handle_errors
def validate_cmd(
    hardware: Annotated[str, typer.Option(help="System YAML (from `memsim calibrate`) or catalog name")],
    workload: Annotated[str | None, typer.Option(help="one workload (YAML path or catalog name)")] = None,
    plan: Annotated[str | None, typer.Option(help="plan file for --workload (default: all resident)")] = None,
    suite: Annotated[str | None, typer.Option(help="suite YAML, e.g. validation/cpu-disk.yaml")] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda")] = "cpu",
    repeats: Annotated[int | None, typer.Option(min=1, help="timed steps per case (median)")] = None,
    warmup: Annotated[int | None, typer.Option(min=0, help="untimed steps per case before the timed "
                                               "ones (default: the suite's, else 2)")] = None,
    rounds: Annotated[int | None, typer.Option(min=1, help="replay every case this many times, in "
                                               "turn; each reports its median round (default: "
                                               "the suite's, else 1)")] = None,
    plot: Annotated[str | None, typer.Option(help="write predicted-vs-measured PNG here")] = None,
    record: Annotated[str | None, typer.Option(help="also write the JSON report to this file")] = None,
    scratch: Annotated[str | None, typer.Option(help="folder for the disk tier's files")] = None,
    probe: Annotated[bool, typer.Option(help="bracket every round with measurements of this "
                                        "machine's compute and disk rates and also predict the "
                                        "round at them (docs/validation.md: a diagnostic, off by "
                                        "default)")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Replay plans on this machine with torch and compare with the simulator's predictions."""
    from memsim.validation.compare import step_counts, validate
    from memsim.validation.suite import load_suite

    if (workload is None) == (suite is None):
        raise SpecError("give either --workload (with an optional --plan) or --suite", key="--suite")
    if plan is not None and workload is None:
        raise SpecError("--plan goes with --workload (a suite names its own plans)", key="--plan")
    from memsim.validation.calibrate import check_writable

    for out_path, key in ((plot, "--plot"), (record, "--record")):
        if out_path:  # fail before minutes of measuring, not after
            check_writable(out_path, key)
    loaded = load_suite(suite) if suite else None
    reps, warm, n = step_counts(loaded, repeats, warmup, rounds)
    bar, task = _progress((len(loaded.cases) if loaded else 1) * n * (reps + warm), "replaying",
                          as_json)
    with bar:
        report = validate(hardware, workload=workload, plan=plan, suite=loaded, device=device,
                          repeats=repeats, warmup=warmup, rounds=rounds, scratch=scratch, plot=plot,
                          progress=lambda name: bar.update(task, advance=1, description=name),
                          probe=probe)
    doc = report.to_dict()
    if record:
        from pathlib import Path

        try:
            Path(record).write_text(json.dumps(doc, indent=2, sort_keys=True, default=_jsonable) + "\n")
        except OSError as exc:
            raise SpecError(f"cannot write: {exc.strerror}", file=record, key="--record") from None
    if as_json:
        emit_json(doc)
        return
    probed = report.probed
    table = Table("case", "simulated", "measured", "error",
                  *(["error at calibration's rates", "drift compute / read / write"] if probed else []),
                  *(f"peak {t} err" for t in (report.cases[0].peak_bytes if report.cases else {})),
                  title=f"{report.suite or 'validate'} on {report.system} ({report.device})")
    for c in report.cases:
        extra = []
        if probed:
            ratios = [f"{min(d[k] for d in c.drift):.2f}–{max(d[k] for d in c.drift):.2f}"
                      for k in ("compute", "read", "write")]
            extra = [f"{c.calibrated_error:+.1%}", " / ".join(ratios)]
        table.add_row(c.name, units.fmt_time(c.predicted_s), units.fmt_time(c.measured_s),
                      f"{c.error:+.1%}", *extra, *(f"{p['error']:+.1%}" for p in c.peak_bytes.values()))
    out.print(table)
    out.print(f"step time |error|: median {report.median_abs_error:.1%}, worst {report.max_abs_error:.1%}; "
              f"peak bytes worst {report.max_peak_error:.1%} (simulated vs measured)")
    if probed:
        out.print(f"at calibration's rates (no probe): median {report.median_abs_error_calibrated:.1%}, "
                  f"worst {report.max_abs_error_calibrated:.1%}")
    for note in report.notes:
        out.print(f"note: {note}")
    if report.plot:
        out.print(f"plot: {report.plot}")


# -- studies --------------------------------------------------------------------------------------


@app.command("study")
@handle_errors
def study_cmd(
    study: Annotated[str, typer.Argument(help="study YAML (or the name of one in studies/)")],
    backend: Annotated[str, typer.Option(help="local (process pool) | ray")] = "local",
    jobs: Annotated[int | None, typer.Option("-j", "--jobs", min=1,
                                             help="parallel points (default: CPUs)")] = None,
    output: Annotated[str | None, typer.Option("-o", "--output", help="results folder (default: "
                                               "out/studies/NAME); cached points there are reused")] = None,
    ray_address: Annotated[str | None, typer.Option(
        help="Ray cluster address (default: start a local one)")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="list the points and which are cached; run none")] = False,
    overrides: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a what-if study: every point of its axes, then results.csv, plots and report.md."""
    from memsim.outpaths import check_output_folder
    from memsim.studies import load_study, run_study
    from memsim.studies.check import check_points

    check_output_folder(output, "-o")
    spec = load_study(study, overrides or ())
    check_points(spec, spec.source)
    if dry_run:
        _study_dry_run(spec, output, as_json)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from memsim.progress import Progress

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("left"), TimeRemainingColumn(), console=err, transient=True, disable=as_json)
    task = bar.add_task(f"study {spec.name}", total=None)
    with bar:
        run = run_study(spec, output, backend=backend, jobs=jobs, ray_address=ray_address,
                        progress=lambda done, total: bar.update(task, completed=done, total=total))
    if run.warnings:  # a metric no result has is a typo in the study (results stay cached)
        raise SpecError(f"{'; '.join(run.warnings)}; the points are stored, so a re-run after the fix "
                        "reuses them", file=spec.source, key="metrics")
    if as_json:
        emit_json(run.to_dict())
        return
    _render_study(run)


def _study_dry_run(spec, output: str | None, as_json: bool) -> None:
    from pathlib import Path

    from memsim.studies.runner import cached_record, default_out, plan_points

    folder = Path(output or default_out(spec)) / "points"
    points = [{"point": p.index, **p.coords, "hash": key,
               "cached": cached_record(folder / f"{key}.json") is not None} for p, key in plan_points(spec)]
    if as_json:
        emit_json({"name": spec.name, "points": points})
        return
    table = Table("point", *(_short(k) for k in spec.axis_keys()), "cached",
                  title=f"{spec.name}: {len(points)} points")
    for p in points:
        table.add_row(str(p["point"]), *(str(p[k]) for k in spec.axis_keys()), "yes" if p["cached"] else "no")
    out.print(table)


def _render_study(run) -> None:
    from memsim.studies.report import columns, human

    hidden = set(run.study.axis_keys()) - set(run.study.shown_keys())
    hidden |= {"feasible", *[m for m in run.study.metrics if m != "feasible"][4:]}  # all are in report.md
    cols = [c for c in columns(run.study, run.rows) if c not in ("hash", "reason", "usd_per_mtoken", *hidden)]
    table = Table(*(_short(c) for c in cols), title=f"{run.study.name}: {len(run.rows)} points (simulated)")
    for row in run.rows:
        table.add_row(*(human(c, row.get(c)) for c in cols))
    out.print(table)
    for row in run.rows:
        if row["status"] != "ok" and row.get("reason"):
            reason = str(row["reason"])
            reason = reason if len(reason) <= 150 else reason[:149] + "…"
            err.print(f"  point {row['point']} {row['status']}: {reason}", highlight=False, markup=False)
    counts = ", ".join(f"{n} {s}" for s, n in run.counts().items())
    out.print(f"{counts}; computed {run.computed}, reused {run.cached} cached")
    for warning in run.warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if run.best:
        coords = ", ".join(f"{k}={run.best[k]}" for k in run.study.shown_keys())
        out.print(f"[bold green]best:[/] point {run.best['point']} ({coords})")
    else:
        out.print("[yellow]no point meets the study's criterion[/]")
    out.print(f"wrote {run.files['report']}, {run.files['csv']}")


def _short(key: str) -> str:
    """hardware.tiers.cxl.capacity → cxl.capacity: table headers people can read."""
    return ".".join(key.split(".")[-2:])


# -- reproduce the literature ---------------------------------------------------------------------


@app.command("reproduce")
@handle_errors
def reproduce_cmd(
    output: Annotated[str | None, typer.Option(
        "-o", "--output", help="document to write [default: a full run writes the project's "
        "docs/reproductions.md (./reproductions.md outside a checkout); a partial run writes none]")] = None,
    cases: Annotated[list[str] | None, typer.Option("--case", help="run only this case (repeatable): a name "
                                                    "in studies/reproductions/ or a case YAML")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="only the cases marked quick (seconds)")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Set up published results with memsim's own parts and write them side by side (a Markdown doc)."""
    from memsim.studies.reproduce import default_output, reproduce

    target = output if output is not None else default_output(partial=bool(cases) or quick)
    bar, task = _progress(None, "reproducing", as_json)
    with bar:
        results, _ = reproduce(cases or [], quick, target, progress=lambda msg, done, total: bar.update(
            task, completed=done, total=total, description=msg))
    if as_json:
        emit_json({"path": None if target is None else str(target), "cases": [r.to_dict() for r in results]})
        return
    from memsim.studies.reproduce_doc import fmt_diff, fmt_value

    table = Table("case", "figure", "published", "memsim", "diff", "source",
                  title="memsim beside the literature")
    for r in results:
        for f in r.figures:
            if f.published is not None:
                table.add_row(r.name, f.label, fmt_value(f.published, f.unit), fmt_value(f.memsim, f.unit),
                              fmt_diff(f), f.source)
    out.print(table)
    out.print(f"wrote {target}" if target is not None else "no document written (a partial run; "
              "give -o PATH to write one)")


def main() -> None:
    """The console entry point. Under --json a usage error (an unknown option, a missing
    argument), which click reports before any command runs, is a JSON document too."""
    if "--json" not in sys.argv[1:]:
        app()
        return
    try:
        code = app(standalone_mode=False)
    except _UsageError as exc:  # click's usage errors (an unknown option, a missing argument)
        emit_json(error_document(exc.format_message(), exc.exit_code))
        err.print(f"[bold red]error:[/] {escape(exc.format_message())}", highlight=False)
        sys.exit(exc.exit_code)
    except _Abort:
        emit_json(error_document("interrupted", 130))
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
