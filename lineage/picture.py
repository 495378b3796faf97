"""A lineage graph as a server-rendered SVG picture: layered left to right, upstream -> downstream.

No JavaScript and nothing fetched from the internet: the layout is computed here, in Python, from
the `{"nodes", "edges"}` shape that `lineage.selectors.present()` returns (the /graph contract).

Layout (a small Sugiyama-style pipeline, enough for a few hundred nodes and MAX_SEGMENTS edge segments):

1. break cycles (JobEvent declared lineage can read and write the same table): a depth-first search
   in a fixed order reverses its back edges, for layering only;
2. longest-path layering: a node sits one layer right of its furthest upstream neighbour, so every
   edge points right; a source node then moves right, next to its first reader;
3. an edge that spans several layers gets a dummy point per layer it crosses, so it is routed
   between the nodes instead of through them;
4. barycenter ordering: a few down and up sweeps sort each layer by the mean position of the
   neighbours in the previous layer, which removes most crossings;
5. coordinates: fixed-size boxes in columns, each column centred on the tallest one; edges are
   cubic curves from a box's right side to the next box's left side through the dummy points.

Labels are shortened to fit the box; the full node id is in the box's <title> (a tooltip, and what
screen readers announce with the link). Each box is a link to the node's page (`href(node)`).
"""

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

NODE_W = 216
NODE_H = 46
COL_GAP = 84
ROW_GAP = 18
MARGIN = 16
SWEEPS = 8
LABEL_CHARS = 28
# Every layout step costs about the number of edge segments: 80 jobs each reading the same 80 tables have
# 6,400, a picture nobody can read; beyond this the page lists the nodes (TooBig).
MAX_SEGMENTS = 2000

TYPE_STYLE = {  # fill, stroke, short type label
    "dataset": ("#e8f0fe", "#5a7fd6", "dataset"),
    "datasetVersion": ("#e8f0fe", "#5a7fd6", "dataset version"),
    "job": ("#fff4d6", "#c29a2e", "job"),
    "run": ("#fff4d6", "#c29a2e", "run"),
    "model": ("#e3f4ea", "#3f9a68", "model version"),
    "release": ("#f3e8fd", "#8a55c9", "release"),
}
EDGE_COLOUR = {"input": "#7b8496", "output": "#7b8496", "deployed": "#8a55c9"}


class TooBig(Exception):  # noqa: N818 - a verdict, not a failure
    """More edge segments (an edge, plus one per dummy point) than MAX_SEGMENTS: list the nodes instead."""

    def __init__(self, segments: int):
        super().__init__(f"{segments} edge segments (the limit is {MAX_SEGMENTS})")
        self.segments = segments


@dataclass
class Box:
    node: dict
    layer: int
    order: int = 0
    x: float = 0
    y: float = 0


@dataclass
class Layout:
    boxes: dict[str, Box]
    edges: list[tuple[str, str, str, list[tuple[float, float]]]]  # source, target, kind, points
    width: float
    height: float
    layers: int
    crossings: int = 0
    reversed_edges: set[tuple[str, str]] = field(default_factory=set)


