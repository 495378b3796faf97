"""OpenLineage 2-0-2 in: validate an event and map it to what the registry records.

`parse(body)` checks everything before anything is written and raises InvalidInput naming the
field (`inputs[1].facets.schema.fields[0].name: ...`), so a malformed event is a 400 with nothing
stored. The facets the registry interprets are checked for shape; other facets are kept as sent.

Mapping (see docs/lineage.md):
- RunEvent -> Job, Run, the run's state change (eventType at eventTime), run and job facets;
  inputs -> dataset versions the run used, outputs -> dataset versions it produced.
- DatasetEvent -> Dataset (and a DatasetVersion when the `version` facet is sent) with its facets.
- JobEvent -> Job with its facets; inputs/outputs -> declared dataset -> job -> dataset lineage.
- A dataset in namespace `registry` named `{namespace}/{name}:{number}` (or `@sha256:<hex>`) is a
  model version: as an input, a base model the run used; as an output, a model version the run
  produced (the same as registering the version with that run_id).
"""

import hashlib
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import urlparse

from audit.chain import canonical_json
from core import url_credentials
from core.errors import InvalidInput
from core.unicode import control, control_message
from lineage.choices import EventKind, RunState
from lineage.models import NAME_MAX
from lineage.nodes import MODEL_DATASET_NAMESPACE

SPEC_VERSION = "2-0-2"
SCHEMA_URL = f"https://openlineage.io/spec/{SPEC_VERSION}/OpenLineage.json#/$defs/"
EXPORT_PRODUCER = "urn:model-governance-registry:lineage-export"  # lineage.exports' `producer`
MAX_DATASETS = 1000  # per inputs / outputs list
MAX_FACET_NAME = 200
MAX_VERSION = 500
ENVIRONMENT_FACET = "environmentVariables"  # redacted by lineage.services wherever it is attached
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
MODEL_REF = re.compile(
    r"^(?P<namespace>[a-z0-9][a-z0-9._-]{0,63})/(?P<name>[a-z0-9][a-z0-9._-]{0,63})"
    r"(?::(?P<number>[0-9]{1,10})|@(?P<digest>sha256:[0-9a-f]{64}))$"
)


@dataclass(frozen=True)
class ModelRef:
    namespace: str
    name: str
    number: int | None
    digest: str | None

    def __str__(self) -> str:
        suffix = f":{self.number}" if self.number is not None else f"@{self.digest}"
        return f"{self.namespace}/{self.name}{suffix}"


@dataclass
class DatasetRef:
    path: str  # where it was in the event, for error messages: "inputs[2]"
    namespace: str
    name: str
    facets: dict = field(default_factory=dict)  # but `version`, which is read into `version`
    role_facets: dict = field(default_factory=dict)  # inputFacets / outputFacets
    version: str | None = None  # from the `version` facet
    model: ModelRef | None = None


@dataclass
class ParsedEvent:
    kind: EventKind
    event_time: datetime
    producer: str
    schema_url: str
    payload_sha256: str
    event_type: str = ""
    run_uuid: uuid.UUID | None = None
    run_facets: dict = field(default_factory=dict)
    job: tuple[str, str] | None = None
    job_facets: dict = field(default_factory=dict)
    inputs: list[DatasetRef] = field(default_factory=list)
    outputs: list[DatasetRef] = field(default_factory=list)
    dataset: DatasetRef | None = None


def _bad(path: str, message: str):
    raise InvalidInput(f"Invalid OpenLineage event: {path}: {message}", code="invalid_event", detail={path: [message]})


def _obj(value, path: str, *, required: bool = True) -> dict:
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        _bad(path, "must be an object." if value is not None else "is required.")
    return value


def _str(parent: dict, key: str, path: str, *, required: bool = True, max_length: int = NAME_MAX) -> str | None:
    value = parent.get(key)
    where = f"{path}.{key}" if path else key
    if value is None:
        if required:
            _bad(where, "is required.")
        return None
    if not isinstance(value, str):
        _bad(where, "must be a string.")
    if required and not value.strip():
        _bad(where, "must not be empty.")
    if len(value.encode()) > max_length:
        _bad(where, f"is longer than {max_length} bytes.")
    return value


