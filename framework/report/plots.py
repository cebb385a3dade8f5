"""The report's figures (PNG), drawn from its cells (aggregate.py).

- accuracy_by_method.png: accuracy per method, one bar per decoder, 95% interval; * = significantly
  different from SFT with the same decoder (Holm-adjusted).
- accuracy_vs_beam_width.png: accuracy against beam width per method (greedy counted as width 1).
- accuracy_vs_n.png: best-of-N accuracy against N per selector, one panel per method, with pass@N
  (coverage, dashed) and greedy accuracy (dotted).
- accuracy_vs_compute.png: accuracy against training compute (tokens trained on, else seconds) and
  against tokens generated per test problem (beam search: output length x num_beams).

matplotlib is an optional extra (`pip install -e '.[report]'`); without it every plot is reported as
skipped and the tables are still written. Only the object-oriented API is used (no pyplot), so no
global backend state is touched.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

PLOT_NAMES = ("accuracy_by_method.png", "accuracy_vs_beam_width.png", "accuracy_vs_n.png", "accuracy_vs_compute.png")
NO_MATPLOTLIB = "needs matplotlib: pip install -e '.[report]'"
MARKERS = {"greedy": "o", "sample": "s", "beam": "^", "bon": "D"}


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
    drawn = []
    for (dataset, model), group in groups.items():
        suffix = "" if len(groups) == 1 else f"_{dataset}_{model}"
        title = f"{dataset}, model {model}"
        for name, draw in zip(PLOT_NAMES, (by_method, vs_beam_width, vs_n, vs_compute)):
            file = name.replace(".png", f"{suffix}.png")
            drawn.append((file, draw(group, Path(out_dir) / file, title)))
    return drawn


def _figure(width: float, height: float, columns: int = 1, rows: int = 1, **options):
    """A figure and its axes as a flat list (row by row)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, list(figure.subplots(rows, columns, squeeze=False, **options).flat)


def _errors(cells) -> list[list[float]]:
    """Asymmetric error bars (in points) from the cells' 95% intervals."""
    return [[100 * (c.accuracy - (c.ci_low if c.ci_low is not None else c.accuracy)) for c in cells],
            [100 * ((c.ci_high if c.ci_high is not None else c.accuracy) - c.accuracy) for c in cells]]


def _colors(names) -> dict:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return {name: palette(index % 10) for index, name in enumerate(dict.fromkeys(names))}


