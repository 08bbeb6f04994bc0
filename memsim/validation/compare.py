"""``memsim validate``: the simulator's prediction beside what the machine measured, case by case.

For each case the same System (the calibrated one), Trace and Plan go to ``memsim.sim.simulate``
(predicted) and to ``replay`` (measured). Error is signed, relative to the measurement:
``(predicted − measured) / measured`` — positive when the simulator is pessimistic. The report
gives the median and worst absolute error of step time, the same for peak bytes per tier, and a
plot of predicted against measured.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from memsim.contracts.plan import Plan
from memsim.errors import SpecError
from memsim.hardware.spec import System
from memsim.validation.diskio import host_buffers
from memsim.validation.suite import WARMUP, Suite, SuiteCase, load_suite


@dataclass
class CaseResult:
    name: str
    predicted_s: float
    measured_s: float
    error: float  # (predicted - measured) / measured
    feasible: bool
    steps_s: list[float]  # the timed steps of every round; measured_s is the median round's
    # tier → {predicted, measured (the median round's), error, measured_min/max over timed steps}
    peak_bytes: dict[str, dict[str, float]]
    predicted_breakdown: dict[str, float]
    measured_breakdown: dict[str, float]  # compute, recompute, wait (exposed transfer)
    copy_bytes: dict[str, int]
    disk_mode: str | None = None  # how the page cache was bypassed (O_DIRECT or fadvise)
    # per copy direction (src->dst): seconds its engine was busy, predicted and measured, and the
    # rate the measured copies achieved: where a case misses, whether the copies ran slower
    copy_busy: dict[str, dict[str, float]] = field(default_factory=dict)
    warmup_s: list[float] = field(default_factory=list)  # the untimed steps before them
    rounds_s: list[float] = field(default_factory=list)  # each round's median step, in order
    # with a probe (memsim.validation.drift): each round predicted at its probed rates, which
    # predicted_s is the median round's; the prediction at calibration's rates; each round's drift
    rounds_predicted_s: list[float] = field(default_factory=list)
    predicted_calibrated_s: float | None = None
    drift: list[dict[str, float]] = field(default_factory=list)

    @property
    def calibrated_error(self) -> float:
        """The error of the prediction at calibration's rates (no probe: ``error``)."""
        if self.predicted_calibrated_s is None:
            return self.error
        return (self.predicted_calibrated_s - self.measured_s) / self.measured_s


@dataclass
class Report:
    system: str
    device: str
    suite: str | None
    cases: list[CaseResult]
    measured_at: str
    calibration: dict | None = None
    disk_mode: str | None = None
    plot: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def median_abs_error(self) -> float:
        return statistics.median(abs(c.error) for c in self.cases) if self.cases else 0.0

    @property
    def max_abs_error(self) -> float:
        return max((abs(c.error) for c in self.cases), default=0.0)

    @property
    def max_peak_error(self) -> float:
        return max((abs(p["error"]) for c in self.cases for p in c.peak_bytes.values()), default=0.0)

    @property
    def probed(self) -> bool:
        return any(c.drift for c in self.cases)

    @property
    def median_abs_error_calibrated(self) -> float:
        """The median |error| at calibration's rates (without a probe: ``median_abs_error``)."""
        return statistics.median(abs(c.calibrated_error) for c in self.cases) if self.cases else 0.0

    @property
    def max_abs_error_calibrated(self) -> float:
        return max((abs(c.calibrated_error) for c in self.cases), default=0.0)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(median_abs_error=self.median_abs_error, max_abs_error=self.max_abs_error,
                   max_peak_error=self.max_peak_error,
                   peak_bytes={c.name: c.peak_bytes for c in self.cases})
        if self.probed:
            out.update(median_abs_error_calibrated=self.median_abs_error_calibrated,
                       max_abs_error_calibrated=self.max_abs_error_calibrated)
        return out


