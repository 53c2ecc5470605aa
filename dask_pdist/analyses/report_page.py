"""The page of :func:`dask_pdist.analyses.report.report`: a plotly figure and its HTML.

plotly is optional (``pip install plotly``, the ``[report]`` extra). The slider is plotly's
own: one frame per chosen step, each holding that step's heatmaps (float32, base64), its
histogram counts and the marker of the step on the lines; moving the slider animates to the
frame. plotly.js is inlined, so the page opens offline; the figure is a JSON data block that
three lines of glue hand to ``Plotly.newPlot`` and ``Plotly.addFrames``.
"""

from __future__ import annotations

import html
import json
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["require_plotly", "build_figure", "page_html", "HISTOGRAM_BINS", "histogram_edges"]

#: Bins of the per-step histograms, shared by every frame of a metric.
HISTOGRAM_BINS = 50
_COLOURS = {"euclidean": "#1f77b4", "chebyshev": "#d62728"}
_EVENT_SYMBOLS = ("x", "circle-open", "triangle-down", "diamond", "star", "triangle-up")


def require_plotly() -> Any:
    """plotly's ``graph_objects``, or an ImportError saying how to install plotly."""
    try:
        import plotly.graph_objects as go
    except ImportError as exc:
        raise ImportError(
            "the report needs plotly: pip install plotly (in a checkout of dask_pdist, pip install -e '.[report]')"
        ) from exc
    return go


def histogram_edges(top: float) -> np.ndarray:
    """The histogram's bin edges, 0 to ``top`` (the largest distance of any step).

    >>> histogram_edges(5.0)[[0, 1, -1]].tolist()
    [0.0, 0.1, 5.0]
    """
    top = float(top) if np.isfinite(top) and top > 0 else 1.0
    return np.linspace(0.0, top, HISTOGRAM_BINS + 1)


def _upper(matrix: np.ndarray) -> np.ndarray:
    # the pairs i < j, finite only (an unwritten or NaN distance is no pair)
    values = matrix[np.triu_indices(matrix.shape[0], k=1)]
    return values[np.isfinite(values)]


def _labels(values: np.ndarray) -> list[str]:
    # category labels for the heatmap axes: one per token, made unique so no two collapse
    text = [str(v) for v in values]
    if len(set(text)) < len(text):
        text = [f"{t} #{i}" for i, t in enumerate(text)]
    return text


