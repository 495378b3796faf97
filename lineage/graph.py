"""Graph traversal: one recursive CTE, one database round-trip per traversal.

The walk runs over (type, id) nodes (lineage.choices.NodeType). Its steps come from three
sources, unioned inside the recursive term:

1. `lineage_edge` rows (dataset version <-> run, base model -> run, JobEvent declared lineage,
   and whatever other apps append, e.g. governance's model version -> release);
2. a join of `registry_modelversion.run_id` with `lineage_run.run_uuid` (run -> model version, as
   declared at registration; no copy);
3. `lineage_versionrunlink` facts (run -> model version, linked afterwards), minus unlink facts.

`as_of` filters every fact by its `recorded_at`; without it no time predicate is emitted at all. A model
version's status, which its row holds only as it is now, is replayed from its audit events instead
(`_Query.model_status`): every reader of a walk (graph, exports, trail, page) gets the status as of T.
Model version nodes the user may not view are never entered, so the walk does not pass through
them either (nothing reachable only through a hidden model is returned). The walk keeps (node,
depth) rows distinct (UNION), so a node is expanded at most once per depth however many paths lead
to it; a row budget bounds the work on dense graphs and sets `truncated` when it is hit.

PostgreSQL allows one reference to the recursive CTE in its recursive term, so the three sources
sit in a LATERAL subquery; SQLite (3.34+) takes them as a compound of recursive SELECTs instead.
The same statement returns the nodes with their identity columns, the edges between them and the
truncation flag.
"""

# ruff: noqa: S608 - the SQL is assembled from constants and column names; every value is a bound parameter

import re
from dataclasses import dataclass, field
from datetime import datetime

from django.db import connection

from accounts import access
from lineage import nodes as node_ids
from lineage.choices import TERMINAL_STATES, EdgeKind, NodeType

DEFAULT_DEPTH = 20
MAX_DEPTH = 100
DEFAULT_BUDGET = 20_000  # walk rows; (node, depth) pairs

T_DSV, T_RUN, T_MODEL, T_DS, T_JOB = (
    int(NodeType.DATASET_VERSION),
    int(NodeType.RUN),
    int(NodeType.MODEL),
    int(NodeType.DATASET),
    int(NodeType.JOB),
)
OUTPUT = int(EdgeKind.OUTPUT)
STATUS_CHANGED = "version.updated"  # the audit action of a model version's status change

COLUMNS = [
    ("rec", "TEXT"),
    ("a_t", "INTEGER"),
    ("a_id", "BIGINT"),
    ("b_t", "INTEGER"),
    ("b_id", "BIGINT"),
    ("kind", "INTEGER"),
    ("depth", "INTEGER"),
    ("ns", "TEXT"),
    ("name", "TEXT"),
    ("version", "TEXT"),
    ("digest", "TEXT"),
    ("number", "INTEGER"),
    ("ref", "TEXT"),
    ("state", "TEXT"),
]


@dataclass
class Walk:
    """The raw result: nodes at version granularity with identity columns, edges, truncation."""

    start: node_ids.Start
    nodes: dict[tuple[int, int], dict] = field(default_factory=dict)
    edges: set[tuple[int, int, int, int, int]] = field(default_factory=set)  # src_t, src_id, dst_t, dst_id, kind
    truncated: bool = False
    rows: int = 0  # walk rows read, (node, depth) pairs per direction; >= the budget means it was hit

    def without_isolated_groups(self) -> "Walk":
        """Drop dataset/job nodes (JobEvent declared lineage) that no returned edge touches.

        A walk starting at `dataset:…` or `job:…` seeds the dataset or job node as well as its
        versions or runs; when it has no declared lineage it is just a placeholder for them.
        """
        touched = {(s, i) for s, i, _, _, _ in self.edges} | {(d, i) for _, _, d, i, _ in self.edges}
        keep = {
            key: row
            for key, row in self.nodes.items()
            if key[0] not in (T_DS, T_JOB) or key in touched or len(self.nodes) == 1
        }
        return Walk(start=self.start, nodes=keep, edges=self.edges, truncated=self.truncated, rows=self.rows)


@dataclass(frozen=True)
class _Branch:
    """One source of steps from walker `x` (columns x.t, x.id) to a neighbour (nt, nid)."""

    table: str  # the first table, joined to the walker on `on`
    on: str
    joins: str  # further joins
    nt: str
    nid: str
    kind: str
    where: str


def _row(**values) -> str:
    return ", ".join(values.get(name, f"CAST(NULL AS {typ})") + f" AS {name}" for name, typ in COLUMNS)