def validate(system: System | str, *, workload: str | None = None, plan: Plan | str | None = None,
             suite: Suite | str | None = None, device: str = "cpu", repeats: int | None = None,
             warmup: int | None = None, rounds: int | None = None,
             scratch: str | Path | None = None, plot: str | Path | None = None,
             progress: Callable[[str], None] | None = None, probe: bool = False) -> Report:
    """Run one workload (with a plan, or all-resident) or a whole suite; predict and measure each.

    Every case is predicted (and checked) before anything is measured, so bad input fails in
    seconds. Then each of ``rounds`` rounds replays every case in turn, from its own setup (fresh
    buffers and files); a case's measurement is its median round (``merge``). Why rounds: a case
    measured in one go shares whatever the shared host was doing in those seconds (a
    compute-only case can run 8% slow for all its steps), and on a VM a replay's disk rate
    depends on the buffers it happened to get; rounds spread both over the whole run.

    With ``probe`` (a diagnostic; a calibration that recorded the probe's level), every round is bracketed
    by short measurements of the machine's compute and disk rates, and predicted at their
    geometric mean (``memsim.validation.drift``): on a shared VM the rates drift by more than
    the error budget between a calibration and a round."""
    from memsim.hardware import load_system
    from memsim.validation.replay import replay

    system = load_system(system)
    if (workload is None) == (suite is None):
        raise SpecError("give either a workload (with an optional plan) or a suite", key="--suite")
    if suite is not None:
        suite = suite if isinstance(suite, Suite) else load_suite(suite)
        cases, name = suite.cases, suite.name
    else:
        plan_obj, plan_file = _plan(plan)
        cases, name = [SuiteCase(Path(str(workload)).stem, str(workload), plan_obj, plan_file)], None
    reps, warm, rounds = step_counts(suite, repeats, warmup, rounds)
    prepared = [(case, *_predict(system, case)) for case in cases]
    measured: dict[str, list] = {case.name: [] for case in cases}
    probed: dict[str, list] = {case.name: [] for case in cases}  # (drift, Result) per round
    reference, why_not = _probe_reference(system, device) if probe else (None, None)
    with _probe(reference, device, scratch) as rates:
        before = rates.sample() if rates is not None else None
        for _ in range(rounds):
            for case, trace, _predicted in prepared:
                step = (lambda case=case: progress(case.name)) if progress else None
                measured[case.name].append(replay(system, trace, case.plan, device, reps, scratch,
                                                  case.plan_file, step, warm))
                if rates is not None:  # the round bracketed by the probes before and after it
                    after = rates.sample()
                    probed[case.name].append(_at_drift(system, trace, case.plan,
                                                       before.between(after)))
                    before = after
    results = [_result(case, predicted, measured[case.name], probed[case.name])
               for case, _trace, predicted in prepared]
    report = Report(system.name, device, name, results,
                    dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), system.calibration,
                    disk_mode=next((r.disk_mode for r in results if r.disk_mode), None))
    if system.calibration is None:
        report.notes.append("the System was not measured by `memsim calibrate`: expect large errors")
    if why_not:
        report.notes.append(why_not)
    calibrated_on = (system.calibration or {}).get("host_buffers", "4 KiB pages")  # older: 4 KiB
    if device == "cpu" and system.calibration is not None and calibrated_on != host_buffers():
        report.notes.append(f"calibrated with host buffers on {calibrated_on}, "
                            f"replayed on {host_buffers()}: direct disk transfers run at another "
                            "rate on other pages (docs/validation.md); calibrate again")
    if plot is not None:
        report.plot = str(plot_report(report, plot))
    return report


def step_counts(suite: Suite | None, repeats: int | None = None, warmup: int | None = None,
                rounds: int | None = None) -> tuple[int, int, int]:
    """(timed steps, warm-up steps, rounds) per case: as given, else the suite's, else 3, 2, 1."""
    if suite is not None:
        return (repeats or suite.repeats, suite.warmup if warmup is None else warmup,
                rounds or suite.rounds)
    return repeats or 3, WARMUP if warmup is None else warmup, rounds or 1


def _plan(plan: Plan | str | None) -> tuple[Plan, str]:
    if plan is None:
        return Plan(), "all-resident (no plan)"
    if isinstance(plan, Plan):
        return plan, "plan"
    return Plan.load(plan), str(plan)


def _predict(system: System, case: SuiteCase):
    """(trace, simulated Result) of one case; a plan that does not fit is a diagnosis (exit 3)."""
    from memsim.sim import simulate
    from memsim.validation.replay import check_plan
    from memsim.workloads import build_trace, load_workload

    trace = build_trace(load_workload(case.workload))
    check_plan(trace, case.plan, system, case.plan_file)
    predicted = simulate(system, trace, case.plan)
    if not predicted.feasible:  # the replay would run this machine out of memory for real
        from memsim.errors import Infeasible
        from memsim.sim import diagnose

        raise Infeasible(diagnose(predicted))
    return trace, predicted


def _probe_reference(system: System, device: str) -> tuple[dict | None, str | None]:
    """calibration's probe level, or why rounds are predicted at calibration's rates."""
    cal = system.calibration or {}
    if "probe" not in cal:
        return None, ("no probe level in the System's calibration (calibrated before memsim "
                      "recorded one): every round is predicted at calibration's rates")
    if device != ("cuda" if str(cal.get("device", "cpu")).startswith("cuda") else "cpu"):
        return None, (f"calibrated on {cal.get('device')}, replayed on {device}: every round is "
                      "predicted at calibration's rates")
    return cal["probe"], None


