"""Presigned uploads: large files go straight to S3, then the registry verifies them.

POST …/uploads {"sha256", "size"} hands out a presigned PUT URL to a staging key;
POST …/uploads/{upload_id}/complete hashes the staged object and moves it into the blob store.
Only with ARTIFACT_STORAGE=s3; the local store answers 409.
"""

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from accounts import scopes
from core.api import StrictSerializer
from registry import services
from registry.api import serializers as s
from registry.api.views import ModelScopedView
from registry.models import ModelPerm
from registry.storage import MAX_SINGLE_PUT


class UploadCreateInput(StrictSerializer):
    sha256 = serializers.RegexField(r"^[0-9a-f]{64}$", help_text="the file's sha256, 64 lowercase hex characters")
    # Bounded only as a 64-bit size: a file over S3's one-PUT limit is the service's `too_large`, which says why.
    size = serializers.IntegerField(min_value=0, max_value=2**63 - 1, help_text="the file's size in bytes")


class UploadOutput(serializers.Serializer):
    upload_id = serializers.CharField(help_text="pass it to …/uploads/{upload_id}/complete")
    url = serializers.CharField(help_text="presigned URL: send the file's bytes there, in one request")
    method = serializers.CharField(help_text="always PUT")
    headers = serializers.DictField(
        child=serializers.CharField(), help_text="send exactly these headers with the PUT (they are signed)"
    )
    expires_at = serializers.DateTimeField(help_text="the URL stops working after this time")
    already_stored = serializers.BooleanField(
        help_text="the registry already holds these bytes: the PUT may be skipped, complete answers 200"
    )


UPLOAD_ID_PARAM = OpenApiParameter("upload_id", str, OpenApiParameter.PATH, description="as returned by POST …/uploads")


class UploadCreateView(ModelScopedView):
    required_scopes = {"POST": scopes.VERSIONS_WRITE}

    @extend_schema(
        request=UploadCreateInput,
        responses={
            201: UploadOutput,
            409: OpenApiResponse(description="the registry does not store artifacts on S3 (ARTIFACT_STORAGE=local)"),
        },
        summary="Start a presigned upload of one large file (S3 storage only)",
        description=(
            "Returns a presigned URL. PUT the file's bytes to it with the given headers, then call "
            "POST …/uploads/{upload_id}/complete; only then are the bytes verified and stored. At most "
            f"{MAX_SINGLE_PUT} bytes (S3's limit for one PUT), and at most the registry's MAX_ARTIFACT_BYTES "
            "(400 too_large)."
        ),
    )
    def post(self, request, namespace, name):
        self.model(ModelPerm.REGISTER)
        data = UploadCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        upload = services.upload_start(user=request.user, **data.validated_data)
        return Response(UploadOutput(upload).data, status=status.HTTP_201_CREATED)


class UploadCompleteView(ModelScopedView):
    required_scopes = {"POST": scopes.VERSIONS_WRITE}

    @extend_schema(
        request=None,
        parameters=[UPLOAD_ID_PARAM],
        responses={
            201: s.BlobOutput,
            200: OpenApiResponse(s.BlobOutput, description="already stored"),
            400: OpenApiResponse(description="digest_mismatch or size_mismatch: the staged object was deleted"),
            404: OpenApiResponse(description="upload_not_found: nothing was PUT to the presigned URL"),
            409: OpenApiResponse(description="presign_unsupported (local storage) or upload_changed"),
        },
        summary="Finish a presigned upload: verify the staged bytes and store them by sha256",
        description=(
            "Streams the staged object back from S3, hashes it and, if sha256 and size match the ones given "
            "to POST …/uploads, stores it under its sha256; the staged object is deleted either way. 200 when "
            "the registry already held these bytes (no PUT is needed then)."
        ),
    )
    def post(self, request, namespace, name, upload_id):
        model = self.model(ModelPerm.REGISTER)
        blob = services.upload_complete(user=request.user, model=model, upload_id=upload_id)
        body = {"sha256": blob.sha256, "size": blob.size, "created": blob.created}
        return Response(body, status=status.HTTP_201_CREATED if blob.created else status.HTTP_200_OK)
