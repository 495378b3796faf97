"""Model card API: the latest (or a given) revision, Hugging Face export, new revisions, history."""

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from accounts import scopes
from core.api import OutputModelSerializer, StrictSerializer, location
from core.errors import InvalidInput, NotFound
from core.openapi import NOT_MODIFIED, etag_header, if_match_header, if_none_match_header
from core.parsers import BoundedJSONParser
from registry import cards, services
from registry.api.parsers import MarkdownParser, MarkdownRenderer
from registry.api.views import ModelScopedView
from registry.models import ModelCardRevision, ModelPerm

MARKDOWN = "text/markdown"
MAX_REVISION = 2**31 - 1


@extend_schema_field(
    {
        "type": "object",
        "description": "Canonical model card content, validated against the card JSON Schema "
        "(registry/card_schema/v1.json; see docs/model-cards.md).",
        "additionalProperties": True,
    }
)
class CardContentField(serializers.JSONField):
    pass


class CompletenessOutput(serializers.Serializer):
    complete = serializers.BooleanField()
    missing = serializers.ListField(child=serializers.CharField(), help_text="Sections absent from the card.")
    empty = serializers.ListField(
        child=serializers.CharField(), help_text="Sections present but blank, comments or placeholders only."
    )


class CardRevisionOutput(OutputModelSerializer):
    content = CardContentField()
    completeness = serializers.SerializerMethodField()
    created_by = serializers.CharField(source="created_by.username", allow_null=True, default=None)

    class Meta:
        model = ModelCardRevision
        fields = ["revision", "schema_version", "content", "completeness", "created_by", "created_at"]

    @extend_schema_field(CompletenessOutput)
    def get_completeness(self, obj) -> dict:
        return cards.completeness(obj.content)


class CardRevisionSummaryOutput(CardRevisionOutput):
    class Meta(CardRevisionOutput.Meta):
        fields = ["revision", "schema_version", "completeness", "created_by", "created_at"]


