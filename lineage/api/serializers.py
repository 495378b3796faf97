from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.api import StrictSerializer, UUIDString
from lineage import graph, nodes, selectors
from lineage.exports import FORMATS

NODE_ID_HELP = (
    "dataset:{namespace}:{name}, dataset:{namespace}:{name}#{version}, job:{namespace}:{name}, run:{uuid}, "
    "model:{namespace}/{name}:{number} or release:{target}:{number}; in a name '%', ':' and '#' are written %25, "
    "%3A and %23 (a job name's '#' as it is), in a dataset namespace '%' and '#' (docs/lineage.md \"Node ids\")"
)


class GraphQuery(StrictSerializer):
    nodeId = serializers.CharField(max_length=nodes.MAX_NODE_ID, help_text=NODE_ID_HELP)  # noqa: N815 - the contract's name
    direction = serializers.ChoiceField(choices=selectors.DIRECTIONS, default="both")
    depth = serializers.IntegerField(min_value=0, max_value=graph.MAX_DEPTH, default=graph.DEFAULT_DEPTH)
    as_of = serializers.DateTimeField(required=False, help_text="read the graph as it was at this time (RFC 3339)")
    granularity = serializers.ChoiceField(
        choices=selectors.GRANULARITIES,
        default="dataset",
        help_text="dataset: Marquez-style dataset and job nodes (versions and runs listed in them); "
        "version: dataset versions and runs as nodes of their own",
    )


def as_of(text: str):
    """`as_of` as the API reads it, for the lineage page, whose export links pass it on (ValidationError if bad)."""
    return GraphQuery().fields["as_of"].run_validation(text)


class ExportQuery(StrictSerializer):
    nodeId = serializers.CharField(max_length=nodes.MAX_NODE_ID, help_text=NODE_ID_HELP)  # noqa: N815
    format = serializers.ChoiceField(choices=list(FORMATS))
    direction = serializers.ChoiceField(choices=selectors.DIRECTIONS, default="both")
    depth = serializers.IntegerField(min_value=0, max_value=graph.MAX_DEPTH, default=graph.DEFAULT_DEPTH)
    as_of = serializers.DateTimeField(required=False)


class TrailQuery(StrictSerializer):
    nodeId = serializers.CharField(  # noqa: N815
        max_length=nodes.MAX_NODE_ID, help_text="model:{namespace}/{name}:{number} or release:{target}:{number}"
    )
    format = serializers.ChoiceField(choices=["json", "html"], default="json")
    as_of = serializers.DateTimeField(required=False)


class LinkInput(StrictSerializer):
    nodeId = serializers.CharField(max_length=300, help_text="model:{namespace}/{name}:{number}")  # noqa: N815
    runId = UUIDString(help_text="the OpenLineage run UUID that produced the version")  # noqa: N815
    linked = serializers.BooleanField(default=True, help_text="false retracts an earlier link (a correction)")
    reason = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")


class LinkOutput(serializers.Serializer):
    nodeId = serializers.CharField()  # noqa: N815
    runId = UUIDString()  # noqa: N815
    linked = serializers.BooleanField()
    recorded = serializers.BooleanField(help_text="false when the version was already in that state")
    recordedAt = serializers.DateTimeField(allow_null=True)  # noqa: N815


class IngestOutput(serializers.Serializer):
    event = serializers.IntegerField(help_text="the stored event's id")
    kind = serializers.CharField()
    eventType = serializers.CharField(allow_blank=True)  # noqa: N815
    job = serializers.CharField(allow_null=True)
    run = serializers.CharField(allow_null=True)
    inputs = serializers.ListField(child=serializers.CharField())
    outputs = serializers.ListField(child=serializers.CharField())


class VersionRefOutput(serializers.Serializer):
    version = serializers.CharField()
    digest = serializers.CharField(allow_null=True)


class RunRefOutput(serializers.Serializer):
    runId = UUIDString()  # noqa: N815
    state = serializers.CharField(allow_null=True)


class NodeOutput(serializers.Serializer):
    id = serializers.CharField()
    type = serializers.ChoiceField(choices=["dataset", "datasetVersion", "job", "run", "model", "release"])
    depth = serializers.IntegerField(help_text="hops from the start node")
    namespace = serializers.CharField(required=False)
    name = serializers.CharField(required=False)
    version = serializers.CharField(
        required=False, help_text="datasetVersion: its version; release: the released model version's node id"
    )
    target = serializers.CharField(required=False, help_text="release: its deployment target")
    digest = serializers.CharField(required=False, allow_null=True)
    dataset = serializers.CharField(required=False, help_text="datasetVersion: its dataset node id")
    runId = UUIDString(required=False)  # noqa: N815
    state = serializers.CharField(
        required=False,
        allow_null=True,
        help_text="run: its state by OpenLineage's run cycle (docs/lineage.md, 'Run state'); release: release state",
    )
    job = serializers.CharField(required=False, help_text="run: its job node id")
    number = serializers.IntegerField(required=False, help_text="model: version number; release: release number")
    status = serializers.CharField(required=False, help_text="model: version status")
    versions = VersionRefOutput(many=True, required=False, help_text="dataset: the versions reached")
    runs = RunRefOutput(many=True, required=False, help_text="job: the runs reached")


class EdgeOutput(serializers.Serializer):
    source = serializers.CharField()
    target = serializers.CharField()
    kind = serializers.ChoiceField(choices=["input", "output", "deployed"])


class GraphOutput(serializers.Serializer):
    nodeId = serializers.CharField()  # noqa: N815
    direction = serializers.CharField()
    depth = serializers.IntegerField()
    nodes = NodeOutput(many=True)
    edges = EdgeOutput(many=True)
    truncated = serializers.BooleanField(
        help_text="true when nodes lie beyond the depth limit or the walk hit its row budget"
    )


@extend_schema_field({"type": "object", "additionalProperties": True})
class TrailField(serializers.JSONField):
    pass


class TrailOutput(serializers.Serializer):
    trail = TrailField(help_text="see docs/lineage.md (format model-governance-registry/lineage-trail/1)")
    sha256 = serializers.CharField(help_text="sha256 of the trail's canonical JSON (sorted keys, compact, UTF-8)")