def build_figure(
    *,
    ds: xr.Dataset,
    metrics: list[str],
    summary: xr.Dataset,
    frames: np.ndarray,
    values: dict[str, np.ndarray],
    clusters: tuple[xr.Dataset, Any, dict] | None = None,
    churn: tuple[xr.DataArray, dict] | None = None,
) -> Any:
    """The report's figure: heatmaps and histograms at the chosen step (frames), min/mean/max
    over all steps, and clusters and churn when given."""
    go = require_plotly()
    from plotly.subplots import make_subplots

    steps = ds["step"].values
    frame_steps = steps[frames]
    tokens = _labels(ds["token_i"].values)
    cols = len(metrics)
    extra_rows = [name for name, given in (("clusters", clusters), ("churn", churn)) if given is not None]
    rows = 3 + len(extra_rows)
    titles = [f"{m.capitalize()} distance at the chosen step" for m in metrics]
    titles += [f"Histogram of {m} distances (pairs i < j) at the chosen step" for m in metrics]
    titles += [f"{m.capitalize()} min / mean / max (off-diagonal) at every step" for m in metrics]
    specs: list[list[Any]] = [[{}] * cols, [{}] * cols, [{}] * cols]
    for name in extra_rows:
        titles.append(
            "Clusters over steps, with their events" if name == "clusters" else "Mean neighbour churn over steps"
        )
        titles.extend([""] * (cols - 1))
        # clusters: the largest population (up to V) on its own log axis, so that the group
        # count (a few) stays readable beside it
        specs.append([{"colspan": cols, "secondary_y": name == "clusters"}] + [None] * (cols - 1))
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=[t for t in titles if t],
        specs=specs,
        row_heights=[0.38, 0.17, 0.17] + [0.14] * len(extra_rows),
        vertical_spacing=0.06 if rows > 3 else 0.08,
        horizontal_spacing=0.12,
    )
    edges = {m: histogram_edges(np.nanmax(summary[f"{m}_max"].values, initial=0.0)) for m in metrics}
    centers = {m: (edges[m][1:] + edges[m][:-1]) / 2 for m in metrics}
    last = len(frames) - 1
    dynamic: list[int] = []  # indices of the traces each frame replaces

    def frame_traces(k: int) -> list[Any]:
        out = []
        for m in metrics:
            out.append(
                go.Heatmap(
                    z=values[m][k].astype(np.float32),
                    hovertemplate=f"token_i %{{y}}<br>token_j %{{x}}<br>{m} %{{z:.7g}}"
                    f"<extra>step {frame_steps[k]}</extra>",
                )
            )
        for m in metrics:
            counts, _ = np.histogram(_upper(values[m][k]), bins=edges[m])
            out.append(go.Bar(y=counts.astype(np.int32)))
        for m in metrics:
            out.append(go.Scatter(x=[frame_steps[k]], y=[float(summary[f"{m}_mean"].values[frames[k]])]))
        return out

    initial = frame_traces(last)
    for c, m in enumerate(metrics):
        heat = initial[c]
        # the colour bar beside its own heatmap, as tall as its row
        x_domain = fig.get_subplot(1, c + 1).xaxis.domain
        y_domain = fig.get_subplot(1, c + 1).yaxis.domain
        colorbar = {"x": x_domain[1] + 0.005, "xanchor": "left", "thickness": 12}
        colorbar.update(y=(y_domain[0] + y_domain[1]) / 2, len=y_domain[1] - y_domain[0])
        heat.update(x=tokens, y=tokens, colorscale="Viridis", name=m, colorbar=colorbar)
        fig.add_trace(heat, row=1, col=c + 1)
        dynamic.append(len(fig.data) - 1)
    for c, m in enumerate(metrics):
        bar = initial[cols + c]
        bar.update(x=centers[m], width=edges[m][1] - edges[m][0], marker_color=_COLOURS.get(m), name=f"{m} histogram")
        bar.update(hovertemplate=f"{m} near %{{x:.4g}}: %{{y}} pairs<extra></extra>", showlegend=False)
        fig.add_trace(bar, row=2, col=c + 1)
        dynamic.append(len(fig.data) - 1)
    for c in range(cols):
        marker = initial[2 * cols + c]
        marker.update(mode="markers", marker={"size": 10, "color": "black", "symbol": "line-ns-open"})
        marker.update(name="chosen step", showlegend=False, hovertemplate="chosen step %{x}<extra></extra>")
        fig.add_trace(marker, row=3, col=c + 1)
        dynamic.append(len(fig.data) - 1)
    for c, m in enumerate(metrics):
        colour = _COLOURS.get(m, "#444")
        lo, mean, hi = (summary[f"{m}_{s}"].values for s in ("min", "mean", "max"))
        common = {"x": steps, "showlegend": False, "line": {"width": 1, "color": colour}}
        fig.add_trace(go.Scatter(y=hi, name=f"{m} max", mode="lines", **common), row=3, col=c + 1)
        fig.add_trace(
            go.Scatter(y=mean, name=f"{m} mean", mode="lines", **{**common, "line": {"width": 2, "color": colour}}),
            row=3,
            col=c + 1,
        )
        fig.add_trace(
            go.Scatter(
                y=lo, name=f"{m} min", mode="lines", **{**common, "line": {"width": 1, "dash": "dot", "color": colour}}
            ),
            row=3,
            col=c + 1,
        )
        fig.update_yaxes(title_text="pairs", row=2, col=c + 1)
        fig.update_xaxes(type="category", row=1, col=c + 1)
        fig.update_yaxes(type="category", autorange="reversed", title_text="token_i", row=1, col=c + 1)
    row = 4
    if clusters is not None:
        _clusters_row(fig, go, clusters, row)
        row += 1
    if churn is not None:
        mean_churn, attrs = churn
        fig.add_trace(
            go.Scatter(
                x=mean_churn["step"].values,
                y=np.asarray(mean_churn.values, dtype=np.float64),
                mode="lines",
                name=f"mean churn (k = {attrs.get('k', '?')}, {attrs.get('metric', '?')})",
                line={"color": "#2ca02c"},
            ),
            row=row,
            col=1,
        )
        fig.update_yaxes(title_text="churn", row=row, col=1)
    fig.frames = [go.Frame(data=frame_traces(k), traces=dynamic, name=str(frame_steps[k])) for k in range(len(frames))]
    slider_steps = [
        {
            "method": "animate",
            "label": str(s),
            "args": [
                [str(s)],
                {"mode": "immediate", "frame": {"duration": 0, "redraw": True}, "transition": {"duration": 0}},
            ],
        }
        for s in frame_steps
    ]
    fig.update_layout(
        height=700 + 260 * len(extra_rows),
        margin={"t": 110, "b": 40, "l": 60, "r": 40},
        bargap=0,
        legend={"orientation": "h", "y": -0.04},
        sliders=[
            {
                "active": last,
                "steps": slider_steps,
                "currentvalue": {"prefix": "step ", "font": {"size": 14, "color": "#222"}},
                "pad": {"t": 10, "b": 10},
                "x": 0,
                "y": 1.0,
                "xanchor": "left",
                "yanchor": "bottom",
                "len": 1.0,
                "ticklen": 2,
                "font": {"color": "rgba(0,0,0,0)"},  # one label per frame would overlap: the current one is shown
            }
        ],
    )
    return fig


