from django.http import HttpResponse, StreamingHttpResponse
from django.template.loader import render_to_string
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.authentication import SessionAuthentication
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.response import Response

from accounts import scopes
from core.api import BaseAPIView
from core.errors import Forbidden, InvalidInput
from lineage import exports, nodes, openlineage, selectors, services, trail
from lineage import graph as graphs
from lineage.api import serializers as s
from lineage.api.parsers import OpenLineageParser


class _IgnoreAccept(BaseContentNegotiation):
    """Exports choose their media type by `format`; an Accept header must not turn them into a 406."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class LineageIngestView(BaseAPIView):
    required_scopes = {"POST": scopes.LINEAGE_WRITE}
    parser_classes = [OpenLineageParser]

    @extend_schema(
        request={"application/json": OpenApiTypes.OBJECT},
        responses={
            201: OpenApiResponse(s.IngestOutput, description="the event was stored"),
            200: OpenApiResponse(
                s.IngestOutput,
                description="a RunEvent identical to one stored (same run, eventType, eventTime and body: a "
                "client's retry) records nothing; the answer names the stored event",
            ),
        },
        summary="Send an OpenLineage event (RunEvent, DatasetEvent or JobEvent, spec 2-0-2)",
        description=(
            "The endpoint any OpenLineage producer posts to (the openlineage-python HTTP transport's default "
            "endpoint is api/v1/lineage). A malformed event is a 400 naming the bad field; nothing of it is "
            "stored. Datasets in namespace `registry` name model versions ({namespace}/{name}:{number}). "
            "Sending a RunEvent again (a retry) records nothing and answers 200 with the stored event's id. "
            "The body may be gzip-compressed (Content-Encoding: gzip). See docs/lineage.md."
        ),
    )
    def post(self, request):
        parsed = openlineage.parse(request.data)
        result = services.event_ingest(actor=request.user, event=parsed)
        body = {
            "event": result.event.pk,
            "kind": result.event.kind,
            "eventType": result.event.event_type,
            "job": result.job,
            "run": result.run,
            "inputs": result.inputs,
            "outputs": result.outputs,
        }
        return Response(body, status=status.HTTP_201_CREATED if result.recorded else status.HTTP_200_OK)


class LineageGraphView(BaseAPIView):
    query_serializers = {"GET": s.GraphQuery}

    @extend_schema(
        responses=s.GraphOutput,
        summary="Upstream and/or downstream of a node, to a depth, optionally as of a past time",
        description=(
            "One recursive query per traversal. Datasets, jobs and runs are visible to every user with the read "
            "scope; model versions only to users who may view the model (a hidden one is neither returned nor "
            "walked through; starting at one is a 404)."
        ),
    )
    def get(self, request):
        q = self.query()
        query = selectors.GraphQuery(
            node_id=q["nodeId"],
            direction=q["direction"],
            depth=q["depth"],
            as_of=q.get("as_of"),
            granularity=q["granularity"],
        )
        return Response(selectors.graph(user=request.user, query=query))


class LineageExportView(BaseAPIView):
    content_negotiation_class = _IgnoreAccept
    query_serializers = {"GET": s.ExportQuery}

    @extend_schema(
        responses={
            (200, "application/x-ndjson"): OpenApiResponse(
                OpenApiTypes.STR, description="format=openlineage: NDJSON, one OpenLineage event per line"
            ),
            (200, "application/json"): OpenApiResponse(
                OpenApiTypes.OBJECT, description="format=prov-json: a W3C PROV-JSON document"
            ),
            (200, "text/csv"): OpenApiResponse(
                OpenApiTypes.STR, description="format=csv: one row per node, then one per edge"
            ),
        },
        parameters=[
            OpenApiParameter(
                "X-Lineage-Truncated",
                str,
                OpenApiParameter.HEADER,
                response=[200],
                enum=["true", "false"],
                description="true when nodes lie beyond the depth limit or the walk hit its row budget",
            ),
            OpenApiParameter(
                "X-Lineage-Nodes", int, OpenApiParameter.HEADER, response=[200], description="the nodes exported"
            ),
        ],
        summary="Stream a subgraph as OpenLineage NDJSON, PROV-JSON or CSV",
        description="The media type follows `format` (an Accept header does not change it); the file is sent as an "
        "attachment (Content-Disposition: lineage.ndjson, lineage.prov.json or lineage.csv).",
    )
    def get(self, request):
        q = self.query()
        as_of = q.get("as_of")
        start = nodes.resolve(q["nodeId"], request.user, as_of)
        result = graphs.walk(user=request.user, start=start, direction=q["direction"], depth=q["depth"], as_of=as_of)
        result = result.without_isolated_groups()  # as the export holds it: X-Lineage-Nodes counts what it sends
        selectors.describe_extension_nodes(result, request.user, as_of)
        content_type, suffix = exports.FORMATS[q["format"]]
        response = StreamingHttpResponse(exports.export(result, q["format"], as_of=as_of), content_type=content_type)
        response["Content-Disposition"] = f'attachment; filename="lineage.{suffix}"'
        response["X-Lineage-Truncated"] = "true" if result.truncated else "false"
        response["X-Lineage-Nodes"] = str(len(result.nodes))
        return response


def _refuse_cross_site(request) -> None:
    """Issuing a trail writes an audit event in the reader's name: a signed-in browser sent here by another site's
    link (the session cookie goes along with a top-level navigation) would write them at that site's will. A
    browser says where a request comes from (Sec-Fetch-Site); a token's client, a typed URL or a bookmark is not
    refused."""
    by_session = isinstance(request.successful_authenticator, SessionAuthentication)
    if by_session and request.headers.get("Sec-Fetch-Site") in ("cross-site", "same-site"):
        raise Forbidden(
            "A lineage trail is issued (and audited in your name) only when asked for from the registry's own "
            "pages or directly: this request came from a link on another site. Open the version's page here and "
            "follow its Lineage trail link."
        )


class LineageTrailView(BaseAPIView):
    required_scopes = {"GET": scopes.AUDIT_READ}
    content_negotiation_class = _IgnoreAccept
    query_serializers = {"GET": s.TrailQuery}

    @extend_schema(
        responses={
            (200, "application/json"): OpenApiResponse(s.TrailOutput, description="format=json (the default)"),
            (200, "text/html"): OpenApiResponse(OpenApiTypes.STR, description="format=html: a printable page"),
        },
        parameters=[
            OpenApiParameter(
                "X-Trail-SHA256",
                str,
                OpenApiParameter.HEADER,
                response=[200],
                description="sha256 of the trail's canonical JSON (the `sha256` of format=json)",
            ),
            OpenApiParameter(
                "X-Trail-Audit-Seq",
                int,
                OpenApiParameter.HEADER,
                response=[200],
                description="seq of the lineage.trail_issued audit event that records this sha256 (not sent in "
                "answer to HEAD, which issues nothing)",
            ),
        ],
        summary="The lineage trail of a model version or a release, with its sha256 and the audit events it covers",
        description=(
            "datasets (with digests) -> runs (with code commits) -> version (digest, signature results) -> card "
            "revisions -> sections other apps add (governance: policy results, approvals, releases). Needs view "
            "permission on the model (and the audit:read scope for tokens). Each GET issues the trail: a "
            "lineage.trail_issued audit event records its sha256. HEAD answers the same headers but "
            "X-Trail-Audit-Seq, and issues and records nothing."
        ),
    )
    def get(self, request):
        q = self.query()
        issuing = request.method != "HEAD"  # Django answers HEAD with get(); a HEAD must change nothing
        if issuing:
            _refuse_cross_site(request)
        sealed = trail.seal(trail.for_node(node_id=q["nodeId"], user=request.user, as_of=q.get("as_of")))
        if q["format"] == "html":
            html = render_to_string("lineage/trail.html", {"trail": sealed["trail"], "sha256": sealed["sha256"]})
            response = HttpResponse(html, content_type="text/html; charset=utf-8")
        else:
            response = Response(sealed)
        response["X-Trail-SHA256"] = sealed["sha256"]
        if issuing:
            seq = services.trail_issued(
                actor=request.user,
                node_id=q["nodeId"],
                sha256=sealed["sha256"],
                as_of=q.get("as_of"),
                chain_head=sealed["trail"]["audit"]["chain_head"],
            )
            response["X-Trail-Audit-Seq"] = str(seq)  # the lineage.trail_issued event naming this sha256
        return response


class LineageLinkView(BaseAPIView):
    required_scopes = {"POST": scopes.LINEAGE_WRITE}

    @extend_schema(
        request=s.LinkInput,
        responses={201: s.LinkOutput, 200: OpenApiResponse(s.LinkOutput, description="already in that state")},
        summary="Link a model version to the run that produced it after registration (or retract a link)",
    )
    def post(self, request):
        data = s.LinkInput(data=request.data)
        data.is_valid(raise_exception=True)
        d = data.validated_data
        if not d["nodeId"].startswith("model:"):
            raise InvalidInput(
                "nodeId must be a model version: model:{namespace}/{name}:{number}.",
                detail={"nodeId": ["Not a model version id."]},
            )
        version = nodes.resolve_model_version(d["nodeId"][len("model:") :], request.user)
        fact, recorded = services.version_link(
            actor=request.user, version=version, run_uuid=d["runId"], linked=d["linked"], reason=d["reason"]
        )
        body = {
            "nodeId": nodes.model_id(version.model.namespace, version.model.name, version.number),
            "runId": str(d["runId"]),
            "linked": d["linked"],
            "recorded": recorded,
            "recordedAt": fact.recorded_at if fact else None,
        }
        return Response(s.LinkOutput(body).data, status=status.HTTP_201_CREATED if recorded else status.HTTP_200_OK)
