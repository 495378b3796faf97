import re

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core import url_credentials
from core.api import OutputModelSerializer, StrictSerializer, UUIDString
from core.numbers import finite_number
from registry.choices import VersionStatus
from registry.cli import MAX_TAG_VALUE, MAX_URL, http_url_problem, tag_key_problem
from registry.models import Alias, ModelVersion, RegisteredModel

SHA1_OR_LONGER = r"^[0-9a-f]{7,64}$"
# What the messages below promise: a Hub repository is org/repo (huggingface_hub's repo id characters) pinned to a
# commit; an S3 location is a bucket and a key prefix that is more than slashes.
HF_URI = re.compile(r"hf://([A-Za-z0-9_.-]+/)?[A-Za-z0-9_.-]+@[0-9a-f]{40}")  # legacy repos have no org: hf://gpt2@…
S3_URI = re.compile(r"s3://[^/\s]+/.*[^/\s].*")


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


def _http_url(value: str) -> None:
    problem = http_url_problem(value)  # registry-cli's rule, so it refuses before sending what is refused here
    if problem:
        raise serializers.ValidationError(f"The CI run URL {problem}.")


def _no_credential(value: str) -> None:
    """A version's source and artifact URI are kept in the immutable version, its audit events and exports, and shown
    to every reader of the model: no token in them (GitLab's CI_REPOSITORY_URL holds the job's, a presigned S3 URL its
    signature)."""
    problem = url_credentials.problem(value)
    if problem:
        raise serializers.ValidationError(problem)


class Tags(serializers.DictField):
    """{key: value}; keys and values bounded by registry-cli's limits, which it checks before sending."""

    def __init__(self, **kwargs):
        super().__init__(child=serializers.CharField(max_length=MAX_TAG_VALUE, allow_blank=True), **kwargs)

    def to_internal_value(self, data):
        tags = super().to_internal_value(data)
        for key in tags:
            problem = tag_key_problem(key)
            if problem:
                raise serializers.ValidationError(f"{problem}.")
        return tags


class SourceInput(StrictSerializer):
    repository = serializers.CharField(max_length=500, required=False, validators=[_no_credential])
    commit = serializers.RegexField(SHA1_OR_LONGER, required=False, help_text="commit SHA, lowercase hex")
    branch = serializers.CharField(max_length=255, required=False)
    ci_run_url = serializers.CharField(
        max_length=MAX_URL,
        required=False,
        validators=[_http_url, _no_credential],
        help_text="an absolute http(s) URL naming a host (any host name: http://jenkins:8080/job/train/42/)",
    )


class VersionRegisterInput(StrictSerializer):
    artifact_uri = serializers.CharField(
        max_length=1000,
        required=False,
        allow_blank=True,
        default="",
        validators=[_no_credential],
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
    tags = Tags(required=False, default=dict)

    def validate_artifact_uri(self, value):
        """The shape of each scheme; a registry:// URI's model and digest are checked at registration."""
        if value and not value.startswith(("registry://", "s3://", "hf://")):
            raise serializers.ValidationError("Use registry://, s3://bucket/prefix or hf://org/repo@<commit>.")
        if value.startswith("hf://") and not HF_URI.fullmatch(value):
            raise serializers.ValidationError(
                "hf:// URIs name a Hub repository and pin a commit: hf://org/repo@<40-hex commit>."
            )
        if value.startswith("s3://") and not S3_URI.fullmatch(value):
            raise serializers.ValidationError("s3:// URIs need a bucket and a key prefix: s3://bucket/prefix.")
        return value


class VersionUpdateInput(StrictSerializer):
    tags = Tags(required=False)
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
        child=serializers.CharField(),
        required=False,
        help_text='key (has the tag), key=value (as registry-cli --tag writes it) or key:value; a key holding ":" '
        'or "=" as a JSON string, "k8s:ns"=prod (a:b=c, which reads two ways, is a 400); repeat for several',
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