def _identifier(parent: dict, key: str, path: str, *, max_length: int = NAME_MAX) -> str:
    """A namespace, name or dataset version: part of a node id, a PROV id, a CSV cell and the page, which a
    control character would break or disguise (core.unicode.control)."""
    value = _str(parent, key, path, max_length=max_length)
    found = control(value)
    if found is not None:
        _bad(f"{path}.{key}", control_message(found[1], found[0]))
    return value


def _int(parent: dict, key: str, path: str) -> int | None:
    value = parent.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        _bad(f"{path}.{key}", "must be a non-negative integer.")
    return value


def _uri(parent: dict, key: str, path: str) -> str:
    value = _location(parent, key, path)
    if not urlparse(value).scheme:
        _bad(f"{path}.{key}" if path else key, f"'{value}' is not a URI.")
    return value


def _location(parent: dict, key: str, path: str, *, required: bool = True) -> str | None:
    """A URL or repository location, which must not carry a credential: it is stored and shown in every export and
    the trail to whoever may read the lineage (core.url_credentials)."""
    value = _str(parent, key, path, required=required, max_length=2000)
    problem = url_credentials.problem(value) if value else ""
    if problem:
        _bad(f"{path}.{key}" if path else key, problem)
    return value


# RFC 3339 §5.6 date-time, JSON Schema's `date-time` (OpenLineage's eventTime and nominalTime): 'T' between date
# and time, seconds and an offset required, 't'/'z' allowed. Read with a space too, only to say what is wrong, and
# without the offset, which _time takes as UTC.
DATE_TIME = re.compile(
    r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})(?P<sep>[Tt ])"
    r"(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})(?:\.(?P<fraction>[0-9]+))?"
    r"(?P<offset>[Zz]|(?P<sign>[+-])(?P<off_hour>[0-9]{2}):(?P<off_minute>[0-9]{2}))?"
)
DATE_TIME_FORM = "YYYY-MM-DDTHH:MM:SS[.fraction] and Z or ±HH:MM, as in 2026-01-01T12:00:00Z"


def _time(value, path: str) -> datetime:
    """An RFC 3339 date-time (one without an offset read as UTC), in UTC. Fractions finer than a microsecond are
    cut. A leap second (second 60, only at 23:59 UTC: 23:59:60Z, 15:59:60-08:00) is read as 23:59:59.999999 UTC:
    neither Python nor PostgreSQL has second 60, and that instant keeps it after every earlier time of the day."""
    if not isinstance(value, str):
        _bad(path, "is required (an RFC 3339 date-time)." if value is None else "must be an RFC 3339 date-time string.")
    m = DATE_TIME.fullmatch(value)
    if m is None:
        if "t" not in value.lower() and " " not in value:
            _bad(path, f"'{value}' has no time part; use an RFC 3339 date-time ({DATE_TIME_FORM}).")
        _bad(path, f"'{value}' is not an RFC 3339 date-time ({DATE_TIME_FORM}).")
    if m["sep"] == " ":
        _bad(path, f"'{value}' separates the date and the time with a space; an RFC 3339 date-time has 'T' there.")
    # No offset: read as UTC. RFC 3339 requires one, but the OpenLineage Python client's own check (dateutil's
    # isoparse) lets it through, and its documented examples and the Great Expectations action send
    # datetime.now().isoformat(): refusing it lost those events.
    offset = timedelta(0)
    if m["sign"]:
        if int(m["off_hour"]) > 23 or int(m["off_minute"]) > 59:
            _bad(path, f"'{value}' has offset {m['offset']}; an offset's hours are 00-23 and its minutes 00-59.")
        offset = (1 if m["sign"] == "+" else -1) * timedelta(hours=int(m["off_hour"]), minutes=int(m["off_minute"]))
    leap = m["second"] == "60"
    try:
        local = datetime(
            *(int(m[part]) for part in ("year", "month", "day", "hour", "minute")),
            59 if leap else int(m["second"]),
            int((m["fraction"] or "").ljust(6, "0")[:6]),
            tzinfo=timezone(offset),
        )
        parsed = local.astimezone(UTC)
    except ValueError as exc:  # a day, hour or second out of range
        _bad(path, f"'{value}' is not an RFC 3339 date-time ({exc}).")
    except OverflowError:  # 0001-01-01T00:00:00+05:00 is year 0 in UTC, 9999-12-31T23:00:00-05:00 year 10000
        _bad(path, f"'{value}' is outside years 1-9999 once in UTC.")
    if leap:
        if (parsed.hour, parsed.minute) != (23, 59):
            _bad(path, f"'{value}' has second 60, a leap second, which is only at 23:59:60 UTC.")
        parsed = parsed.replace(second=59, microsecond=999_999)
    return parsed


