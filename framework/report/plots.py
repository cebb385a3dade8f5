"""The report's figures (PNG), drawn from its cells (aggregate.py).

- accuracy_by_method.png: accuracy per method and decoder with its 95% interval; * = significantly
  different from SFT with the same decoder (Holm-adjusted).
- accuracy_vs_beam_width.png: accuracy against beam width per method (greedy counted as width 1).
- accuracy_vs_n.png: best-of-N accuracy against N per selector, one panel per method, with pass@N
  (coverage, dashed) and the method's greedy accuracy on the same problems (dotted).
- accuracy_vs_compute.png: accuracy against training compute (tokens trained on, else seconds) and
  against tokens generated per test problem (beam search: num_beams x the kept output).

One reading in every figure: a method has the same colour everywhere (`method_colors`), its control that
colour with hollow markers and dashed lines, a decoder the same marker; decoders are named by their short
labels, with the full ones in a footnote; legends sit outside the axes.

matplotlib is an optional extra (`pip install -e '.[report]'`); without it every plot is reported as
skipped and the tables are still written. Only the object-oriented API is used (no pyplot), so no
global backend state is touched.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

from framework.report.aggregate import METHOD_ORDER, beam_widths

PLOT_NAMES = ("accuracy_by_method.png", "accuracy_vs_beam_width.png", "accuracy_vs_n.png", "accuracy_vs_compute.png")
NO_MATPLOTLIB = "needs matplotlib: pip install -e '.[report]'"
MARKERS = {"greedy": "o", "sample": "s", "beam": "^", "bon": "D"}
SPARE_MARKERS = ("v", "P", "X", "*", "h", "<", ">", "p")  # a second label of one decoder (two beam widths, ...)
CONTROL_SUFFIX = " control"
DPI = 120


def write_plots(cells: list, out_dir: Path) -> list[tuple[str, str | None]]:
    """Draw every plot into `out_dir`. Returns (file name, None) for each drawn plot and (file name,
    reason) for each skipped one. With several (dataset, model) pairs each gets its own files."""
    try:
        import matplotlib.figure  # noqa: F401 (only to know whether the extra is installed)
    except ImportError:
        return [(name, NO_MATPLOTLIB) for name in PLOT_NAMES]
    groups: dict[tuple, list] = {}
    for cell in cells:
        groups.setdefault((cell.dataset, cell.model), []).append(cell)
    colors = method_colors(c.algorithm for c in cells)  # one colour per method across every file
    drawn = []
    for (dataset, model), group in groups.items():
        suffix = "" if len(groups) == 1 else f"_{dataset}_{model}"
        title = f"{dataset}, model {model}"
        for name, draw in zip(PLOT_NAMES, (by_method, vs_beam_width, vs_n, vs_compute)):
            file = name.replace(".png", f"{suffix}.png")
            drawn.append((file, draw(group, Path(out_dir) / file, title, colors)))
    return drawn


# ---------------------------------------------------------------------------- one reading in every figure
def base_method(label: str) -> str:
    """The method a row belongs to: `xpo control` -> `xpo`."""
    return label.removesuffix(CONTROL_SUFFIX)


def is_control(label: str) -> bool:
    return label.endswith(CONTROL_SUFFIX)


def method_colors(labels) -> dict[str, tuple]:
    """Row label -> colour: each built-in method a fixed tab10 colour (so `sft` is blue in every report),
    a control its method's colour, any other row (a plugin, `xpo(alpha=0.1)`) the next unused colour."""
    from matplotlib import colormaps

    tab10 = colormaps["tab10"].colors
    # none grey (untrained); the rest in tab10 order, skipping grey
    fixed = dict(zip(METHOD_ORDER, [tab10[7], *tab10[:7], tab10[8]]))
    spare = [tab10[9], *colormaps["Dark2"].colors, *colormaps["Set1"].colors, *colormaps["tab20b"].colors]
    colors, used = {}, 0
    for label in dict.fromkeys(labels):
        base = base_method(label)
        if base not in colors:
            if base in fixed:
                colors[base] = fixed[base]
            else:
                colors[base] = spare[used % len(spare)]
                used += 1
        colors[label] = colors[base]
    return colors