def _named_params(sql: str, params, prefix: str) -> tuple[str, dict]:
    """Turn Django's positional-%s SQL into named parameters, leaving literal %% alone."""
    out, named, index = [], {}, 0
    for part in re.split(r"(%%|%s)", sql):
        if part == "%s":
            key = f"{prefix}{index}"
            named[key] = params[index]
            out.append(f"%({key})s")
            index += 1
        else:
            out.append(part)
    return "".join(out), named


@dataclass
class Visibility:
    """What the user may see, as SQL the traversal embeds (resolved once, before the traversal).

    model_sql selects the registry_modelversion ids the user may view (None: all); type_sql the
    same for node types other apps register (governance's releases).
    """

    model_sql: str | None = None
    type_sql: dict[int, str] = field(default_factory=dict)
    params: dict = field(default_factory=dict)


def visibility(user) -> Visibility:
    """Resolve the user's permissions (Django caches them on the user; guardian may look up the
    permission's content type) into SQL for the traversal statement."""
    from registry.models import RegisteredModel

    result = Visibility()
    if not user.has_perm("registry.view_registeredmodel"):  # superusers, auditors, reviewers see every model
        visible = access.visible(user, RegisteredModel.objects.all()).values("pk")
        sql, params = visible.query.sql_with_params()
        sql, named = _named_params(sql, params, "vis_m")
        result.params.update(named)
        result.model_sql = f"SELECT vmv.id FROM registry_modelversion vmv WHERE vmv.model_id IN ({sql})"
    for handler in node_ids._HANDLERS.values():
        found = handler.visible_sql(user) if handler.visible_sql is not None else None
        if found is None:
            continue
        sql, params = found
        sql, named = _named_params(sql, params, f"vis_{int(handler.type)}_")
        result.params.update(named)
        result.type_sql[int(handler.type)] = sql
    return result


