"""Self-contained HTML views of lime explanations: inline HTML and CSS, no JavaScript.

:meth:`xaikernels.lime.Explanation.as_html` builds the page from three parts: the
prediction (class probabilities as bars, or a regression's predicted value within the
neighbourhood's range), one two-sided bar chart of feature weights per label (negative to
the left in red, positive to the right in green, as lime's charts), and the instance as the
domain mapper shows it (``instance_html``: the feature table for tabular data, the text with
its weighted words highlighted for text).  lime draws the same parts with its bundled d3
script; this page shows the same numbers without it.
"""
from __future__ import annotations

from html import escape

import numpy as np

_POS, _NEG = "#2ca02c", "#d62728"
_ID_CHARS = list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")

_CSS = """
.lime-xk { font-family: sans-serif; font-size: 13px; color: #222; }
.lime-xk h3 { font-size: 14px; margin: 14px 0 6px; }
.lime-xk table { border-collapse: collapse; margin-bottom: 8px; }
.lime-xk td, .lime-xk th { padding: 2px 6px; vertical-align: middle; }
.lime-xk th { text-align: left; border-bottom: 1px solid #999; }
.lime-xk .track { width: 160px; }
.lime-xk .track.neg { text-align: right; }
.lime-xk .bar { display: inline-block; height: 12px; }
.lime-xk .num { font-family: monospace; text-align: right; }
.lime-xk .name { max-width: 320px; }
.lime-xk .text { white-space: pre-wrap; line-height: 1.6; max-width: 800px; }
""".strip()


def _num(v) -> str:
    return "%.4g" % float(v)


def _bar(frac: float, color: str) -> str:
    frac = min(max(float(frac), 0.0), 1.0) if np.isfinite(frac) else 0.0
    return '<span class="bar" style="width: %.1f%%; background: %s;"></span>' % (100.0 * frac, color)


def _tint(w: float, scale: float, opacity: bool = True) -> str:
    """A background of the weight's colour, its strength |w| / scale (fixed without opacity)."""
    alpha = 0.35 if not opacity or scale <= 0 else 0.1 + 0.6 * min(abs(float(w)) / scale, 1.0)
    rgb = (44, 160, 44) if w > 0 else (214, 39, 40)
    return "background: rgba(%d, %d, %d, %.2f);" % (*rgb, alpha)


def proba_html(class_names, proba, top: int = 5) -> str:
    """The ``top`` most probable classes as bars, the rest summed as 'Other' (lime's view)."""
    proba = np.asarray(proba, dtype=np.float64).reshape(-1)
    names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(proba.size)]
    order = np.argsort(-proba, kind="stable")
    rows = [(names[i] if i < len(names) else str(i), proba[i]) for i in order[:top]]
    if proba.size > top:
        rows.append(("Other", float(proba[order[top:]].sum())))
    body = "".join('<tr><td class="name">%s</td><td class="track">%s</td><td class="num">%.2f</td></tr>'
                   % (escape(n), _bar(p, "#1f77b4"), p) for n, p in rows)
    return '<div class="predict_proba"><h3>Prediction probabilities</h3><table>%s</table></div>' % body


def value_html(value, lo, hi) -> str:
    """A regression's predicted value between the neighbourhood's min and max predictions."""
    value, lo, hi = float(value), float(lo), float(hi)
    frac = (value - lo) / (hi - lo) if hi > lo else 1.0
    return ('<div class="predicted_value"><h3>Predicted value</h3><table><tr><td class="num">%s</td>'
            '<td class="track">%s</td><td class="num">%s</td></tr><tr><td></td><td class="num">%s</td><td></td></tr>'
            '</table></div>' % (_num(lo), _bar(frac, "#1f77b4"), _num(hi), _num(value)))


def weights_html(title: str, left: str, right: str, items) -> str:
    """One label's (name, weight) list as a two-sided bar chart with its numbers."""
    scale = max((abs(w) for _, w in items), default=0.0) or 1.0
    rows = []
    for name, w in items:
        neg = _bar(-w / scale, _NEG) if w < 0 else ""
        pos = _bar(w / scale, _POS) if w > 0 else ""
        rows.append('<tr><td class="track neg">%s</td><td class="name">%s</td><td class="track">%s</td>'
                    '<td class="num">%s</td></tr>' % (neg, escape(str(name)), pos, _num(w)))
    head = ('<tr><th class="track neg">%s</th><th></th><th class="track">%s</th><th class="num">weight</th></tr>'
            % (escape(left), escape(right)))
    return '<div class="explanation"><h3>%s</h3><table>%s%s</table></div>' % (escape(title), head, "".join(rows))


