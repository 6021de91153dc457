"""The report of ``modalrec tune``: the best configuration, every trial, and two figures.

Files: ``best_config.yaml`` (what ``modalrec train --config`` reads), ``best.json`` (the best
trial, its parameters and its test metrics), ``trials.csv``/``trials.md`` (every trial of the
study), ``optimization_history.png`` and ``param_importances.png``. Selection is on
validation only: the best trial's saved best-epoch weights are evaluated on test once.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modalrec.errors import ModalrecError
from modalrec.experiments.study import safe_url
from modalrec.reporting.labels import metric_label
from modalrec.reporting.writer import ReportWriter


@dataclass
class TuneReport:
    """What ``tune`` wrote: the folder, the study, the best trial and every file."""

    folder: Path
    storage: str
    study_name: str
    finished: int
    ran_here: int
    best: dict[str, Any]
    files: list[Path]


def format_param(v: Any) -> str:
    """A parameter value as the log and the trials table show it: floats with 3 significant digits."""
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def write_tune_report(
    optuna: Any,
    study: Any,
    model: str,
    data_dir: str | Path,
    fixed: dict[str, Any],
    metric: str,
    out: Path,
    url: str,
    name: str,
    budget: int,
    ran_here: int,
    log: Callable[[str], None],
) -> TuneReport:
    """best_config.yaml, best.json, trials.csv/.md, optimization_history.png, param_importances.png."""
    states = optuna.trial.TrialState
    all_trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
    complete = [t for t in all_trials if t.state == states.COMPLETE]
    finished = sum(1 for t in all_trials if t.state in (states.COMPLETE, states.PRUNED))
    if not complete:
        raise ModalrecError(f"study {name!r} has no completed trial (all pruned or failed); see {out}")
    best = max(complete, key=lambda t: (t.value, -t.number))  # ties: the earlier trial
    writer = ReportWriter(out)
    run_dir = Path(best.user_attrs["run_dir"])
    test = best_test(run_dir, log)
    params = {**fixed, **best.user_attrs.get("overrides", best.params)}
    header = (
        f"# best of {len(complete)} completed trials (study {name!r}): valid {metric} {best.value:.6f}, trial "
        f"{best.number}\n# modalrec train --model {model} --data {data_dir} --config best_config.yaml\n"
    )
    files = [writer.write_text("best_config.yaml", header + yaml.safe_dump(params, sort_keys=False))]
    best_info = {
        "model": model,
        "study": name,
        "storage": safe_url(url),
        "trial": best.number,
        "params": params,
        "valid_metric": metric,
        "valid": best.value,
        "best_epoch": best.user_attrs.get("best_epoch"),
        "test": test,
        "test_note": "evaluated once, on the best trial's restored best-epoch weights; never used to select",
        "run_dir": str(run_dir),
        "finished_trials": finished,
        "budget": budget,
    }
    files.append(writer.write_json("best.json", best_info))
    head, rows = _trial_rows(all_trials, metric, best.number)
    files.append(writer.write_text("trials.csv", _csv(head, rows)))
    intro = (
        f"**{model}: {len(all_trials)} trials of study {name!r}** — value = best valid {metric_label(metric)} "
        f"(selection on validation only); ▶ = best"
    )
    outro = f"Best trial {best.number} on test (evaluated once): " + _brief(test) if test else None
    files.append(writer.write_text("trials.md", _trials_markdown(intro, head, rows, outro)))
    files.append(writer.save_figure("optimization_history.png", history_figure(all_trials, states, metric)))
    files.append(writer.save_figure("param_importances.png", importance_figure(optuna, study, len(complete), log)))
    log(
        f"best: trial {best.number}, valid {metric} {best.value:.4f}"
        + (f"; test {_brief(test)} (evaluated once)" if test else "")
    )
    return TuneReport(out, safe_url(url), name, finished, ran_here, best_info, files)


def _trial_rows(all_trials: list[Any], metric: str, best_number: int) -> tuple[list[str], list[list[str]]]:
    """The trials table: its header and one row of text cells per trial (the ``best`` column is 1 or 0)."""
    keys = sorted({k for t in all_trials for k in t.params})
    head = ["trial", "state", f"valid_{metric}", "epochs", "seconds", *keys, "best", "note"]
    rows = []
    for t in all_trials:
        shown = t.user_attrs.get("overrides", {})
        rows.append(
            [
                str(t.number),
                t.state.name.lower(),
                "" if t.value is None else f"{t.value:.6f}",
                str(t.user_attrs.get("epochs", "")),
                str(t.user_attrs.get("seconds", "")),
                *(format_param(shown.get(k, t.params.get(k, ""))) for k in keys),
                "1" if t.number == best_number else "0",
                str(t.user_attrs.get("error", "")),
            ]
        )
    return head, rows


def _csv(head: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    w.writerows(rows)
    return buf.getvalue()


def _trials_markdown(intro: str, head: list[str], rows: list[list[str]], outro: str | None) -> str:
    """``trials.md``: the trials table without its ``best`` column (▶ marks the best trial instead)."""
    n_keys = len(head) - 7  # the searched parameters, between "seconds" and "best"
    md = [intro, "", "| " + " | ".join(head[:-2] + ["note"]) + " |", "|" + "---:|" * 5 + "---|" * n_keys + "---|"]
    for r in rows:
        cells = r[:-2] + [r[-1]]
        if r[-2] == "1":
            cells[0] = "▶ " + cells[0]
        md.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if outro:
        md += ["", outro]
    return "\n".join(md) + "\n"


def _brief(metrics: dict[str, float]) -> str:
    return ", ".join(f"{metric_label(k)} {metrics[k]:.4f}" for k in ("recall@20", "ndcg@20") if k in metrics)


def best_test(run_dir: Path, log: Callable[[str], None]) -> dict[str, float] | None:
    """Test metrics of the best trial: its saved best-epoch weights, evaluated once (cached in its run folder)."""
    from modalrec.io import write_json, write_npz
    from modalrec.run_load import evaluate_run, load_run

    cached = run_dir / "test_metrics.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    if not (run_dir / "model.pt").is_file():
        log(f"warning: the best trial's run folder {run_dir} is not on this machine; test not evaluated here")
        return None
    result = evaluate_run(load_run(run_dir), "test")
    write_npz(run_dir / "test_per_user.npz", users=result.users, **result.per_user)
    write_json(cached, result.metrics)
    return result.metrics


def history_figure(trials: list[Any], states: Any, metric: str):
    """Each trial's validation value (pruned ones at their last report) and the best so far, by trial number."""
    from modalrec.reporting.plots import plt  # with the non-interactive backend selected

    fig, ax = plt.subplots(figsize=(7, 4))
    done = [t for t in trials if t.state == states.COMPLETE]
    pruned = [t for t in trials if t.state == states.PRUNED and t.value is not None]
    pruned += [t for t in trials if t.state == states.PRUNED and t.value is None and t.intermediate_values]
    if done:
        ax.scatter([t.number for t in done], [t.value for t in done], label="complete", color="tab:blue", zorder=3)
        order = sorted(done, key=lambda t: t.number)
        best, xs, ys = -math.inf, [], []
        for t in order:
            best = max(best, t.value)
            xs.append(t.number)
            ys.append(best)
        ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    if pruned:
        last = [list(t.intermediate_values.values())[-1] for t in pruned]
        ax.scatter([t.number for t in pruned], last, marker="x", color="gray", label="pruned (last report)")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"valid {metric_label(metric)}")
    ax.set_title("Optimisation history (validation; test is never used)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def importance_figure(optuna: Any, study: Any, n_complete: int, log: Callable[[str], None]):
    """Optuna's parameter importances as bars, or a note saying why they are not available."""
    from modalrec.reporting.plots import plt  # with the non-interactive backend selected

    fig, ax = plt.subplots(figsize=(7, 4))
    message = None
    importances: dict[str, float] = {}
    if n_complete < 2:
        message = f"parameter importance needs at least 2 completed trials ({n_complete} so far)"
    else:
        try:
            with warnings.catch_warnings():  # e.g. "importances will be equal" on a handful of trials: shown as is
                warnings.simplefilter("ignore", UserWarning)
                importances = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError) as exc:  # e.g. every completed trial had the same parameters
            message = f"parameter importance not available: {str(exc).splitlines()[0]}"
        if not importances and message is None:
            message = "parameter importance not available: the completed trials do not vary their parameters"
    if message is not None:
        log(f"note: {message}")
        ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, transform=ax.transAxes)
        ax.set_axis_off()
    else:
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="tab:blue")
        ax.set_xlabel("importance (Optuna's default evaluator; normalised to sum to 1)")
    ax.set_title("Parameter importances")
    fig.tight_layout()
    return fig