def decoder_markers(cells: list) -> dict[str, str]:
    """Short decoder label -> marker: by the decoder (greedy o, beam ^, bon D, sample s); a second label of
    the same decoder takes a spare marker."""
    markers, spare = {}, iter(SPARE_MARKERS * 4)
    taken: set[str] = set()
    for cell in cells:
        if cell.decoder_short in markers:
            continue
        marker = MARKERS.get(cell.decoder, "x")
        markers[cell.decoder_short] = marker if marker not in taken else next(spare)
        taken.add(markers[cell.decoder_short])
    return markers


def _style(label: str, color) -> dict:
    """Marker and line options of a row: a control is hollow and dashed."""
    if is_control(label):
        return {"color": color, "markerfacecolor": "white", "linestyle": "--"}
    return {"color": color, "markerfacecolor": color, "linestyle": "-"}


def _footnote(cells: list) -> str | None:
    """The full labels of the decoders the figure names by their short labels."""
    pairs = dict((c.decoder_short, c.decoder_label) for c in cells if c.decoder_short != c.decoder_label)
    if not pairs:
        return None
    return textwrap.fill("; ".join(f"{short} = {full}" for short, full in pairs.items()), 150)


def _figure(width: float, height: float, columns: int = 1, rows: int = 1, **options):
    """A figure and its axes as a flat list (row by row)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, list(figure.subplots(rows, columns, squeeze=False, **options).flat)


def _errors(cells) -> list[list[float]]:
    """Asymmetric error bars (in points) from the cells' 95% intervals."""
    return [[100 * (c.accuracy - (c.ci_low if c.ci_low is not None else c.accuracy)) for c in cells],
            [100 * ((c.ci_high if c.ci_high is not None else c.accuracy) - c.accuracy) for c in cells]]


def _errorbar(axes, x, cells, row: str, color, marker: str, **options):
    """Points with their 95% intervals in a row's style (a control's intervals dashed)."""
    style = _style(row, color)
    container = axes.errorbar(x, [100 * c.accuracy for c in cells], yerr=_errors(cells), marker=marker,
                              color=color, markerfacecolor=style["markerfacecolor"], capsize=3,
                              linestyle=options.pop("linestyle", "none"), **options)
    if is_control(row):
        for lines in container[2]:
            lines.set_linestyle("--")
    return container