def _schema_fields(fields, path: str, level: int = 0) -> None:
    if not isinstance(fields, list):
        _bad(path, "must be an array.")
    if level > 20:
        _bad(path, "is nested too deeply.")
    for i, item in enumerate(fields):
        where = f"{path}[{i}]"
        _obj(item, where)
        _str(item, "name", where)
        _str(item, "type", where, required=False)
        _str(item, "description", where, required=False, max_length=10_000)
        if item.get("fields") is not None:
            _schema_fields(item["fields"], f"{where}.fields", level + 1)


def _check_dataset_facet(name: str, facet: dict, path: str) -> None:
    if facet.get("_deleted") is True:
        return
    if name == "schema":
        if facet.get("fields") is not None:
            _schema_fields(facet["fields"], f"{path}.fields")
    elif name == "dataSource":
        _str(facet, "name", path, required=False)
        if facet.get("uri") is not None:
            _uri(facet, "uri", path)
    elif name == "version":
        _identifier(facet, "datasetVersion", path, max_length=MAX_VERSION)


def _check_role_facet(name: str, facet: dict, path: str) -> None:
    if name in ("outputStatistics", "dataQualityMetrics", "inputStatistics"):
        for key in ("rowCount", "size", "bytes", "fileCount"):
            _int(facet, key, path)


def _check_job_facet(name: str, facet: dict, path: str) -> None:
    if facet.get("_deleted") is True:
        return
    if name == "sourceCodeLocation":
        _str(facet, "type", path)
        _location(facet, "url", path)
        _location(facet, "repoUrl", path, required=False)  # also git@host:org/repo, not a URI
        for key in ("path", "version", "tag", "branch", "pullRequestNumber"):
            _str(facet, key, path, required=False, max_length=2000)
    elif name == "jobType":
        _str(facet, "processingType", path)
        _str(facet, "integration", path)
        _str(facet, "jobType", path, required=False)


def _check_run_facet(name: str, facet: dict, path: str) -> None:
    if name == "nominalTime":
        _time(facet.get("nominalStartTime"), f"{path}.nominalStartTime")
        if facet.get("nominalEndTime") is not None:
            _time(facet["nominalEndTime"], f"{path}.nominalEndTime")
    elif name == "parent":
        run = _obj(facet.get("run"), f"{path}.run")
        _uuid(run.get("runId"), f"{path}.run.runId")
        job = _obj(facet.get("job"), f"{path}.job")
        _str(job, "namespace", f"{path}.job")
        _str(job, "name", f"{path}.job")
    elif name == "processing_engine":
        _str(facet, "version", path)
    elif _is_facet(name, facet, "executionParameters", "ExecutionParametersRunFacet"):
        params = facet.get("parameters")
        if params is not None:
            if not isinstance(params, list):
                _bad(f"{path}.parameters", "must be an array.")
            for i, item in enumerate(params):
                _obj(item, f"{path}.parameters[{i}]")
                _str(item, "key", f"{path}.parameters[{i}]")


