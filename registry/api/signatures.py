"""Model-signing signatures of a version: attach a Sigstore bundle (verified on arrival), read the latest.

See docs/signing.md. Reading needs view permission on the model; attaching needs register permission
and the versions:write scope.
"""

from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.response import Response

from accounts import scopes
from core.api import OutputModelSerializer, location
from core.errors import NotFound
from registry import services
from registry.api.views import ModelScopedView
from registry.models import ModelPerm, VersionSignature

BUNDLE_SCHEMA = {
    "type": "object",
    "description": (
        "A Sigstore bundle as written by OpenSSF model-signing with a private key "
        "(`model_signing sign key --private_key key.pem --signature model.sig <dir>`): the content of "
        "model.sig, sent as the request body. mediaType application/vnd.dev.sigstore.bundle.v0.3+json, "
        "verificationMaterial.publicKey, dsseEnvelope with an in-toto statement listing each file's sha256."
    ),
    "properties": {
        "mediaType": {"type": "string"},
        "verificationMaterial": {"type": "object", "additionalProperties": True},
        "dsseEnvelope": {"type": "object", "additionalProperties": True},
    },
    "required": ["mediaType", "verificationMaterial", "dsseEnvelope"],
    "additionalProperties": True,
}


class ProblemsOutput(serializers.Serializer):
    mismatched = serializers.ListField(
        child=serializers.CharField(), help_text="Files whose signed sha256 differs from the manifest's."
    )
    missing = serializers.ListField(
        child=serializers.CharField(), help_text="Files the signature covers that the version does not have."
    )
    extra = serializers.ListField(
        child=serializers.CharField(), help_text="Files of the version that the signature does not cover."
    )


@extend_schema_field(ProblemsOutput)
class ProblemsField(serializers.JSONField):
    pass


class SignatureOutput(OutputModelSerializer):
    verified = serializers.BooleanField(
        help_text="True only if the signature verifies with a trusted key and covers exactly the manifest's files."
    )
    reason = serializers.CharField(help_text="Why, in words: the key, or what failed and for which files.")
    key_id = serializers.CharField(
        help_text="sha256 hex of the trusted public key (PEM) that verified it; empty if none did."
    )
    files_checked = serializers.IntegerField(help_text="Files of the version's manifest compared with the signature.")
    problems = ProblemsField()
    created_by = serializers.CharField(source="created_by.username", allow_null=True, default=None)

    class Meta:
        model = VersionSignature
        fields = [
            "verified",
            "reason",
            "key_id",
            "files_checked",
            "problems",
            "bundle_sha256",
            "verified_at",
            "created_by",
            "created_at",
        ]


class SignatureView(ModelScopedView):
    """The latest model-signing signature of a version and the registry's verdict on it."""

    required_scopes = {"GET": scopes.READ, "POST": scopes.VERSIONS_WRITE}

    @extend_schema(
        summary="Get the latest signature verification result of a version",
        responses={
            200: SignatureOutput,
            404: OpenApiResponse(description="No such model or version, or no signature attached yet"),
        },
    )
    def get(self, request, namespace, name, number):
        version = self.version()
        latest = VersionSignature.objects.select_related("created_by").filter(version=version).order_by("-pk").first()
        if latest is None:
            raise NotFound(
                f"{version} has no signature. POST a model-signing bundle (model.sig) to this URL.",
                code="no_signature",
            )
        return Response(SignatureOutput(latest).data)

    @extend_schema(
        summary="Attach a model-signing signature (Sigstore bundle) to a version; it is verified and recorded",
        description=(
            "The body is the bundle itself. The registry verifies the DSSE signature with its trusted "
            "elliptic-curve public keys and compares the signed per-file sha256 digests with the version's "
            "manifest. A well-formed bundle is always recorded (201), with `verified` false and a reason if the "
            "signature or the files do not match; a malformed or unsupported bundle (keyless/certificate, "
            "sharded or non-sha256 serialization) is a 400 and nothing is stored. Key-based signatures only: "
            "keyless Sigstore (Fulcio/Rekor) is not verified. See docs/signing.md."
        ),
        request={"application/json": BUNDLE_SCHEMA},
        responses={
            201: SignatureOutput,
            200: OpenApiResponse(SignatureOutput, description="the latest record's bundle again, judged the same"),
            400: OpenApiResponse(description="Malformed or unsupported bundle; nothing stored"),
        },
        examples=[
            OpenApiExample(
                "model.sig",
                request_only=True,
                value={
                    "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
                    "verificationMaterial": {"publicKey": {"hint": "<sha256 hex of the PEM public key>"}},
                    "dsseEnvelope": {
                        "payload": "<base64 in-toto statement>",
                        "payloadType": "application/vnd.in-toto+json",
                        "signatures": [{"sig": "<base64 ECDSA signature>", "keyid": ""}],
                    },
                },
            )
        ],
    )
    def post(self, request, namespace, name, number):
        version = self.version(ModelPerm.REGISTER)
        signature, created = services.signature_attach(actor=request.user, version=version, bundle=request.data)
        if not created:
            return Response(SignatureOutput(signature).data)
        where = {"Location": location("api-version-signature", namespace=namespace, name=name, number=number)}
        return Response(SignatureOutput(signature).data, status=status.HTTP_201_CREATED, headers=where)