class _Query:
    def __init__(self, *, seen: Visibility, as_of: datetime | None, vendor: str):
        self.as_of = as_of
        self.vendor = vendor
        self.params: dict = dict(seen.params)
        if as_of is not None:
            # In the stored form: SQLite compares text, and an as_of with another offset than UTC's compared wrong.
            self.params["as_of"] = connection.ops.adapt_datetimefield_value(as_of)
        self.model_filter = seen.model_sql
        self.type_filters = seen.type_sql

    # --- predicates -----------------------------------------------------------------------
    def t(self, column: str) -> str:
        return f" AND {column} <= %(as_of)s" if self.as_of is not None else ""

    def visible(self, t: str, i: str) -> str:
        """Predicate: node (t, i) may be returned to the user."""
        parts = []
        if self.model_filter is not None:
            parts.append(f"({t} <> {T_MODEL} OR {i} IN ({self.model_filter}))")
        for code, sql in self.type_filters.items():
            parts.append(f"({t} <> {code} OR {i} IN ({sql}))")
        return "".join(f" AND {p}" for p in parts)

    def visible_model(self, i: str) -> str:
        return f" AND {i} IN ({self.model_filter})" if self.model_filter is not None else ""

    def not_unlinked(self, version: str, run_uuid: str, after: str | None) -> str:
        later = f" AND u.id > {after}" if after else ""
        return (
            f" AND NOT EXISTS (SELECT 1 FROM lineage_versionrunlink u WHERE u.version_id = {version}"
            f" AND u.run_uuid = {run_uuid} AND NOT u.linked{later}{self.t('u.recorded_at')})"
        )

    # --- the three sources of steps, per direction -------------------------------------------
    def branches(self, direction: str) -> list[_Branch]:
        t = self.t
        if direction == "upstream":
            return [
                _Branch(
                    "lineage_edge e",
                    "e.dst_type = x.t AND e.dst_id = x.id",
                    "",
                    "e.src_type",
                    "e.src_id",
                    "e.kind",
                    t("e.recorded_at") + self.visible("e.src_type", "e.src_id"),
                ),
                _Branch(
                    "registry_modelversion mv",
                    f"x.t = {T_MODEL} AND mv.id = x.id",
                    " JOIN lineage_run r ON r.run_uuid = mv.run_id",
                    str(T_RUN),
                    "r.id",
                    str(OUTPUT),
                    t("mv.created_at") + t("r.recorded_at") + self.not_unlinked("mv.id", "mv.run_id", None),
                ),
                _Branch(
                    "lineage_versionrunlink l",
                    f"x.t = {T_MODEL} AND l.version_id = x.id AND l.linked",
                    " JOIN lineage_run r ON r.run_uuid = l.run_uuid",
                    str(T_RUN),
                    "r.id",
                    str(OUTPUT),
                    t("l.recorded_at") + t("r.recorded_at") + self.not_unlinked("l.version_id", "l.run_uuid", "l.id"),
                ),
            ]
        return [
            _Branch(
                "lineage_edge e",
                "e.src_type = x.t AND e.src_id = x.id",
                "",
                "e.dst_type",
                "e.dst_id",
                "e.kind",
                t("e.recorded_at") + self.visible("e.dst_type", "e.dst_id"),
            ),
            _Branch(
                "lineage_run r",
                f"x.t = {T_RUN} AND r.id = x.id",
                " JOIN registry_modelversion mv ON mv.run_id = r.run_uuid",
                str(T_MODEL),
                "mv.id",
                str(OUTPUT),
                t("mv.created_at")
                + t("r.recorded_at")
                + self.not_unlinked("mv.id", "mv.run_id", None)
                + self.visible_model("mv.id"),
            ),
            _Branch(
                "lineage_run r",
                f"x.t = {T_RUN} AND r.id = x.id",
                " JOIN lineage_versionrunlink l ON l.run_uuid = r.run_uuid AND l.linked",
                str(T_MODEL),
                "l.version_id",
                str(OUTPUT),
                t("l.recorded_at")
                + t("r.recorded_at")
                + self.not_unlinked("l.version_id", "l.run_uuid", "l.id")
                + self.visible_model("l.version_id"),
            ),
        ]

    # --- statement pieces ----------------------------------------------------------------------
    def lateral(self, direction: str) -> str:
        """PostgreSQL: the neighbours of walker `x` as a LATERAL subquery (t, id, kind); each branch
        becomes an index lookup parameterized by x, whatever the planner guesses about x's size."""
        inner = " UNION ALL ".join(
            f"SELECT {b.nt} AS t, {b.nid} AS id, {b.kind} AS kind FROM {b.table}{b.joins} WHERE {b.on}{b.where}"
            for b in self.branches(direction)
        )
        return f"CROSS JOIN LATERAL ({inner}) n"

    def walk_cte(self, name: str, direction: str, start_sql: str) -> str:
        seed = f"SELECT CAST(s.t AS INTEGER) AS t, CAST(s.id AS BIGINT) AS id, 0 AS depth FROM ({start_sql}) s"
        if self.vendor == "postgresql":
            step = (
                f"SELECT CAST(n.t AS INTEGER), CAST(n.id AS BIGINT), x.depth + 1 FROM {name} x "
                f"{self.lateral(direction)} WHERE x.depth < %(depth)s"
            )
            # The outer LIMIT stops the recursion once the budget is read (PostgreSQL evaluates lazily).
            return f"{name}(t, id, depth) AS ({seed} UNION {step}), {name}_l AS (SELECT * FROM {name} LIMIT %(budget)s)"
        steps = " UNION ".join(
            f"SELECT CAST({b.nt} AS INTEGER), CAST({b.nid} AS BIGINT), x.depth + 1 FROM {name} x "
            f"JOIN {b.table} ON {b.on}{b.joins} WHERE x.depth < %(depth)s{b.where}"
            for b in self.branches(direction)
        )
        # SQLite: a LIMIT on the recursive CTE bounds the rows ever queued (breadth-first order).
        return f"{name}(t, id, depth) AS ({seed} UNION {steps} LIMIT %(budget)s), {name}_l AS (SELECT * FROM {name})"

    def reached_cte(self, name: str) -> str:
        return f"{name}_r AS (SELECT t, id, MIN(depth) AS depth FROM {name}_l GROUP BY t, id)"

    def _ends(self, direction: str, near: tuple[str, str], far: tuple[str, str]) -> dict:
        src, dst = (far, near) if direction == "upstream" else (near, far)
        return {"a_t": src[0], "a_id": src[1], "b_t": dst[0], "b_id": dst[1]}

    def edge_rows(self, name: str, direction: str) -> list[str]:
        """Edges between reached nodes, as (source, target) in the direction data flows."""
        if self.vendor == "postgresql":
            columns = _row(rec="'e'", kind="n.kind", **self._ends(direction, ("x.t", "x.id"), ("n.t", "n.id")))
            return [
                f"SELECT {columns} FROM {name}_r x {self.lateral(direction)}"
                f" WHERE (n.t, n.id) IN (SELECT t, id FROM {name}_r)"
            ]
        rows = []
        for b in self.branches(direction):
            columns = _row(rec="'e'", kind=b.kind, **self._ends(direction, ("x.t", "x.id"), ("y.t", "y.id")))
            rows.append(
                f"SELECT {columns}"
                f" FROM {name}_r x JOIN {b.table} ON {b.on}{b.joins}"
                f" JOIN {name}_r y ON y.t = {b.nt} AND y.id = {b.nid} WHERE 1 = 1{b.where}"
            )
        return rows

    def truncated_expr(self, name: str, direction: str) -> str:
        """The budget was hit, or a node at the depth limit has a neighbour that was not returned."""
        if self.vendor == "postgresql":
            beyond = (
                f"EXISTS (SELECT 1 FROM {name}_r x {self.lateral(direction)} WHERE x.depth >= %(depth)s"
                f" AND (n.t, n.id) NOT IN (SELECT t, id FROM {name}_r))"
            )
        else:
            beyond = " OR ".join(
                f"EXISTS (SELECT 1 FROM {name}_r x JOIN {b.table} ON {b.on}{b.joins} WHERE x.depth >= %(depth)s"
                f"{b.where} AND NOT EXISTS (SELECT 1 FROM {name}_r y WHERE y.t = {b.nt} AND y.id = {b.nid}))"
                for b in self.branches(direction)
            )
        return f"((SELECT COUNT(*) FROM {name}_l) >= %(budget)s OR {beyond})"

    def model_status(self) -> str:
        """A model version's status as of T. The row holds only the current one; every change of it is a
        `version.updated` audit event with the old value in `before` (registry.services.version_update), so
        the status at T is the `before` of the first change after T, or the current one if none came since."""
        if self.as_of is None:
            return "mv.status"
        from audit.models import AuditEvent
        from registry.models import ModelVersion

        self.params["status_subject"] = ModelVersion._meta.label_lower
        self.params["status_action"] = STATUS_CHANGED
        old = (
            "CAST(a.before AS jsonb) ->> 'status'"
            if self.vendor == "postgresql"
            else "json_extract(a.before, '$.status')"
        )
        return (
            f"COALESCE((SELECT {old} FROM {AuditEvent._meta.db_table} a"
            " WHERE a.subject_type = %(status_subject)s AND a.subject_id = CAST(mv.id AS TEXT)"
            f" AND a.action = %(status_action)s AND a.at > %(as_of)s AND {old} IS NOT NULL"
            " ORDER BY a.seq LIMIT 1), mv.status)"
        )

    def run_state(self, run: str) -> str:
        """The state of run `run` (its id column), as of T: OpenLineage's run cycle (docs/lineage.md, "Run state").

        Events are ordered by eventTime, then a terminal one (COMPLETE, FAIL, ABORT) after the others of the same
        eventTime, then by arrival. A START begins a cycle (a long-running job is started again after a terminal
        event); of the events since the last START, the state is the latest terminal one, else RUNNING if one
        came, else START: a RUNNING after a terminal event (a late report) does not reopen the run. OTHER events
        are not states; a run with no other event has none. One scan of the run's events (`starts` counts the
        STARTs so far). The rule's only statement: run_states() reads it for the run details."""
        terminal = ", ".join(f"'{state}'" for state in sorted(TERMINAL_STATES))
        rank = f"CASE WHEN c.event_type IN ({terminal}) THEN 2 WHEN c.event_type = 'RUNNING' THEN 1 ELSE 0 END"
        in_order = f"ev.event_time, CASE WHEN ev.event_type IN ({terminal}) THEN 1 ELSE 0 END, ev.id"
        events = (
            "SELECT ev.event_type, ev.event_time, ev.id,"
            f" SUM(CASE WHEN ev.event_type = 'START' THEN 1 ELSE 0 END) OVER (ORDER BY {in_order}) AS starts"
            f" FROM lineage_lineageevent ev WHERE ev.run_id = {run} AND ev.event_type <> 'OTHER'"
            f"{self.t('ev.recorded_at')}"
        )
        return (
            f"(SELECT c.event_type FROM ({events}) c"
            f" ORDER BY c.starts DESC, {rank} DESC, c.event_time DESC, c.id DESC LIMIT 1)"
        )

    def node_rows(self) -> list[str]:
        state = self.run_state("r.id")
        base = {"rec": "'n'", "a_t": "x.t", "a_id": "x.id", "depth": "x.depth"}
        model = {
            "ns": "m.namespace",
            "name": "m.name",
            "digest": "mv.digest",
            "number": "mv.number",
            "state": self.model_status(),
        }
        known = ", ".join(str(c) for c in (T_DSV, T_RUN, T_MODEL, T_DS, T_JOB))
        return [
            f"SELECT {_row(**base, ns='d.namespace', name='d.name', version='v.version', digest='v.digest')}"
            f" FROM reached x JOIN lineage_datasetversion v ON x.t = {T_DSV} AND v.id = x.id"
            " JOIN lineage_dataset d ON d.id = v.dataset_id",
            f"SELECT {_row(**base, ns='d.namespace', name='d.name')}"
            f" FROM reached x JOIN lineage_dataset d ON x.t = {T_DS} AND d.id = x.id",
            f"SELECT {_row(**base, ns='j.namespace', name='j.name', ref='CAST(r.run_uuid AS TEXT)', state=state)}"
            f" FROM reached x JOIN lineage_run r ON x.t = {T_RUN} AND r.id = x.id"
            " JOIN lineage_job j ON j.id = r.job_id",
            f"SELECT {_row(**base, ns='j.namespace', name='j.name')}"
            f" FROM reached x JOIN lineage_job j ON x.t = {T_JOB} AND j.id = x.id",
            f"SELECT {_row(**base, **model)}"
            f" FROM reached x JOIN registry_modelversion mv ON x.t = {T_MODEL} AND mv.id = x.id"
            " JOIN registry_registeredmodel m ON m.id = mv.model_id",
            f"SELECT {_row(**base)} FROM reached x WHERE x.t NOT IN ({known})",
        ]