def _clusters_row(fig: Any, go: Any, clusters: tuple[xr.Dataset, Any, dict], row: int) -> None:
    from dask_pdist.analyses.events import EVENT_KINDS

    per_step, events, attrs = clusters
    steps = per_step["step"].values
    n_clusters = np.asarray(per_step["n_clusters"].values)
    for name, y, colour, right in (
        ("groups (2+ tokens)", n_clusters, "#9467bd", False),
        ("largest group (right axis)", per_step["largest"].values, "#8c564b", True),
    ):
        fig.add_trace(
            go.Scatter(x=steps, y=np.asarray(y), mode="lines", line={"shape": "hv", "color": colour}, name=name),
            row=row,
            col=1,
            secondary_y=right,
        )
    at = {s: i for i, s in enumerate(steps.tolist())}
    for kind, symbol in zip(EVENT_KINDS, _EVENT_SYMBOLS, strict=True):
        rows = events[events["kind"] == kind]
        if not len(rows):
            continue
        x, y, text = [], [], []
        for step, group in rows.groupby("step", sort=True):
            tokens = [t for ts in group["tokens"] for t in ts]
            shown = " ".join(str(t) for t in tokens[:8]) + (" ..." if len(tokens) > 8 else "")
            x.append(step)
            y.append(int(n_clusters[at[step.item() if hasattr(step, "item") else step]]))
            text.append(f"{len(group)} {kind}: tokens {shown}")
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="markers",
                marker={"symbol": symbol, "size": 9},
                name=kind,
                text=text,
                hovertemplate="step %{x}: %{text}<extra></extra>",
            ),
            row=row,
            col=1,
            secondary_y=False,
        )
    top = max(2, int(np.max(per_step["largest"].values, initial=1)))
    ticks = [t * 10**e for e in range(len(str(top))) for t in (1, 2, 5) if t * 10**e <= top]
    fig.update_yaxes(title_text="largest group", type="log", tickvals=ticks, secondary_y=True, row=row, col=1)
    fig.update_yaxes(
        title_text=f"groups ({attrs.get('metric', '?')} <= {attrs.get('threshold', '?')})",
        row=row,
        col=1,
        secondary_y=False,
    )


