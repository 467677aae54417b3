"""The PromQL of Sluice's Grafana dashboards (deploy/dashboards/*.json), for the
tests that check it: every panel target's expression and every query variable,
with Grafana's variables replaced by concrete values. Stdlib only."""
import glob
import json
import os
import re

RATE_WINDOW = "1m"  # stands in for $__rate_interval


def load(repo):
    """{file name: dashboard} of every dashboard JSON under deploy/dashboards/."""
    out = {}
    for path in sorted(glob.glob(os.path.join(repo, "deploy", "dashboards", "*.json"))):
        with open(path) as f:
            out[os.path.basename(path)] = json.load(f)
    return out


def panels(dashboard):
    """Every panel, those inside rows included."""
    out = []
    for p in dashboard.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def expressions(dashboard):
    """[(panel title, expr)] of every panel target."""
    return [(p.get("title", ""), t["expr"]) for p in panels(dashboard) for t in p.get("targets", [])
            if "expr" in t]


def variables(dashboard):
    return dashboard.get("templating", {}).get("list", [])


def variable_query(var):
    q = var.get("query")
    return q.get("query", "") if isinstance(q, dict) else (q or "")


_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$", re.S)


def variable_promql(query):
    """A query variable's label_values(SERIES, LABEL) as the PromQL whose result
    holds those values: count by (LABEL) (SERIES). None for other kinds."""
    m = _LABEL_VALUES.match(query)
    if not m:
        return None
    return f"count by ({m.group(2)}) ({m.group(1)})"


def substitute(expr, values):
    """Grafana's variables replaced: $__rate_interval, then ${name} and $name from
    `values`. Raises KeyError naming a variable without a value."""
    expr = expr.replace("$__rate_interval", RATE_WINDOW).replace("${__rate_interval}", RATE_WINDOW)

    def one(m):
        name = m.group(1) or m.group(2)
        if name not in values:
            raise KeyError(f"no value for dashboard variable ${name} in {expr!r}")
        return values[name]
    return re.sub(r"\$\{([a-zA-Z_][a-zA-Z0-9_]*)\}|\$([a-zA-Z_][a-zA-Z0-9_]*)", one, expr)