def walk(
    *,
    user,
    start: node_ids.Start,
    direction: str = "both",
    depth: int = DEFAULT_DEPTH,
    as_of: datetime | None = None,
    budget: int = DEFAULT_BUDGET,
    seen: Visibility | None = None,
) -> Walk:
    """Traverse from `start` (already resolved and permission-checked) in one statement.

    `seen` is the user's visibility (lineage.graph.visibility(user)); resolved here when not given.
    """
    seen = seen if seen is not None else visibility(user)
    query = _Query(seen=seen, as_of=as_of, vendor=connection.vendor)
    query.params.update(start.params)
    query.params.update({"depth": depth, "budget": budget})
    directions = ["upstream", "downstream"] if direction == "both" else [direction]
    names = {"upstream": "up", "downstream": "down"}

    ctes = []
    for d in directions:
        ctes.append(query.walk_cte(names[d], d, start.sql))
        ctes.append(query.reached_cte(names[d]))
    reached = " UNION ALL ".join(f"SELECT t, id, depth FROM {names[d]}_r" for d in directions)
    ctes.append(f"reached AS (SELECT t, id, MIN(depth) AS depth FROM ({reached}) rr GROUP BY t, id)")

    rows = query.node_rows()
    for d in directions:
        rows.extend(query.edge_rows(names[d], d))
    truncated = " OR ".join(query.truncated_expr(names[d], d) for d in directions)
    rows_read = " + ".join(f"(SELECT COUNT(*) FROM {names[d]}_l)" for d in directions)
    flag = _row(rec="'t'", kind=f"CASE WHEN {truncated} THEN 1 ELSE 0 END", depth=f"CAST({rows_read} AS INTEGER)")
    rows.append(f"SELECT {flag}")
    sql = "WITH RECURSIVE " + ", ".join(ctes) + " " + " UNION ALL ".join(rows)

    result = Walk(start=start)
    with connection.cursor() as cursor:
        cursor.execute(sql, query.params)
        for row in cursor.fetchall():
            rec = dict(zip((c for c, _ in COLUMNS), row, strict=True))
            if rec["rec"] == "n":
                result.nodes[(rec["a_t"], rec["a_id"])] = rec
            elif rec["rec"] == "e":
                result.edges.add((rec["a_t"], rec["a_id"], rec["b_t"], rec["b_id"], rec["kind"]))
            else:
                result.truncated = bool(rec["kind"])
                result.rows = rec["depth"]
    return result


def run_states(run_ids: list[int], as_of: datetime | None = None) -> dict[int, str | None]:
    """The state of each run as of a time (None: now), by the walk's rule (_Query.run_state): one statement."""
    if not run_ids:
        return {}
    query = _Query(seen=Visibility(), as_of=as_of, vendor=connection.vendor)
    ids = sorted(set(run_ids))
    query.params.update({f"run_{i}": pk for i, pk in enumerate(ids)})
    placeholders = ", ".join(f"%(run_{i})s" for i in range(len(ids)))
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT r.id, {query.run_state('r.id')} FROM lineage_run r WHERE r.id IN ({placeholders})", query.params
        )
        return dict(cursor.fetchall())