class CardRevisionInput(StrictSerializer):
    content = CardContentField(help_text="The whole card: a new revision replaces the previous one.")

    def validate_content(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("Must be a JSON object.")
        return value


class CardQuery(serializers.Serializer):
    revision = serializers.IntegerField(
        required=False, min_value=1, max_value=MAX_REVISION, help_text="A revision number; the latest when absent."
    )
    format = serializers.ChoiceField(
        choices=["json", "huggingface"],
        required=False,
        default="json",
        help_text="`huggingface`: the card as a Hugging Face README.md (text/markdown).",
    )


class CardView(ModelScopedView):
    """A version's model card: append-only revisions of the canonical JSON form (docs/model-cards.md).

    Reading needs view permission on the model; adding a revision needs register permission and the
    versions:write scope. Hugging Face README.md files are accepted and served as text/markdown.
    """

    @property
    def etag_validates_body(self) -> bool:
        """A revision never changes; but its README and its JSON share one ETag (If-Match takes either), so only the
        JSON answers 304: a client holding the JSON is not told its copy is the README."""
        markdown = isinstance(getattr(self.request, "accepted_renderer", None), MarkdownRenderer)
        return not markdown and self.request.query_params.get("format") != "huggingface"

    required_scopes = {"GET": scopes.READ, "POST": scopes.VERSIONS_WRITE}
    parser_classes = [BoundedJSONParser, MarkdownParser]
    renderer_classes = [JSONRenderer, MarkdownRenderer]
    query_serializers = {"GET": CardQuery}

    def finalize_response(self, request, response, *args, **kwargs):
        # Markdown is for the card text only: errors and JSON bodies go out as JSON.
        if isinstance(response, Response) and isinstance(getattr(request, "accepted_renderer", None), MarkdownRenderer):
            request.accepted_renderer, request.accepted_media_type = JSONRenderer(), "application/json"
        return super().finalize_response(request, response, *args, **kwargs)

    @extend_schema(
        summary="Get a version's model card (latest revision, or ?revision=K; ?format=huggingface for README.md)",
        parameters=[etag_header("the revision"), if_none_match_header("the revision")],
        responses={
            (200, "application/json"): CardRevisionOutput,
            (304, "application/json"): NOT_MODIFIED,
            (200, MARKDOWN): OpenApiResponse(OpenApiTypes.STR, description="Hugging Face README.md"),
            (404, "application/json"): OpenApiResponse(description="No such model or version, or no card yet"),
            (409, "application/json"): OpenApiResponse(
                description="format=huggingface: this revision, stored before today's limits, cannot be written "
                "as a README.md (read it as JSON)"
            ),
        },
    )
    def get(self, request, namespace, name, number):
        version = self.version()
        query = self.query()
        revisions = ModelCardRevision.objects.select_related("created_by").filter(version=version)
        wanted = query.get("revision")
        if wanted is not None:
            revision = revisions.filter(revision=wanted).first()
            if revision is None:
                raise NotFound(f"{version} has no model card revision {wanted}.", code="no_card")
        else:
            revision = revisions.order_by("-revision").first()
            if revision is None:
                raise NotFound(
                    f"{version} has no model card yet. POST one to this URL (JSON or a Hugging Face README.md).",
                    code="no_card",
                )
        if query["format"] == "huggingface" or isinstance(request.accepted_renderer, MarkdownRenderer):
            response = HttpResponse(cards.to_huggingface(revision.content), content_type=f"{MARKDOWN}; charset=utf-8")
            response["Content-Disposition"] = 'inline; filename="README.md"'
            response["X-Card-Revision"] = str(revision.revision)
            response["ETag"] = revision.etag
            response["Vary"] = "Accept"
            return response
        return Response(CardRevisionOutput(revision).data, headers={"ETag": revision.etag, "Vary": "Accept"})

    @extend_schema(
        summary="Add a model card revision (JSON {content} or a Hugging Face README.md as text/markdown)",
        request={"application/json": CardRevisionInput, MARKDOWN: OpenApiTypes.STR},
        responses={
            (201, "application/json"): CardRevisionOutput,
            (200, "application/json"): OpenApiResponse(
                CardRevisionOutput, description="The same content as the latest revision: that revision, unchanged"
            ),
            (412, "application/json"): OpenApiResponse(
                description="precondition_failed: If-Match names another revision than the latest (or there is none)"
            ),
        },
        parameters=[if_match_header("the latest revision"), etag_header("the revision")],
        description=(
            "A card is sent whole. To revise the card you read without undoing a revision made since, send the "
            "ETag of your GET as If-Match: the revision is made only if the one you read is still the latest."
        ),
    )
    def post(self, request, namespace, name, number):
        version = self.version(ModelPerm.REGISTER)
        if request.content_type.split(";")[0].strip().lower() == MARKDOWN:
            text = request.data
            if not isinstance(text, str) or not text.strip():
                raise InvalidInput("The README.md body is empty.", code="invalid_card", detail={"body": ["Empty."]})
            content = cards.from_huggingface(text)
        else:
            data = CardRevisionInput(data=request.data)
            data.is_valid(raise_exception=True)
            content = data.validated_data["content"]
        if_match = request.headers.get("If-Match")
        revision, created = services.card_revision_add(
            actor=request.user, version=version, content=content, if_match=if_match
        )
        headers = {"ETag": revision.etag}
        if created:
            kwargs = {"namespace": namespace, "name": name, "number": number}
            headers["Location"] = location("api-card", query=f"?revision={revision.revision}", **kwargs)
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return Response(CardRevisionOutput(revision).data, status=code, headers=headers)


class CardRevisionListView(ModelScopedView):
    """Every revision of a version's model card, with who added it, when, and its completeness."""

    required_scopes = {"GET": scopes.READ}

    @extend_schema(
        summary="List a version's model card revisions (oldest first)",
        responses=CardRevisionSummaryOutput(many=True),
    )
    def get(self, request, namespace, name, number):
        version = self.version()
        revisions = ModelCardRevision.objects.select_related("created_by").filter(version=version).order_by("revision")
        return Response(CardRevisionSummaryOutput(revisions, many=True).data)
