import re

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.api import OutputModelSerializer, StrictSerializer, UUIDString
from core.numbers import finite_number
from registry.choices import VersionStatus
from registry.models import Alias, ModelVersion, RegisteredModel

SHA1_OR_LONGER = r"^[0-9a-f]{7,64}$"


class ModelCreateInput(StrictSerializer):
    namespace = serializers.CharField(max_length=64)
    name = serializers.CharField(max_length=64)
    description = serializers.CharField(required=False, allow_blank=True, default="", max_length=10000)
    owner_group = serializers.CharField(required=False, allow_null=True, default=None, max_length=150)


class ModelUpdateInput(StrictSerializer):
    description = serializers.CharField(allow_blank=True, max_length=10000)


class ModelOutput(OutputModelSerializer):
    owner_group = serializers.CharField(source="owner_group.name", allow_null=True, default=None)
    created_by = serializers.CharField(source="created_by.username", allow_null=True, default=None)

    class Meta:
        model = RegisteredModel
        fields = ["namespace", "name", "description", "owner_group", "created_by", "created_at", "latest_number"]


class FileEntry(StrictSerializer):
    # Spaces at either end are part of a file's name (and of the digest the CLI computes): never trimmed.
    path = serializers.CharField(max_length=1024, trim_whitespace=False)
    size = serializers.IntegerField(min_value=0, max_value=2**63 - 1)  # what a file system or object store can hold
    sha256 = serializers.RegexField(r"^[0-9a-f]{64}$", help_text="64 lowercase hex characters")


class ManifestInput(StrictSerializer):
    files = FileEntry(many=True, allow_empty=False)


@extend_schema_field(
    {
        "oneOf": [
            {"type": "number"},
            {
                "type": "object",
                "required": ["value"],
                "additionalProperties": False,
                "properties": {"value": {"type": "number"}, "dataset": {"type": "string"}, "split": {"type": "string"}},
            },
        ]
    }
)
class MetricValue(serializers.Field):
    """A number, or {"value": number, "dataset"?: str, "split"?: str}."""

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = set(data) - {"value", "dataset", "split"}
            if unknown or "value" not in data:
                raise serializers.ValidationError('Use a number or {"value": number, "dataset"?, "split"?}.')
            for key in ("dataset", "split"):
                if key in data and not isinstance(data[key], str):
                    raise serializers.ValidationError(f"{key} must be a string.")
            return {**data, "value": self._number(data["value"])}
        return self._number(data)

    @staticmethod
    def _number(value):
        if not finite_number(value):
            raise serializers.ValidationError(
                "A metric value must be a finite number (a double: at most about 1.8e308)."
            )
        return value

    def to_representation(self, value):
        return value


class SourceInput(StrictSerializer):
    repository = serializers.CharField(max_length=500, required=False)
    commit = serializers.RegexField(SHA1_OR_LONGER, required=False, help_text="commit SHA, lowercase hex")
    branch = serializers.CharField(max_length=255, required=False)
    ci_run_url = serializers.URLField(max_length=1000, required=False)


class VersionRegisterInput(StrictSerializer):
    artifact_uri = serializers.CharField(
        max_length=1000,
        required=False,
        allow_blank=True,
        default="",
        help_text="registry:// (default: files uploaded to this registry), s3://bucket/prefix or hf://org/repo@commit",
    )
    manifest = ManifestInput()
    framework = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    task = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    params = serializers.DictField(required=False, default=dict)
    metrics = serializers.DictField(child=MetricValue(), required=False, default=dict)
    source = SourceInput(required=False, default=dict)
    run_id = UUIDString(
        required=False, allow_null=True, default=None, help_text="the OpenLineage run UUID that produced this version"
    )
    tags = serializers.DictField(
        child=serializers.CharField(max_length=500, allow_blank=True), required=False, default=dict
    )

    def validate_artifact_uri(self, value):
        if value and not value.startswith(("registry://", "s3://", "hf://")):
            raise serializers.ValidationError("Use registry://, s3://bucket/prefix or hf://org/repo@<commit>.")
        if value.startswith("hf://"):
            _, _, rev = value.partition("@")
            if not rev or not re.match(r"^[0-9a-f]{40}$", rev):
                raise serializers.ValidationError("hf:// URIs must pin a commit: hf://org/repo@<40-hex commit>.")
        if value.startswith("s3://") and len(value) <= len("s3://") + 2:
            raise serializers.ValidationError("s3:// URIs need a bucket and a prefix: s3://bucket/prefix.")
        return value


class VersionUpdateInput(StrictSerializer):
    tags = serializers.DictField(child=serializers.CharField(max_length=500, allow_blank=True), required=False)
    status = serializers.ChoiceField(choices=VersionStatus.choices, required=False)
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


class VersionOutput(OutputModelSerializer):
    model = serializers.SerializerMethodField()
    created_by = serializers.CharField(source="created_by.username", allow_null=True, default=None)

    class Meta:
        model = ModelVersion
        fields = [
            "model",
            "number",
            "digest",
            "manifest",
            "artifact_uri",
            "framework",
            "task",
            "params",
            "metrics",
            "metric_sources",
            "source",
            "run_id",
            "tags",
            "status",
            "created_by",
            "created_at",
        ]

    def get_model(self, obj) -> str:
        return str(obj.model)


class VersionListQuery(StrictSerializer):
    status = serializers.ChoiceField(choices=VersionStatus.choices, required=False)
    tag = serializers.ListField(
        child=serializers.CharField(), required=False, help_text="key or key:value; repeat for several"
    )
    metric = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text="threshold like accuracy>=0.9 (>=, <=, >, <, =); repeat for several",
    )
    created_after = serializers.DateTimeField(required=False)
    created_before = serializers.DateTimeField(required=False)
    cursor = serializers.CharField(required=False)
    page_size = serializers.IntegerField(required=False, min_value=1, max_value=500)


class AliasSetInput(StrictSerializer):
    version = serializers.IntegerField(min_value=1)
    protected = serializers.BooleanField(required=False, allow_null=True, default=None)


class AliasOutput(OutputModelSerializer):
    alias = serializers.CharField(source="name")
    version = serializers.IntegerField(source="version.number")
    digest = serializers.CharField(source="version.digest")
    updated_by = serializers.CharField(source="updated_by.username", allow_null=True, default=None)

    class Meta:
        model = Alias
        fields = ["alias", "version", "digest", "protected", "updated_by", "updated_at"]


class BlobOutput(serializers.Serializer):
    sha256 = serializers.CharField()
    size = serializers.IntegerField()
    created = serializers.BooleanField()