def _acyclic(ids: list[str], succ: dict[str, list[str]]) -> set[tuple[str, str]]:
    """Back edges of an iterative DFS (visiting in sorted order, so the result is stable)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    back: set[tuple[str, str]] = set()
    for root in ids:
        if root in state:
            continue
        state[root] = 1
        stack = [(root, iter(succ[root]))]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
            elif state.get(child) == 1:
                back.add((node, child))
            elif child not in state:
                state[child] = 1
                stack.append((child, iter(succ[child])))
    return back


def _layers(ids: list[str], edges: list[tuple[str, str]]) -> dict[str, int]:
    """Longest path from the sources (Kahn's order over the acyclic edges)."""
    succ, indeg = defaultdict(list), dict.fromkeys(ids, 0)
    for s, t in edges:
        succ[s].append(t)
        indeg[t] += 1
    layer = dict.fromkeys(ids, 0)
    sources = [n for n in ids if indeg[n] == 0]
    ready = list(sources)
    while ready:
        node = ready.pop()
        for t in succ[node]:
            layer[t] = max(layer[t], layer[node] + 1)
            indeg[t] -= 1
            if indeg[t] == 0:
                ready.append(t)
    # A source (a side table, a base model) sits just left of its first reader, not in column 0:
    # otherwise every source would pull a long edge across the picture.
    for n in sources:
        if succ[n]:
            layer[n] = min(layer[t] for t in succ[n]) - 1
    return layer


def _crossings(columns: list[list[str]], links: dict[str, list[str]]) -> int:
    """Edge crossings between adjacent layers (links: node -> neighbours in the next layer).

    Two edges cross when one leaves higher and arrives lower: with the edges sorted by (left, right)
    position, the pairs whose right positions are out of order, counted with a Fenwick tree in
    O(E log V) (a dense layer has thousands of edges; comparing every pair took seconds)."""
    total = 0
    for left, right in zip(columns, columns[1:], strict=False):
        pos = {n: i for i, n in enumerate(right)}
        pairs = sorted((i, pos[t]) for i, s in enumerate(left) for t in links.get(s, []) if t in pos)
        tree = [0] * (len(right) + 1)  # Fenwick tree: earlier edges per right position
        for seen, (_, j) in enumerate(pairs):
            k, not_below = j + 1, 0
            while k:
                not_below += tree[k]
                k -= k & -k
            total += seen - not_below  # earlier edges (leaving higher) arriving lower than this one
            k = j + 1
            while k <= len(right):
                tree[k] += 1
                k += k & -k
    return total


def layout(graph: dict) -> Layout:
    nodes = {n["id"]: n for n in graph["nodes"]}
    ids = sorted(nodes, key=lambda i: (nodes[i].get("depth", 0), i))
    pairs = sorted(
        {(e["source"], e["target"]) for e in graph["edges"] if e["source"] in nodes and e["target"] in nodes}
    )
    pairs = [(s, t) for s, t in pairs if s != t]
    succ = defaultdict(list)
    for s, t in pairs:
        succ[s].append(t)
    back = _acyclic(ids, succ)
    forward = [(t, s) if (s, t) in back else (s, t) for s, t in pairs]
    layer = _layers(ids, forward)
    segments = sum(layer[t] - layer[s] for s, t in forward)
    if segments > MAX_SEGMENTS:
        raise TooBig(segments)

    # Long edges get one dummy point per layer they cross.
    down: dict[str, list[str]] = defaultdict(list)  # neighbours one layer right
    up: dict[str, list[str]] = defaultdict(list)
    chains: dict[tuple[str, str], list[str]] = {}
    layer_of = dict(layer)
    for s, t in forward:
        chain = [s]
        for step in range(layer[s] + 1, layer[t]):
            dummy = f"\0{s}\0{t}\0{step}"
            layer_of[dummy] = step
            chain.append(dummy)
        chain.append(t)
        chains[(s, t)] = chain
        for a, b in zip(chain, chain[1:], strict=False):
            down[a].append(b)
            up[b].append(a)

    count = max(layer_of.values(), default=-1) + 1
    columns: list[list[str]] = [[] for _ in range(count)]
    for node in sorted(layer_of, key=lambda n: (nodes[n].get("depth", 0) if n in nodes else 0, n)):
        columns[layer_of[node]].append(node)

    def sweep(cols, neighbours, order):
        for i in order:
            prev = {n: p for p, n in enumerate(cols[i - 1] if neighbours is up else cols[i + 1])}
            current = {n: p for p, n in enumerate(cols[i])}

            def key(n, prev=prev, current=current):
                ps = [prev[m] for m in neighbours.get(n, []) if m in prev]
                return (sum(ps) / len(ps) if ps else current[n], current[n])

            cols[i].sort(key=key)

    best, best_cross = [list(c) for c in columns], _crossings(columns, down)
    for _ in range(SWEEPS):
        if best_cross == 0:
            break
        sweep(columns, up, range(1, count))
        sweep(columns, down, range(count - 2, -1, -1))
        cross = _crossings(columns, down)
        if cross < best_cross:
            best, best_cross = [list(c) for c in columns], cross
    columns = best

    # Coordinates: dummies take a thin slot; each column is centred on the tallest.
    def slot(n):
        return (NODE_H if n in nodes else 8) + ROW_GAP

    height = max((sum(slot(n) for n in col) - ROW_GAP for col in columns), default=NODE_H)
    points: dict[str, tuple[float, float]] = {}
    boxes: dict[str, Box] = {}
    for i, col in enumerate(columns):
        x = MARGIN + i * (NODE_W + COL_GAP)
        y = MARGIN + (height - (sum(slot(n) for n in col) - ROW_GAP)) / 2
        for order, n in enumerate(col):
            if n in nodes:
                boxes[n] = Box(node=nodes[n], layer=i, order=order, x=x, y=y)
                points[n] = (x, y + NODE_H / 2)
            else:
                points[n] = (x + NODE_W / 2, y + 4)
            y += slot(n)

    kinds = {}
    for e in graph["edges"]:
        kinds.setdefault((e["source"], e["target"]), e.get("kind", ""))
    drawn = []
    for s, t in pairs:
        flipped = (s, t) in back
        chain = chains[(t, s) if flipped else (s, t)]
        route = []
        for k, n in enumerate(chain):
            px, py = points[n]
            if n in nodes:  # leave from the right side, arrive at the left side
                px = px + NODE_W if k == 0 else px
            route.append((px, py))
        if flipped:
            route.reverse()
        drawn.append((s, t, kinds.get((s, t), ""), route))
    width = MARGIN * 2 + max(count, 1) * NODE_W + max(count - 1, 0) * COL_GAP
    return Layout(
        boxes=boxes,
        edges=drawn,
        width=width,
        height=height + MARGIN * 2,
        layers=count,
        crossings=best_cross,
        reversed_edges=back,
    )


def _path(route: list[tuple[float, float]]) -> str:
    (x0, y0), rest = route[0], route[1:]
    d = [f"M{x0:.1f},{y0:.1f}"]
    px, py = x0, y0
    for x, y in rest:
        mid = (px + x) / 2
        d.append(f"C{mid:.1f},{py:.1f} {mid:.1f},{y:.1f} {x:.1f},{y:.1f}")
        px, py = x, y
    return " ".join(d)


def _short(text: str, limit: int = LABEL_CHARS) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def label(node: dict) -> tuple[str, str]:
    """(main line, second line) for a node box."""
    t = node.get("type")
    if t == "model":
        return f"{node['namespace']}/{node['name']} v{node['number']}", node.get("status") or ""
    if t in ("dataset", "job"):
        extra = ""
        if node.get("versions"):
            n = len(node["versions"])
            extra = f" · {n} version{'s' if n != 1 else ''}"
        if node.get("runs"):
            n = len(node["runs"])
            extra = f" · {n} run{'s' if n != 1 else ''}"
        return node["name"], node["namespace"] + extra
    if t == "datasetVersion":
        return node["name"], f"#{node['version']}" if node.get("version") else node["namespace"]
    if t == "run":
        return node["job"].split(":")[-1], f"run {node['runId'][:8]} · {node.get('state') or '—'}"
    if t == "release":
        return f"{node.get('target')} release {node.get('number')}", node.get("state") or ""
    return node["id"], t or ""


def svg(graph: dict, *, href: Callable[[dict], str | None], start: str | None = None) -> tuple[str, Layout]:
    """The picture as an inline <svg> element (markup-safe: every text is escaped here)."""
    lay = layout(graph)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="lineage-graph" width="{lay.width:.0f}" '
        f'height="{lay.height:.0f}" viewBox="0 0 {lay.width:.0f} {lay.height:.0f}" role="group" '
        f'aria-label="Lineage graph: {len(lay.boxes)} nodes, {len(lay.edges)} edges, upstream on the left">',
        "<style>"
        ".lg-node rect{stroke-width:1.2}.lg-node text{font:12px system-ui,sans-serif;fill:#1d2330}"
        ".lg-node .sub{font-size:10.5px;fill:#5b6475}.lg-node .kind{font-size:9px;fill:#5b6475;"
        "text-transform:uppercase;letter-spacing:.04em}.lg-node.start rect{stroke-width:3}"
        ".lg-node a:focus rect,.lg-node a:hover rect{stroke:#f0b400;stroke-width:3}"
        ".lg-edge{fill:none;stroke-width:1.3}"
        "</style>",
        "<defs>",
    ]
    for kind, colour in EDGE_COLOUR.items():
        out.append(
            f'<marker id="lg-arrow-{kind}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
            f'markerHeight="7" orient="auto"><path d="M0,0L10,5L0,10z" fill="{colour}"/></marker>'
        )
    out.append('</defs><g class="lg-edges">')
    for source, target, kind, route in lay.edges:
        colour = EDGE_COLOUR.get(kind, "#7b8496")
        dash = ' stroke-dasharray="5 3"' if kind == "deployed" else ""
        marker = f"lg-arrow-{kind}" if kind in EDGE_COLOUR else "lg-arrow-input"
        out.append(
            f'<path class="lg-edge" d="{_path(route)}" stroke="{colour}"{dash} marker-end="url(#{marker})">'
            f"<title>{escape(f'{source} → {target} ({kind})')}</title></path>"
        )
    out.append('</g><g class="lg-nodes">')
    for node_id, box in sorted(lay.boxes.items(), key=lambda kv: (kv[1].layer, kv[1].order)):
        node = box.node
        fill, stroke, kind_label = TYPE_STYLE.get(node.get("type"), ("#eceff5", "#7b8496", node.get("type", "")))
        main, sub = label(node)
        link = href(node)
        classes = "lg-node start" if node_id == start else "lg-node"
        out.append(f'<g class="{classes}" data-node-id={quoteattr(node_id)}>')
        if link:
            out.append(f"<a href={quoteattr(link)}>")
        out.append(f"<title>{escape(node_id)}</title>")
        out.append(
            f'<rect x="{box.x:.1f}" y="{box.y:.1f}" width="{NODE_W}" height="{NODE_H}" rx="6" '
            f'fill="{fill}" stroke="{stroke}"/>'
        )
        tx = box.x + 8
        out.append(f'<text class="kind" x="{tx:.1f}" y="{box.y + 11:.1f}">{escape(kind_label)}</text>')
        out.append(f'<text x="{tx:.1f}" y="{box.y + 26:.1f}">{escape(_short(main))}</text>')
        out.append(f'<text class="sub" x="{tx:.1f}" y="{box.y + 39:.1f}">{escape(_short(sub, 34))}</text>')
        if link:
            out.append("</a>")
        out.append("</g>")
    out.append("</g></svg>")
    return "".join(out), lay