def _exactness(ds: xr.Dataset, metrics: list[str]) -> str:
    # the page holds float32: exact for float32 and float16 stores, rounded for float64 ones
    if any(ds[m].dtype == np.float64 for m in metrics):
        return "the stored float64 values rounded to float32"
    return f"the stored {ds[metrics[0]].dtype} values, exactly"


def _ranges(steps: np.ndarray, mask: np.ndarray) -> str:
    # "0..99, 200..299": the runs of steps where mask holds
    parts, start = [], None
    for i, flag in enumerate(list(mask) + [False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            parts.append(f"{steps[start]}" if i - 1 == start else f"{steps[start]}..{steps[i - 1]}")
            start = None
    return ", ".join(parts[:20]) + (f", ... ({len(parts)} runs)" if len(parts) > 20 else "")


def page_html(
    *,
    store: str,
    ds: xr.Dataset,
    metrics: list[str],
    summary: xr.Dataset,
    frames: np.ndarray,
    values: dict[str, np.ndarray],
    written: np.ndarray,
    clusters: tuple[xr.Dataset, Any, dict] | None = None,
    churn: tuple[xr.DataArray, dict] | None = None,
) -> str:
    """The whole page: a header saying what is shown, then the figure with plotly.js inline."""
    fig = build_figure(
        ds=ds, metrics=metrics, summary=summary, frames=frames, values=values, clusters=clusters, churn=churn
    )
    steps = ds["step"].values
    n_steps, n_tokens = ds.sizes["step"], ds.sizes["token_i"]
    state = (
        f"being written: {ds.attrs['being_written']} (those are shown)"
        if ds.attrs.get("being_written")
        else "complete"
        if written.all() and ds.attrs.get("complete") is not False
        else f"INCOMPLETE: steps written {_ranges(steps, written)} ({int(written.sum()):,} of {n_steps:,});"
        " the others have no values (gaps in the lines)"
    )
    every = "every step" if len(frames) == n_steps else f"{len(frames)} of {n_steps:,} steps, chosen evenly"
    lines = [
        f"{n_steps:,} steps ({steps[0]}..{steps[-1]}) x {n_tokens:,} tokens; metrics: {', '.join(metrics)};"
        f" store {state}.",
        f"Source: {ds.attrs.get('source', '?')} ({ds.attrs.get('input_dtype', '?')}, computed in"
        f" {ds.attrs.get('compute_dtype', '?')}).",
        f"Slider: {every}; heatmap values: {_exactness(ds, metrics)}. Lines: every step.",
    ]
    if clusters is not None:
        lines.append(f"Clusters: {clusters[2].get('metric', '?')} distance <= {clusters[2].get('threshold', '?')}.")
    from plotly.offline import get_plotlyjs
    from plotly.utils import PlotlyJSONEncoder

    # the figure as JSON in a data block (plotly.py's own encoding: numpy arrays as base64);
    # "<" escaped so that nothing in it can close the block. plotly's to_json and to_html also
    # escape "/", which is in 1 of 64 base64 characters and grows the page by 8-40 %.
    figure = json.dumps(fig.to_dict(), cls=PlotlyJSONEncoder, separators=(",", ":")).replace("<", "\\u003c")
    config = json.dumps({"responsive": True, "displaylogo": False})
    title = f"dask_pdist report: {store}"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n"
        "<style>body{font-family:sans-serif;margin:1em 2em}p{margin:.2em 0}</style>\n"
        f'<script type="text/javascript">{get_plotlyjs()}</script>\n</head>\n<body>\n'
        f"<h2>{html.escape(title)}</h2>\n"
        + "".join(f"<p>{html.escape(line)}</p>\n" for line in lines)
        + '<div id="report" style="width:100%"></div>\n'
        + f'<script type="application/json" id="report-figure">{figure}</script>\n'
        + "<script>\nconst figure = JSON.parse(document.getElementById('report-figure').textContent);\n"
        + f"Plotly.newPlot('report', figure.data, figure.layout, {config})"
        + ".then(function () { return Plotly.addFrames('report', figure.frames); });\n</script>\n"
        + "</body>\n</html>\n"
    )
