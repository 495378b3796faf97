"""Input and output of the audit API; ExportQuery also checks the options of `manage.py audit_export`."""

from rest_framework import serializers

from audit import selectors
from core.api import StrictSerializer


class ExportQuery(StrictSerializer):
    format = serializers.ChoiceField(choices=selectors.EXPORT_FORMATS, default="ndjson")
    since = serializers.DateTimeField(required=False, help_text="events at or after this time (RFC 3339)")
    until = serializers.DateTimeField(required=False, help_text="events before this time (RFC 3339)")
    subject_type = serializers.CharField(required=False, max_length=100)
    subject_id = serializers.CharField(required=False, max_length=200)
    actor = serializers.CharField(required=False, max_length=150, help_text="actor username")
    # sequence numbers are bigint: a larger one is an error, not an empty export
    after_seq = serializers.IntegerField(required=False, min_value=0, max_value=2**63 - 1)


class HeadOutput(serializers.Serializer):
    seq = serializers.IntegerField()
    hash = serializers.CharField()