def _check_environment(facet: dict, path: str) -> None:
    """lineage.services redacts a facet by this name wherever it is attached (run, job, dataset, input or
    output facets), so its shape is checked everywhere too: every accepted event can be redacted."""
    items = facet.get(ENVIRONMENT_FACET)
    if items is None and facet.get("_deleted") is True:
        return  # a deletion marker: no variables to redact
    if not isinstance(items, list):
        _bad(f"{path}.{ENVIRONMENT_FACET}", "must be an array of {name, value} objects.")
    for i, item in enumerate(items):
        where = f"{path}.{ENVIRONMENT_FACET}[{i}]"
        _obj(item, where)
        _str(item, "name", where)
        _str(item, "value", where, required=False, max_length=10_000)


def _is_facet(name: str, facet: dict, key: str, schema: str) -> bool:
    return name == key or f"/{schema}.json" in str(facet.get("_schemaURL", ""))


def _facets(value, path: str, check) -> dict:
    facets = _obj(value, path, required=False)
    for name, facet in facets.items():
        if not name or len(name) > MAX_FACET_NAME:
            _bad(path, f"facet name '{name[:50]}' must have 1 to {MAX_FACET_NAME} characters.")
        where = f"{path}.{name}"
        _obj(facet, where)
        for key in ("_producer", "_schemaURL"):  # the 2-0-2 BaseFacet's: URIs, which the export sends on as they are
            if key in facet:
                _uri(facet, key, where)
        if name == ENVIRONMENT_FACET:
            _check_environment(facet, where)
        check(name, facet, where)
    return facets


# The spec's `format: uuid` (RFC 4122's 8-4-4-4-12 hex digits). uuid.UUID also reads `urn:uuid:…`, `{…}` and 32
# bare digits, which the export would then send back hyphenated: a runId the producer's other consumers never saw.
_UUID_TEXT = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")


def _uuid(value, path: str) -> uuid.UUID:
    if not isinstance(value, str):
        _bad(path, "is required (a UUID)." if value is None else "must be a UUID string.")
    if not _UUID_TEXT.fullmatch(value):
        _bad(path, f"'{value[:80]}' is not a UUID in its standard form (8-4-4-4-12 hex digits, as uuid4() prints).")
    return uuid.UUID(value)


def _dataset(value, path: str, role_key: str | None) -> DatasetRef:
    data = _obj(value, path)
    ref = DatasetRef(path=path, namespace=_identifier(data, "namespace", path), name=_identifier(data, "name", path))
    ref.facets = _facets(data.get("facets"), f"{path}.facets", _check_dataset_facet)
    if role_key:
        ref.role_facets = _facets(data.get(role_key), f"{path}.{role_key}", _check_role_facet)
    # The `version` facet names the dataset version (its identity), which the event's facts are about: it is not
    # stored as a fact of its own, so the export's restatement of it, sent back, records nothing.
    version = ref.facets.get("version")
    ref.facets = {name: facet for name, facet in ref.facets.items() if name != "version"}
    if version and version.get("_deleted") is not True:
        ref.version = version["datasetVersion"]
    if ref.namespace == MODEL_DATASET_NAMESPACE:
        match = MODEL_REF.match(ref.name)
        if match is None:
            _bad(
                f"{path}.name",
                f"datasets in namespace '{MODEL_DATASET_NAMESPACE}' name model versions: "
                "{namespace}/{name}:{number} or {namespace}/{name}@sha256:<hex>, not " + f"'{ref.name}'.",
            )
        ref.model = ModelRef(
            match["namespace"],
            match["name"],
            int(match["number"]) if match["number"] else None,
            match["digest"],
        )
    return ref


def _datasets(value, path: str, role_key: str) -> list[DatasetRef]:
    if value is None:
        return []
    if not isinstance(value, list):
        _bad(path, "must be an array.")
    if len(value) > MAX_DATASETS:
        _bad(path, f"has {len(value)} datasets; at most {MAX_DATASETS} per event.")
    return [_dataset(item, f"{path}[{i}]", role_key) for i, item in enumerate(value)]


