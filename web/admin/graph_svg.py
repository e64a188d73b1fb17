"""A deployment's role graph drawn as SVG on the server: nodes by roles, edges, state colours.

Input is appliance.annealer.graph.deployment_graph() as is. Columns are roles in cohort order (so
`requires` edges run left to right, drawn as arcs between the column heads); rows are nodes; each
cell is the node-role, coloured by state, with its own parent edges drawn behind the cells. Past
MAX_ROWS nodes the picture says how many it left out (the page asks deployment_graph for the first
MAX_ROWS nodes only, so a 5,000-node deployment costs no more to draw than a 40-node one); the table
below it lists the nodes.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from markupsafe import Markup, escape

COLOURS = {
    "proposed": "#b7bfcc",
    "todo": "#2f6fd6",
    "transition": "#d99a0b",
    "active": "#1f8a4c",
    "blocked": "#8a93a3",
    "error": "#c62d2d",
}
ORDER = ("active", "transition", "todo", "blocked", "error", "proposed")
MAX_ROWS = 40
COL_W, ROW_H, LEFT, TOP, RADIUS = 118, 26, 190, 96, 8


def _cell(col: int, row: int) -> tuple[float, float]:
    return LEFT + col * COL_W + COL_W / 2, TOP + row * ROW_H + ROW_H / 2


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _role_head(out: list[str], col: int, role: dict[str, Any]) -> None:
    x = LEFT + col * COL_W + 4
    out.append(
        f'<g class="role" data-role="{escape(role["name"])}"><rect x="{x}" y="34" width="{COL_W - 8}" '
        f'height="34" rx="5" fill="#fff" stroke="#9aa3b2"/>'
        f'<text x="{x + (COL_W - 8) / 2}" y="50" text-anchor="middle" font-size="11.5" font-weight="600">'
        f"{escape(_short(role['name'], 17))}</text>"
        f"<title>{escape(role['name'])} (jig {escape(role['jig'])}, cohort {role['cohort']})</title>"
    )
    counts: dict[str, int] = role.get("states", {})
    total = sum(counts.values()) or 1
    offset = 0.0
    width = COL_W - 20
    for state in ORDER:
        if counts.get(state):
            part = width * counts[state] / total
            out.append(
                f'<rect x="{x + 6 + offset:.1f}" y="57" width="{part:.1f}" height="6" '
                f'fill="{COLOURS[state]}"><title>{state}: {counts[state]}</title></rect>'
            )
            offset += part
    out.append("</g>")


def render_graph(graph: dict[str, Any], node_total: int | None = None) -> Markup:
    """`node_total`: how many nodes the deployment has when `graph` holds only the first ones."""
    roles = graph["roles"]["nodes"]
    col_of = {r["id"]: i for i, r in enumerate(roles)}
    name_col = {r["name"]: i for i, r in enumerate(roles)}
    node_roles = graph.get("node_roles", {"nodes": [], "edges": []})
    node_names = list(dict.fromkeys(nr["node"] for nr in node_roles["nodes"]))
    shown = node_names[:MAX_ROWS]
    row_of = {name: i for i, name in enumerate(shown)}
    where: dict[int, tuple[float, float]] = {}
    cells: list[str] = []
    for nr in node_roles["nodes"]:
        if nr["node"] not in row_of or nr["role"] not in name_col:
            continue
        x, y = _cell(name_col[nr["role"]], row_of[nr["node"]])
        where[nr["id"]] = (x, y)
        cells.append(
            f'<circle class="nr" data-node-role="{nr["id"]}" data-state="{escape(nr["state"])}" cx="{x}" '
            f'cy="{y}" r="{RADIUS}" fill="{COLOURS.get(nr["state"], "#c9ced8")}" stroke="#fff" '
            f'stroke-width="2"><title>{escape(nr["node"])} · {escape(nr["role"])}: {escape(nr["state"])}'
            f"</title></circle>"
        )
    width = LEFT + max(len(roles), 1) * COL_W + 20
    height = TOP + max(len(shown), 1) * ROW_H + 44
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="system-ui, sans-serif" role="img" '
        f'aria-label="role graph of {escape(graph["deployment"]["name"])}">',
        '<defs><marker id="arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" markerHeight="7" '
        'orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#7d8699"/></marker></defs>',
        f'<text x="8" y="20" font-size="13" font-weight="600">{escape(graph["deployment"]["name"])} '
        f"({escape(graph['deployment']['state'])})</text>",
    ]
    for edge in graph["roles"]["edges"]:
        if edge["parent"] in col_of and edge["child"] in col_of:
            x1 = LEFT + col_of[edge["parent"]] * COL_W + COL_W / 2
            x2 = LEFT + col_of[edge["child"]] * COL_W + COL_W / 2
            lift = 10 + 4 * abs(col_of[edge["child"]] - col_of[edge["parent"]])
            out.append(
                f'<path class="role-edge" d="M{x1},34 Q{(x1 + x2) / 2},{34 - lift} {x2 - 6},34" fill="none" '
                f'stroke="#7d8699" stroke-width="1.3" marker-end="url(#arrow)"/>'
            )
    for col, role in enumerate(roles):
        _role_head(out, col, role)
    for row, name in enumerate(shown):
        y = TOP + row * ROW_H + ROW_H / 2
        if row % 2 == 0:
            out.append(f'<rect x="0" y="{y - ROW_H / 2}" width="{width}" height="{ROW_H}" fill="#f6f7f9"/>')
        out.append(f'<text x="8" y="{y + 4}" font-size="12">{escape(_short(name, 26))}</text>')
    for edge in node_roles["edges"]:
        if edge["parent"] in where and edge["child"] in where:
            (x1, y1), (x2, y2) = where[edge["parent"]], where[edge["child"]]
            out.append(
                f'<line class="nr-edge" x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="#aab2c0" '
                'stroke-width="1.2"/>'
            )
    out.extend(cells)
    hidden = (node_total if node_total is not None else len(node_names)) - len(shown)
    out.append(_legend(node_roles["nodes"], height - 16, hidden))
    out.append("</svg>")
    return Markup("".join(out))


def _legend(node_roles: list[dict[str, Any]], y: float, hidden: int) -> str:
    counts = Counter(nr["state"] for nr in node_roles)
    parts = []
    x = 8.0
    for state in ORDER:
        parts.append(
            f'<circle cx="{x + 6}" cy="{y - 4}" r="6" fill="{COLOURS[state]}"/>'
            f'<text x="{x + 16}" y="{y}" font-size="12">{state} {counts.get(state, 0)}</text>'
        )
        x += 105
    if hidden > 0:
        parts.append(f'<text x="{x}" y="{y}" font-size="12" fill="#667085">+{hidden} more nodes</text>')
    return "".join(parts)
