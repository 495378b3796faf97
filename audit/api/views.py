from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import scopes
from audit import chain, selectors
from core.api import StrictSerializer
from core.errors import Forbidden

EXPORT_PERMISSION = "audit.view_auditevent"


class ExportQuery(StrictSerializer):
    format = serializers.ChoiceField(choices=["ndjson", "csv"], default="ndjson")
    since = serializers.DateTimeField(required=False, help_text="events at or after this time (RFC 3339)")
    until = serializers.DateTimeField(required=False, help_text="events before this time (RFC 3339)")
    subject_type = serializers.CharField(required=False, max_length=100)
    subject_id = serializers.CharField(required=False, max_length=200)
    actor = serializers.CharField(required=False, max_length=150, help_text="actor username")
    after_seq = serializers.IntegerField(required=False, min_value=0)


class HeadOutput(serializers.Serializer):
    seq = serializers.IntegerField()
    hash = serializers.CharField()


def _require_auditor(request):
    if not request.user.has_perm(EXPORT_PERMISSION):
        raise Forbidden("Exporting the audit log needs the auditor role (permission audit.view_auditevent).")


class _IgnoreAccept(BaseContentNegotiation):
    """The export's media type comes from `format`, so an Accept of text/csv or NDJSON must not be a 406.

    Errors are still rendered as JSON by the first (JSON) renderer.
    """

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class AuditEventExportView(APIView):
    required_scopes = {"GET": scopes.AUDIT_READ}
    content_negotiation_class = _IgnoreAccept

    @extend_schema(
        parameters=[ExportQuery],
        responses={
            (200, "application/x-ndjson"): OpenApiResponse(
                OpenApiTypes.STR, description="format=ndjson: one event per line"
            ),
            (200, "text/csv"): OpenApiResponse(
                OpenApiTypes.STR, description="format=csv: a header row, then one event per row"
            ),
        },
        summary="Stream audit events in chain order (NDJSON or CSV)",
        description=(
            "Streams in constant memory. The response headers X-Audit-Last-Seq and X-Audit-Last-Hash "
            "name the last event included; verify an NDJSON export offline with audit/chain.py "
            "(add --partial when filtered by since/until or after_seq, --allow-gaps when filtered by subject or "
            "actor, and --expect-head with X-Audit-Last-Hash to detect events missing from the end)."
        ),
    )
    def get(self, request):
        _require_auditor(request)
        query = ExportQuery(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        params = dict(query.validated_data)
        fmt = params.pop("format")
        events = selectors.events(**params)
        last = events.order_by("-seq").values("seq", "hash").first() or {"seq": 0, "hash": chain.GENESIS}
        events = events.filter(seq__lte=last["seq"])  # a consistent snapshot, whatever is appended meanwhile

        if fmt == "csv":
            response = StreamingHttpResponse(selectors.csv_chunks(events), content_type="text/csv; charset=utf-8")
            filename = "audit-events.csv"
        else:
            response = StreamingHttpResponse(selectors.ndjson_chunks(events), content_type="application/x-ndjson")
            filename = "audit-events.ndjson"
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        response["X-Audit-Last-Seq"] = str(last["seq"])
        response["X-Audit-Last-Hash"] = last["hash"]
        return response


class AuditHeadView(APIView):
    required_scopes = {"GET": scopes.AUDIT_READ}

    @extend_schema(responses=HeadOutput, summary="The chain's current head (last sequence number and hash)")
    def get(self, request):
        _require_auditor(request)
        head = selectors.head()
        return Response({"seq": head.seq, "hash": head.hash})