def _kind(body: dict, schema_url: str) -> EventKind:
    if "run" in body:
        kind = EventKind.RUN
    elif "dataset" in body:
        kind = EventKind.DATASET
    elif "job" in body:
        kind = EventKind.JOB
    else:
        _bad("run", "is required: a RunEvent has run and job, a JobEvent job, a DatasetEvent dataset.")
    fragment = urlparse(schema_url).fragment
    named = fragment.rsplit("/", 1)[-1] if fragment else ""
    if named in EventKind.values and named != kind:
        _bad("schemaURL", f"names a {named} but the event has the fields of a {kind.value}.")
    return kind


def parse(body) -> ParsedEvent:
    """Validate an OpenLineage event (a decoded JSON value); raise InvalidInput naming the bad field."""
    if not isinstance(body, dict):
        raise InvalidInput(
            "Invalid OpenLineage event: the body must be a JSON object.",
            code="invalid_event",
            detail={"body": ["Expected an object."]},
        )
    schema_url = _uri(body, "schemaURL", "")
    kind = _kind(body, schema_url)
    event = ParsedEvent(
        kind=kind,
        event_time=_time(body.get("eventTime"), "eventTime"),
        producer=_uri(body, "producer", ""),
        schema_url=schema_url,
        payload_sha256=hashlib.sha256(canonical_json(body)).hexdigest(),
    )
    if kind == EventKind.RUN:
        event_type = body.get("eventType")
        if event_type is not None and event_type not in RunState.values:
            _bad("eventType", f"'{event_type}' is not one of {', '.join(RunState.values)}.")
        event.event_type = event_type or RunState.OTHER
        run = _obj(body.get("run"), "run")
        event.run_uuid = _uuid(run.get("runId"), "run.runId")
        event.run_facets = _facets(run.get("facets"), "run.facets", _check_run_facet)
    if kind in (EventKind.RUN, EventKind.JOB):
        job = _obj(body.get("job"), "job")
        event.job = (_identifier(job, "namespace", "job"), _identifier(job, "name", "job"))
        event.job_facets = _facets(job.get("facets"), "job.facets", _check_job_facet)
        event.inputs = _datasets(body.get("inputs"), "inputs", "inputFacets")
        event.outputs = _datasets(body.get("outputs"), "outputs", "outputFacets")
        if kind == EventKind.JOB:
            for ref in [*event.inputs, *event.outputs]:
                if ref.model is not None:
                    _bad(ref.path, "a JobEvent declares datasets; model versions are linked by RunEvents.")
    if kind == EventKind.DATASET:
        event.dataset = _dataset(body.get("dataset"), "dataset", None)
        # A model version is the registry's: a DatasetEvent about one (the export's, sent back) may restate its
        # digest as the `version` facet and nothing else, which the ingest checks and records nothing of.
        extra = sorted(event.dataset.facets) if event.dataset.model is not None else []
        if extra:
            _bad(
                f"dataset.facets.{extra[0]}",
                f"a dataset in namespace '{MODEL_DATASET_NAMESPACE}' is a model version, whose only facet here is "
                "`version` (its digest); its other metadata is registered with the version.",
            )
    return event


def as_exported(facet: dict, base: str) -> dict:
    """A stored facet as lineage.exports writes it. Ingest keeps a facet without `_producer` or `_schemaURL` as
    sent, and the 2-0-2 schema requires both, so the export fills in the missing ones: this exporter and the base
    facet type the facet extends (`base`: RunFacet, JobFacet, DatasetFacet, InputDatasetFacet or
    OutputDatasetFacet). Ingest uses it to recognise the export's rendering of a facet it holds."""
    return {"_producer": EXPORT_PRODUCER, "_schemaURL": SCHEMA_URL + base, **facet}


def dataset_digest(version: str | None) -> str:
    """A dataset version that is a content digest states it: version facet "sha256:<hex>"."""
    return version if version and DIGEST.match(version) else ""