def _legend_handles(colors: dict, rows: list[str], markers: dict[str, str] | None = None) -> list:
    """Legend entries: one per method in its colour, one for `control`, then one per decoder marker."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[row], marker="o", label=row) for row in rows if not is_control(row)]
    if any(is_control(row) for row in rows):
        handles.append(Line2D([], [], color="black", marker="o", markerfacecolor="white", linestyle="--",
                              label="<method> control"))
    for short, marker in (markers or {}).items():
        handles.append(Line2D([], [], color="black", marker=marker, linestyle="none", label=short))
    return handles


def _finish(figure, path: Path, cells: list, legend: list | None = None) -> None:
    if legend:
        figure.legend(handles=legend, loc="outside right center", fontsize="small", frameon=False)
    if footnote := _footnote(cells):
        figure.supxlabel(footnote, fontsize="x-small", color="dimgrey")
    figure.savefig(path, dpi=DPI)


# ---------------------------------------------------------------------------- the figures
def by_method(cells: list, path: Path, title: str, colors: dict | None = None) -> str | None:
    if not cells:
        return "no results"
    colors = colors or method_colors(c.algorithm for c in cells)
    rows = list(dict.fromkeys(c.algorithm for c in cells))
    markers = decoder_markers(cells)
    shorts = list(markers)
    step = 0.8 / len(shorts)
    figure, (axes,) = _figure(max(7.0, 0.65 * len(rows) + 3.5), 5.0)
    for cell in cells:
        x = rows.index(cell.algorithm) - 0.4 + step * (shorts.index(cell.decoder_short) + 0.5)
        _errorbar(axes, [x], [cell], cell.algorithm, colors[cell.algorithm], markers[cell.decoder_short])
        if cell.comparison is not None and cell.comparison.significant:
            axes.annotate("*", (x, 100 * (cell.ci_high or cell.accuracy)), ha="center", va="bottom")
    for index in range(1, len(rows)):  # a faint rule between methods
        axes.axvline(index - 0.5, color="lightgrey", linewidth=0.6)
    axes.set_xlim(-0.5, len(rows) - 0.5)
    axes.set_xticks(range(len(rows)), rows, rotation=30, ha="right", rotation_mode="anchor")
    axes.set_ylabel("accuracy % (95% CI over seeds and problems)")
    axes.grid(axis="y", alpha=0.3)
    figure.suptitle(f"Accuracy by method and decoder ({title})\n* differs from sft with the same decoder "
                    "(paired bootstrap, Holm p < 0.05)", fontsize="medium")
    _finish(figure, path, cells, _legend_handles({}, [r for r in rows if is_control(r)], markers))
    return None


def vs_beam_width(cells: list, path: Path, title: str, colors: dict | None = None) -> str | None:
    points = {key: widths for key, widths in beam_widths(cells).items() if len(widths) >= 2}
    if not points:
        return "needs decoder=beam at two or more num_beams for one method (greedy counts as width 1)"
    colors = colors or method_colors(c.algorithm for c in cells)
    rankings = list(dict.fromkeys(ranking for _, ranking in points))
    dashes = dict(zip(rankings, ["-", ":", "-.", (0, (5, 1, 1, 1))]))
    figure, (axes,) = _figure(8.0, 4.8)
    for index, ((method, ranking), widths) in enumerate(points.items()):
        ordered = sorted(widths)
        # dodged sideways (a fraction of an octave) so that every interval can be seen
        nudge = 2 ** (0.035 * (index - (len(points) - 1) / 2))
        label = method if len(rankings) == 1 else f"{method}, {ranking}"
        style = "--" if is_control(method) else dashes[ranking]
        _errorbar(axes, [w * nudge for w in ordered], [widths[w] for w in ordered], method, colors[method], "o",
                  linestyle=style, label=label)
    ticks = sorted({w for widths in points.values() for w in widths})
    axes.set_xscale("log", base=2)
    axes.set_xticks(ticks, [str(w) for w in ticks])
    axes.minorticks_off()
    axes.set_xlabel("beam width (1 = greedy; points nudged sideways to keep intervals apart)")
    axes.set_ylabel("accuracy % (95% CI)")
    axes.grid(axis="y", alpha=0.3)
    figure.suptitle(f"Accuracy vs beam width ({title})", fontsize="medium")
    figure.legend(loc="outside right center", fontsize="small", frameon=False)
    _finish(figure, path, [cell for widths in points.values() for cell in widths.values()])
    return None


def _curve(cell) -> tuple[list[int], list[float], list[float], list[float]]:
    """N, mean accuracy over seeds, and the lowest and highest seed, on the sizes every seed has."""
    curves = [run.result.metrics["bon_accuracy_by_n"] for run in cell.runs]
    sizes = sorted(set.intersection(*({int(n) for n in curve} for curve in curves)))
    values = [[curve[str(n)] for curve in curves] for n in sizes]
    return sizes, [sum(v) / len(v) for v in values], [min(v) for v in values], [max(v) for v in values]


def vs_n(cells: list, path: Path, title: str, colors: dict | None = None) -> str | None:
    from matplotlib.lines import Line2D

    curves = [c for c in cells if all("bon_accuracy_by_n" in run.result.metrics for run in c.runs)]
    if not curves:
        return "needs decoder=bon runs (bon_accuracy_by_n in results.json)"
    colors = colors or method_colors(c.algorithm for c in cells)
    methods = list(dict.fromkeys(c.algorithm for c in curves))
    columns = min(3, len(methods))
    rows = -(-len(methods) // columns)
    figure, panels = _figure(max(6.0, 4.2 * columns + 1.8), 0.8 + 3.3 * rows, columns, rows, sharey=True,
                             sharex=True)
    for unused in panels[len(methods):]:
        unused.set_visible(False)
    markers = {selector: marker for selector, marker in zip(
        dict.fromkeys(c.decoder_short for c in curves), ("o", "s", "^", "D", *SPARE_MARKERS))}
    for axes, method in zip(panels, methods):
        mine = [c for c in curves if c.algorithm == method]
        style = _style(method, colors[method])
        for cell in mine:
            sizes, mean, low, high = _curve(cell)
            axes.plot(sizes, [100 * v for v in mean], marker=markers[cell.decoder_short], **style)
            if len(cell.runs) > 1:
                axes.fill_between(sizes, [100 * v for v in low], [100 * v for v in high], color=colors[method],
                                  alpha=0.15, linewidth=0)
        first = mine[0]
        coverage = [(n, sum(run.result.metrics[f"pass@{n}"] for run in first.runs) / len(first.runs))
                    for n in _curve(first)[0] if all(f"pass@{n}" in run.result.metrics for run in first.runs)]
        if coverage:
            axes.plot([n for n, _ in coverage], [100 * v for _, v in coverage], linestyle="--", color="grey")
        # the method's greedy accuracy on the problems and seeds the best-of-N jobs scored (the report's lift's)
        greedy = next((c.greedy_reference for c in mine if c.greedy_reference is not None), None)
        if greedy is not None:
            axes.axhline(100 * greedy, linestyle=":", color="black")
        axes.set_xscale("log", base=2)
        ticks = sorted({n for cell in mine for n in _curve(cell)[0]})
        axes.set_xticks(ticks, [str(n) for n in ticks])
        axes.minorticks_off()
        axes.grid(alpha=0.3)
        axes.set_title(method, fontsize="medium", color=colors[method])
    for axes in panels[:len(methods)]:
        if axes.get_subplotspec().is_last_row() or panels.index(axes) + columns >= len(methods):
            axes.set_xlabel("N (samples the selector chooses from)")
            axes.xaxis.set_tick_params(labelbottom=True)
        if axes.get_subplotspec().is_first_col():
            axes.set_ylabel("accuracy %")
    legend = [Line2D([], [], color="black", marker=marker, label=f"best-of-N: {short}")
              for short, marker in markers.items()]
    legend += [Line2D([], [], color="grey", linestyle="--", label="pass@N (coverage)"),
               Line2D([], [], color="black", linestyle=":", label="greedy, same problems")]
    figure.suptitle(f"Best-of-N accuracy vs N ({title})\nmean over seeds; band: lowest to highest seed",
                    fontsize="medium")
    _finish(figure, path, curves, legend)
    return None


def _compact(value: float, _position=None) -> str:
    """Tick label 150k / 1.2M: token counts written out in full overlap on the axis."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}"


