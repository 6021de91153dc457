"""Result tables in the papers' layout: Markdown, CSV and LaTeX.

Rows are models (or variants), columns are metrics (Recall/NDCG/Precision @10 and @20 by
default). Each cell is the mean over seeds, with ± std when there is more than one seed;
per column the best value is bold and the second best underlined. An optional
``Improv. %`` row gives, per column, the target model's improvement over the best of the
other rows: 100·(target − best other)/best other. A marker (``*``) can be attached to any
cell, e.g. where a paired t-test gives p < 0.05.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field

from modalrec.reporting.labels import metric_label

DEFAULT_METRICS = ("recall@10", "ndcg@10", "precision@10", "recall@20", "ndcg@20", "precision@20")


@dataclass
class ResultTable:
    """Means/stds per (row, metric) plus formatting options; render with to_markdown/to_csv/to_latex."""

    rows: list[str]
    metrics: list[str]
    mean: dict[str, dict[str, float]]
    std: dict[str, dict[str, float]] = field(default_factory=dict)
    n_seeds: dict[str, int] = field(default_factory=dict)
    markers: dict[str, dict[str, str]] = field(default_factory=dict)
    target: str | None = None  # the row of the "Improv. %" line; None = no such line
    title: str = ""
    digits: int = 4
    failed: dict[str, str] = field(default_factory=dict)  # row -> why some of its trials failed (marked)

    # ------------------------------------------------------------ ranking
    def ranks(self, metric: str) -> tuple[set[str], set[str]]:
        """(best rows, second-best rows) of a column, compared at the displayed precision.

        Higher is better; rows whose displayed values tie share the mark; NaN never ranks.
        """
        vals = {r: round(self.mean[r].get(metric, math.nan), self.digits) for r in self.rows}
        levels = sorted({v for v in vals.values() if not math.isnan(v)}, reverse=True)
        best = {r for r, v in vals.items() if levels and v == levels[0]}
        second = {r for r, v in vals.items() if len(levels) > 1 and v == levels[1]}
        return best, second

    def improvement(self, metric: str) -> float:
        """Improvement (%) of the target row over the best other row on ``metric``."""
        if self.target is None or self.target not in self.mean:
            return math.nan
        others = [self.mean[r].get(metric, math.nan) for r in self.rows if r != self.target]
        others = [v for v in others if not math.isnan(v)]
        if not others or max(others) <= 0:
            return math.nan
        return 100.0 * (self.mean[self.target][metric] - max(others)) / max(others)

    def cell(self, row: str, metric: str) -> str:
        """The plain text of one cell: ``0.0539`` or ``0.0539 ± 0.0012``, plus its marker."""
        m = self.mean[row].get(metric, math.nan)
        if math.isnan(m):
            return "–"
        text = f"{m:.{self.digits}f}"
        s = self.std.get(row, {}).get(metric, math.nan)
        if self.n_seeds.get(row, 1) > 1 and not math.isnan(s):
            text += f" ± {s:.{self.digits}f}"
        return text + self.markers.get(row, {}).get(metric, "")

    def _improv_cells(self) -> list[str]:
        out = []
        for metric in self.metrics:
            v = self.improvement(metric)
            out.append("–" if math.isnan(v) else f"{v:+.2f}%")
        return out

    def label(self, row: str) -> str:
        """The row's name, marked ``(failed: …)`` when some of its trials failed."""
        return f"{row} (failed: {self.failed[row]})" if row in self.failed else row

    # ------------------------------------------------------------ formats
    def to_markdown(self) -> str:
        """GitHub Markdown: best **bold**, second <u>underlined</u>."""
        head = ["Model", *(metric_label(m) for m in self.metrics)]
        lines = [f"**{self.title}**", ""] if self.title else []
        lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * len(self.metrics)) + "|"]
        ranks = {m: self.ranks(m) for m in self.metrics}
        for r in self.rows:
            cells = []
            for m in self.metrics:
                c = self.cell(r, m)
                if r in ranks[m][0]:
                    c = f"**{c}**"
                elif r in ranks[m][1]:
                    c = f"<u>{c}</u>"
                cells.append(c)
            lines.append("| " + " | ".join([_md_escape(self.label(r)), *cells]) + " |")
        if self.target is not None:
            lines.append("| Improv. % | " + " | ".join(self._improv_cells()) + " |")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """CSV: ``model``, then ``<metric>`` (mean) and ``<metric>_std`` per metric; an ``Improv. %`` row."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        extra = ["failed"] if self.failed else []  # the column exists only when a trial failed
        w.writerow(["model", *[c for m in self.metrics for c in (m, f"{m}_std")], "seeds", *extra])
        for r in self.rows:
            vals = []
            for m in self.metrics:
                vals.append(_num(self.mean[r].get(m, math.nan), self.digits + 2))
                vals.append(_num(self.std.get(r, {}).get(m, math.nan), self.digits + 2))
            w.writerow([r, *vals, self.n_seeds.get(r, 1), *([self.failed.get(r, "")] if extra else [])])
        if self.target is not None:
            improv = [c for m in self.metrics for c in (_num(self.improvement(m), 2), "")]
            w.writerow(["Improv. %", *improv, "", *([""] if extra else [])])
        return buf.getvalue()

    def to_latex(self) -> str:
        """A booktabs ``tabular``: best \\textbf, second \\underline, ``Improv. %`` under a rule."""
        cols = "l" + "c" * len(self.metrics)
        lines = [
            f"% {self.title}" if self.title else "% modalrec results table",
            f"\\begin{{tabular}}{{{cols}}}",
            "\\toprule",
            " & ".join(["Model", *(metric_label(m) for m in self.metrics)]) + " \\\\",
            "\\midrule",
        ]
        ranks = {m: self.ranks(m) for m in self.metrics}
        for r in self.rows:
            cells = []
            for m in self.metrics:
                c = _tex_escape(self.cell(r, m).replace(" ± ", " $\\pm$ "))
                if r in ranks[m][0]:
                    c = f"\\textbf{{{c}}}"
                elif r in ranks[m][1]:
                    c = f"\\underline{{{c}}}"
                cells.append(c)
            lines.append(" & ".join([_tex_escape(r + (" (failed)" if r in self.failed else "")), *cells]) + " \\\\")
        if self.target is not None:
            lines.append("\\midrule")
            lines.append(" & ".join(["Improv.\\ \\%", *(_tex_escape(c) for c in self._improv_cells())]) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}"]
        return "\n".join(lines) + "\n"


def _num(v: float, digits: int) -> str:
    return "" if math.isnan(v) else f"{v:.{digits}f}"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _tex_escape(text: str) -> str:
    out = text
    for a, b in (("%", "\\%"), ("_", "\\_"), ("&", "\\&"), ("#", "\\#"), ("–", "--")):
        out = out.replace(a, b)
    return out