@contextlib.contextmanager
def _probe(reference: dict | None, device: str, scratch: str | Path | None):
    """A RateProbe over its own scratch folder, or None without a reference."""
    if reference is None:
        yield None
        return
    from memsim.validation.backend import make_backend
    from memsim.validation.calibrate import set_compute_threads
    from memsim.validation.diskio import Scratch, probe_mode
    from memsim.validation.drift import RateProbe

    backend = make_backend(device)
    set_compute_threads(backend)
    with Scratch(scratch) as folder, RateProbe(backend, folder, probe_mode(folder), reference) as rates:
        yield rates


def _at_drift(system: System, trace, plan: Plan, drift):
    """(drift, the simulated Result at the rates it says the machine had)."""
    from memsim.sim import simulate
    from memsim.validation.drift import scaled

    return drift, simulate(scaled(system, drift), trace, plan)


def _result(case: SuiteCase, calibrated, rounds: list, probed: list) -> CaseResult:
    """One case's row: the median round (``merge``) beside its prediction, the one at that
    round's probed rates when probed, else calibration's."""
    from memsim.validation.replay import median_round, merge

    measured = merge(rounds)
    predicted = probed[median_round(rounds)][1] if probed else calibrated
    peaks = {}
    for tier in sorted(set(predicted.peak_bytes) | set(measured.peak_bytes)):
        p, m = predicted.peak_bytes.get(tier, 0), measured.peak_bytes.get(tier, 0)
        low, high = measured.peak_range.get(tier, (m, m))
        peaks[tier] = {"predicted": p, "measured": m, "error": (p - m) / m if m else float(p != 0),
                       "measured_min": low, "measured_max": high}
    return CaseResult(
        name=case.name, predicted_s=predicted.step_time_s, measured_s=measured.step_s,
        error=(predicted.step_time_s - measured.step_s) / measured.step_s,
        feasible=predicted.feasible, steps_s=measured.steps_s, warmup_s=measured.warmup_s,
        peak_bytes=peaks,
        predicted_breakdown=predicted.breakdown,
        measured_breakdown={"compute": measured.compute_s - measured.recompute_s,
                            "recompute": measured.recompute_s, "exposed_transfer": measured.wait_s},
        copy_bytes=measured.copy_bytes, disk_mode=measured.disk_mode if measured.copy_bytes else None,
        copy_busy=_copy_busy(predicted, measured), rounds_s=measured.rounds_s,
        rounds_predicted_s=[r.step_time_s for _, r in probed],
        predicted_calibrated_s=calibrated.step_time_s if probed else None,
        drift=[d.to_dict() for d, _ in probed])


def _copy_busy(predicted, measured) -> dict[str, dict[str, float]]:
    """Engine busy seconds per direction, the simulator's (``link_busy`` × step, engines named
    ``link:src->dst``) beside the replay's (its copies' spans), and the measured B/s."""
    out = {}
    sim = {}
    for engine, frac in predicted.link_busy.items():
        direction = engine.split(":", 1)[-1]
        sim[direction] = sim.get(direction, 0.0) + frac * predicted.step_time_s
    for direction, spans in sorted(measured.copy_spans.items()):
        busy = sum(end - start for _, start, end in spans)
        moved = sum(nbytes for nbytes, _, _ in spans)
        out[direction] = {"predicted_s": sim.get(direction, 0.0), "measured_s": busy,
                          "measured_Bps": moved / busy if busy > 0 else 0.0}
    return out


def plot_report(report: Report, path: str | Path) -> Path:
    """Predicted vs measured step time, one point per case, with the y = x line and ±10%."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=120)
    meas = [c.measured_s for c in report.cases]
    pred = [c.predicted_s for c in report.cases]
    hi = max([*meas, *pred, 1e-3]) * 1.15
    ax.plot([0, hi], [0, hi], color="black", lw=1, label="predicted = measured")
    ax.fill_between([0, hi], [0, 0.9 * hi], [0, 1.1 * hi], color="tab:green", alpha=0.15, label="±10%")
    ax.scatter(meas, pred, color="tab:blue", zorder=3)
    for c in report.cases:
        ax.annotate(c.name, (c.measured_s, c.predicted_s), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    ax.set(xlim=(0, hi), ylim=(0, hi), xlabel="measured step time (s)", ylabel="simulated step time (s)",
           title=f"{report.suite or 'validate'} on {report.system}: median |error| "
                 f"{report.median_abs_error:.1%}")
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as exc:
        raise SpecError(f"cannot write: {exc.strerror}", file=str(path), key="--plot") from None
    finally:
        plt.close(fig)
    return path