def _tokens_per_problem(cell) -> float:
    """Tokens generated per test problem (aggregate.compute_spent: beam search counts its beams)."""
    return cell.compute["eval_generated_tokens"] / cell.num_problems


def _training_decoder(cells: list) -> str | None:
    """The decoder under which the training panel shows each method: greedy when there is one, else the
    decoder most rows have."""
    shorts = [c.decoder_short for c in cells]
    greedy = [c.decoder_short for c in cells if c.decoder == "greedy"]
    return greedy[0] if greedy else max(dict.fromkeys(shorts), key=shorts.count, default=None)


def vs_compute(cells: list, path: Path, title: str, colors: dict | None = None) -> str | None:
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullLocator

    if not cells:
        return "no results"
    colors = colors or method_colors(c.algorithm for c in cells)
    by_tokens = all(c.compute.get("train_tokens") is not None for c in cells)
    train_key, train_label = (("train_tokens", "tokens trained on (every stage the model rests on)") if by_tokens
                              else ("train_seconds", "training seconds (every stage when recorded, else the job's)"))
    chosen = _training_decoder(cells)
    training = [c for c in cells if c.decoder_short == chosen and c.compute.get(train_key) is not None]
    inference = [c for c in cells if c.compute.get("eval_generated_tokens") is not None and c.num_problems]
    if not training and not inference:
        return "no compute recorded in results.json"
    markers = decoder_markers(cells)
    positive = [c.compute[train_key] for c in training if c.compute[train_key] > 0]
    # untrained rows at 0 beside trained ones bunched far away (every method starts from one SFT model): the
    # 0 gets a narrow axis of its own (a broken axis), else the trained ones would sit in one column
    broken = bool(positive) and len(positive) < len(training) and max(positive) / min(positive) < 20
    ratios = [1, 6, 7] if broken else [6, 7]
    figure, panels = _figure(13.5 if broken else 12.5, 4.8, columns=len(ratios), sharey=True, width_ratios=ratios)
    zero_axes, left, right = (panels[0], panels[1], panels[2]) if broken else (None, panels[0], panels[1])
    for cell in training:
        x = cell.compute[train_key]
        axes = zero_axes if broken and x == 0 else left
        _errorbar(axes, [x], [cell], cell.algorithm, colors[cell.algorithm], markers[cell.decoder_short])
    if broken:
        zero_axes.set_xlim(-1, 1)
        zero_axes.xaxis.set_major_locator(FixedLocator([0]))
        zero_axes.spines["right"].set_visible(False)
        left.spines["left"].set_visible(False)
        left.tick_params(axis="y", left=False)
        for axes, x in ((zero_axes, 1), (left, 0)):  # the break marks
            axes.plot([x, x], [0, 1], transform=axes.transAxes, marker=[(-1, -1), (1, 1)], markersize=8,
                      linestyle="none", color="black", clip_on=False)
    else:
        _scale(left, [c.compute[train_key] for c in training])
    left.xaxis.set_major_formatter(FuncFormatter(_compact))
    left.set_xlabel(train_label)
    (zero_axes or left).set_ylabel("accuracy % (95% CI)")
    left.set_title(f"training: accuracy under {chosen}", fontsize="medium")
    for row in dict.fromkeys(c.algorithm for c in inference):
        mine = sorted((c for c in inference if c.algorithm == row), key=_tokens_per_problem)
        style = _style(row, colors[row])
        right.plot([_tokens_per_problem(c) for c in mine], [100 * c.accuracy for c in mine], color=colors[row],
                   linestyle=style["linestyle"], linewidth=1, alpha=0.7)
        for cell in mine:
            right.plot([_tokens_per_problem(cell)], [100 * cell.accuracy], marker=markers[cell.decoder_short],
                       color=colors[row], markerfacecolor=style["markerfacecolor"], linestyle="none")
    tokens = [_tokens_per_problem(c) for c in inference]
    if tokens and min(tokens) > 0 and max(tokens) / min(tokens) > 4:
        right.set_xscale("log")
        right.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        right.xaxis.set_minor_locator(NullLocator())
    right.xaxis.set_major_formatter(FuncFormatter(_compact))
    right.set_xlabel("tokens generated per test problem (beam search: x num_beams)")
    right.set_title("evaluation: a method's decoders joined", fontsize="medium")
    for axes in panels:
        axes.grid(alpha=0.3)
    figure.suptitle(f"Accuracy vs compute ({title}); right: means over seeds, their intervals are in "
                    "accuracy_by_method.png", fontsize="medium")
    _finish(figure, path, cells, _legend_handles(colors, list(dict.fromkeys(c.algorithm for c in cells)), markers))
    return None


def _scale(axes, values: list[float]) -> None:
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) > 20:  # spans orders of magnitude: log, 0 kept visible
        axes.set_xscale("symlog", linthresh=min(positive)) if len(positive) < len(values) else axes.set_xscale("log")