def by_method(cells: list, path: Path, title: str) -> str | None:
    if not cells:
        return "no results"
    methods = list(dict.fromkeys(c.algorithm for c in cells))
    labels = list(dict.fromkeys(c.decoder_label for c in cells))
    colors = _colors(labels)
    width = 0.8 / len(labels)
    figure, (axes,) = _figure(max(7.0, 1.1 * len(methods) * max(1, len(labels) / 2)), 4.5 + 0.25 * len(labels))
    for offset, label in enumerate(labels):
        row = [(methods.index(c.algorithm), c) for c in cells if c.decoder_label == label]
        x = [index - 0.4 + width * (offset + 0.5) for index, _ in row]
        chosen = [c for _, c in row]
        axes.bar(x, [100 * c.accuracy for c in chosen], width, yerr=_errors(chosen), capsize=2,
                 color=colors[label], label=textwrap.fill(label, 60))
        for position, cell in zip(x, chosen):
            if cell.comparison is not None and cell.comparison.significant:
                axes.annotate("*", (position, 100 * (cell.ci_high or cell.accuracy)), ha="center", va="bottom")
    axes.set_xticks(range(len(methods)), methods)
    axes.set_ylabel("accuracy % (95% CI over seeds and problems)")
    axes.set_title(f"Accuracy by method and decoder ({title})\n* differs from sft with the same decoder "
                   "(paired bootstrap, Holm p < 0.05)", fontsize="medium")
    longest = min(60, max(len(label) for label in labels))
    figure.legend(loc="outside lower center", fontsize="small", ncol=max(1, min(len(labels), 90 // (longest + 6))))
    figure.savefig(path, dpi=120)
    return None


def _width_points(cells: list) -> dict[str, dict[int, object]]:
    """Method -> {beam width: cell}; a greedy cell stands for width 1 when there is no beam-1 cell."""
    points: dict[str, dict[int, object]] = {}
    for cell in cells:
        if cell.decoder == "beam" and "num_beams" in cell.decoder_config:
            points.setdefault(cell.algorithm, {})[int(cell.decoder_config["num_beams"])] = cell
    for cell in cells:
        if cell.decoder == "greedy" and cell.algorithm in points:
            points[cell.algorithm].setdefault(1, cell)
    return {method: widths for method, widths in points.items() if len(widths) >= 2}


def vs_beam_width(cells: list, path: Path, title: str) -> str | None:
    points = _width_points(cells)
    if not points:
        return "needs decoder=beam at two or more num_beams for one method (greedy counts as width 1)"
    figure, (axes,) = _figure(6.5, 4.5)
    colors = _colors(points)
    for method, widths in points.items():
        ordered = [widths[w] for w in sorted(widths)]
        axes.errorbar(sorted(widths), [100 * c.accuracy for c in ordered], yerr=_errors(ordered), marker="o",
                      capsize=3, color=colors[method], label=method)
    axes.set_xticks(sorted({w for widths in points.values() for w in widths}))
    axes.set_xlabel("beam width (1 = greedy)")
    axes.set_ylabel("accuracy % (95% CI)")
    axes.set_title(f"Accuracy vs beam width ({title})")
    axes.legend()
    figure.savefig(path, dpi=120)
    return None


def _curve(cell) -> tuple[list[int], list[float], list[float], list[float]]:
    """N, mean accuracy over seeds, and the lowest and highest seed, on the sizes every seed has."""
    curves = [run.result.metrics["bon_accuracy_by_n"] for run in cell.runs]
    sizes = sorted(set.intersection(*({int(n) for n in curve} for curve in curves)))
    values = [[curve[str(n)] for curve in curves] for n in sizes]
    return sizes, [sum(v) / len(v) for v in values], [min(v) for v in values], [max(v) for v in values]


def vs_n(cells: list, path: Path, title: str) -> str | None:
    curves = [c for c in cells if all("bon_accuracy_by_n" in run.result.metrics for run in c.runs)]
    if not curves:
        return "needs decoder=bon runs (bon_accuracy_by_n in results.json)"
    methods = list(dict.fromkeys(c.algorithm for c in curves))
    columns = min(3, len(methods))
    rows = -(-len(methods) // columns)
    figure, panels = _figure(max(6.0, 4.5 * columns), 1.0 + 3.6 * rows, columns, rows, sharey=True)
    for unused in panels[len(methods):]:
        unused.set_visible(False)
    colors = _colors(c.decoder_config.get("selector", c.decoder_label) for c in curves)
    for axes, method in zip(panels, methods):
        mine = [c for c in curves if c.algorithm == method]
        for cell in mine:
            selector = cell.decoder_config.get("selector", cell.decoder_label)
            sizes, mean, low, high = _curve(cell)
            color = colors[selector]
            label = selector if len({c.decoder_config.get("samples_per_prompt") for c in mine}) == 1 \
                else f"{selector}, N={cell.decoder_config.get('samples_per_prompt')}"
            axes.plot(sizes, [100 * v for v in mean], marker="o", color=color, label=label)
            if len(cell.runs) > 1:
                axes.fill_between(sizes, [100 * v for v in low], [100 * v for v in high], color=color, alpha=0.15)
        first = mine[0]
        coverage = [(n, sum(run.result.metrics[f"pass@{n}"] for run in first.runs) / len(first.runs))
                    for n in _curve(first)[0] if all(f"pass@{n}" in run.result.metrics for run in first.runs)]
        if coverage:
            axes.plot([n for n, _ in coverage], [100 * v for _, v in coverage], linestyle="--", color="grey",
                      label="pass@N (coverage)")
        greedy = next((c.accuracy for c in cells if c.algorithm == method and c.decoder == "greedy"), None)
        if greedy is None and all("greedy_accuracy" in run.result.metrics for run in first.runs):
            greedy = sum(run.result.metrics["greedy_accuracy"] for run in first.runs) / len(first.runs)
        if greedy is not None:
            axes.axhline(100 * greedy, linestyle=":", color="black", label="greedy")
        axes.set_xscale("log", base=2)
        ticks = sorted({n for cell in mine for n in _curve(cell)[0]})
        axes.set_xticks(ticks, [str(n) for n in ticks])
        axes.minorticks_off()
        axes.set_xlabel("N (samples the selector chooses from)")
        axes.set_ylabel("accuracy %")
        axes.set_title(f"{method}: best-of-N vs N")
        axes.legend(fontsize="small")
    figure.suptitle(f"Best-of-N accuracy vs N ({title})\nmean over seeds; band: lowest to highest seed",
                    fontsize="medium")
    figure.savefig(path, dpi=120)
    return None


def _scale(axes, values: list[float]) -> None:
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) > 20:  # spans orders of magnitude: log, 0 kept visible
        axes.set_xscale("symlog", linthresh=min(positive)) if len(positive) < len(values) else axes.set_xscale("log")


def _compact(value: float, _position=None) -> str:
    """Tick label 150k / 1.2M: token counts written out in full overlap on the axis."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:g}"


def _tokens_per_problem(cell) -> float:
    """Output tokens per problem; beam search carries num_beams hypotheses, so its kept output's length
    times the width estimates what it generated."""
    tokens = cell.compute["eval_generated_tokens"] / cell.num_problems
    return tokens * cell.decoder_config.get("num_beams", 1) if cell.decoder == "beam" else tokens


def vs_compute(cells: list, path: Path, title: str) -> str | None:
    from matplotlib.ticker import FuncFormatter

    if not cells:
        return "no results"
    by_tokens = all(c.compute.get("train_tokens") is not None for c in cells)
    train_key, train_label = (("train_tokens", "training tokens (all stages the model depends on)") if by_tokens
                              else ("train_seconds", "training seconds (all stages when recorded, else this job's)"))
    usable = [c for c in cells if c.compute.get(train_key) is not None]
    inference = [c for c in cells if c.compute.get("eval_generated_tokens") is not None and c.num_problems]
    if not usable and not inference:
        return "no compute recorded in results.json"
    colors = _colors(c.algorithm for c in cells)
    figure, (left, right) = _figure(11.0, 4.5, columns=2)
    for axes, chosen, x_of, label in (
            (left, usable, lambda c: c.compute[train_key], train_label),
            (right, inference, _tokens_per_problem, "tokens generated per test problem (beam: x num_beams)")):
        for cell in chosen:
            axes.errorbar([x_of(cell)], [100 * cell.accuracy], yerr=_errors([cell]), capsize=2, linestyle="none",
                          marker=MARKERS.get(cell.decoder, "x"), color=colors[cell.algorithm], alpha=0.8,
                          elinewidth=0.8)
        _scale(axes, [x_of(c) for c in chosen])
        axes.xaxis.set_major_formatter(FuncFormatter(_compact))
        axes.set_xlabel(label)
        axes.set_ylabel("accuracy % (95% CI)")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=color, marker="o", linestyle="none", label=name) for name, color in colors.items()]
    # decoders as hollow black markers: a grey one would read as a method's colour
    handles += [Line2D([], [], color="black", markerfacecolor="none", marker=MARKERS.get(d, "x"), linestyle="none",
                       label=d)
                for d in dict.fromkeys(c.decoder for c in cells)]
    right.legend(handles=handles, fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5))
    figure.suptitle(f"Accuracy vs compute ({title})")
    figure.savefig(path, dpi=120)
    return None