def table_rows(mapper, exp, show_all: bool = False):
    """lime's rows of the tabular instance view: (feature name, value, weight) for the
    features of ``exp`` in its order, or every feature with ``show_all`` (sparse rows: their
    non-zero features)."""
    weights = [0] * len(mapper.feature_names)
    for f, w in exp:
        weights[f] = w
    if mapper.feature_indexes is not None:
        idx = list(mapper.feature_indexes)
        rows = [(mapper.exp_feature_names[i], v, weights[i]) for i, v in zip(idx, mapper.feature_values)]
        if show_all:
            return rows
        by_index = dict(zip(idx, rows))
        return [by_index.get(f, (str(f), 0.0, 0.0)) for f, _ in exp]
    rows = list(zip(mapper.exp_feature_names, mapper.feature_values, weights))
    return rows if show_all else [rows[f] for f, _ in exp]


def table_instance_html(mapper, exp, label, show_table: bool = True, show_all: bool = False) -> str:
    """The instance's features and values, each row tinted by its weight's sign and size."""
    if not show_table:
        return ""
    rows = table_rows(mapper, exp, show_all)
    scale = max((abs(float(w)) for _, _, w in rows), default=0.0)
    body = "".join('<tr style="%s"><td class="name">%s</td><td class="num">%s</td></tr>'
                   % (_tint(w, scale) if w else "", escape(str(n)), escape(str(v))) for n, v, w in rows)
    return ('<div class="instance"><h3>Feature values</h3><table><tr><th>Feature</th><th>Value</th></tr>%s'
            '</table></div>' % body)


def text_instance_html(mapper, exp, label, text: bool = True, opacity: bool = True) -> str:
    """The text with every occurrence of the features of ``exp`` highlighted by weight."""
    if not text:
        return ""
    idx = mapper.indexed_string
    raw = idx.raw_string()
    spans = sorted((int(p), int(p) + len(str(idx.word(f))), w) for f, w in exp for p in idx.string_position(f))
    scale = max((abs(float(w)) for _, _, w in spans), default=0.0)
    out, at = [], 0
    for start, end, w in spans:
        if start < at:  # overlapping occurrences (not produced by lime's indexing)
            continue
        out.append(escape(raw[at:start]))
        out.append('<span title="%s" style="%s">%s</span>' % (_num(w), _tint(w, scale, opacity), escape(raw[start:end])))
        at = end
    out.append(escape(raw[at:]))
    return '<div class="instance"><h3>Text with highlighted words</h3><div class="text">%s</div></div>' % "".join(out)


def explanation_html(exp, labels=None, predict_proba=True, show_predicted_value=True, **kwargs) -> str:
    """The page of :meth:`xaikernels.lime.Explanation.as_html`."""
    from ._rng import _check_random_state

    classification = exp.mode == "classification"
    if labels is None and classification:
        labels = exp.available_labels()
    # lime names its top div with 15 characters drawn from the explanation's random_state,
    # so a page advances that generator as lime's does
    div_id = "".join(_check_random_state(exp.random_state).choice(_ID_CHARS, 15, replace=True))
    names = exp.class_names
    parts = []
    if classification and predict_proba and exp.predict_proba is not None:
        parts.append(proba_html(names, exp.predict_proba))
    if not classification and show_predicted_value:
        parts.append(value_html(exp.predicted_value, exp.min_value, exp.max_value))
    if classification:
        for label in labels:
            name = str(names[label]) if names is not None and 0 <= label < len(names) else str(label)
            parts.append(weights_html("Explanation for class %s" % name, "NOT " + name, name, exp.as_list(label)))
        first = labels[0] if len(labels) else None
    else:
        parts.append(weights_html("Explanation", "negative", "positive", exp.as_list()))
        first = exp.dummy_label
    if first is not None:
        show = getattr(exp.domain_mapper, "instance_html", None)
        if show is not None:
            parts.append(show(exp.local_exp[first], first, **kwargs))
    return ('<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n<title>LIME explanation</title>\n'
            '<style>\n%s\n</style>\n</head>\n<body>\n<div class="lime-xk lime top_div" id="top_div%s">\n%s\n</div>\n'
            '</body>\n</html>\n' % (_CSS, div_id, "\n".join(parts)))
