from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.response import Response

from accounts import scopes
from audit import selectors
from audit.api.serializers import ExportQuery, HeadOutput
from core.api import BaseAPIView
from core.errors import Forbidden

EXPORT_PERMISSION = "audit.view_auditevent"


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


class AuditEventExportView(BaseAPIView):
    required_scopes = {"GET": scopes.AUDIT_READ}
    query_serializers = {"GET": ExportQuery}
    content_negotiation_class = _IgnoreAccept

    @extend_schema(
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
            "Streams in constant memory. The response headers X-Audit-Last-Seq and X-Audit-Last-Hash name the "
            "last event included, X-Audit-First-Seq and X-Audit-First-Prev-Hash the first one and the hash it "
            "links to (all 0 and the genesis hash when the export is empty), X-Audit-Count how many events the "
            "filters selected (the NDJSON lines). Verify an NDJSON export offline with audit/chain.py: "
            "--expect-start FIRST_SEQ:FIRST_PREV_HASH detects events missing from the start, --expect-head "
            "LAST_HASH events missing from the end, --expect-count COUNT events removed or added anywhere; "
            "--allow-gaps is needed when filtered by subject or actor, and then only --expect-count shows that "
            "no event was removed between the first and the last."
        ),
    )
    def get(self, request):
        _require_auditor(request)
        params = dict(self.query())
        fmt = params.pop("format")
        export = selectors.export(fmt, **params)
        media_type = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson"
        response = StreamingHttpResponse(export.chunks, content_type=media_type)
        response["Content-Disposition"] = f'attachment; filename="audit-events.{fmt}"'
        response["X-Audit-First-Seq"] = str(export.first_seq)
        response["X-Audit-First-Prev-Hash"] = export.first_prev_hash
        response["X-Audit-Last-Seq"] = str(export.last_seq)
        response["X-Audit-Last-Hash"] = export.last_hash
        response["X-Audit-Count"] = str(export.count)
        return response


class AuditHeadView(BaseAPIView):
    required_scopes = {"GET": scopes.AUDIT_READ}

    @extend_schema(responses=HeadOutput, summary="The chain's current head (last sequence number and hash)")
    def get(self, request):
        _require_auditor(request)
        head = selectors.head()
        return Response({"seq": head.seq, "hash": head.hash})
