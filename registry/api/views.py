import re

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.response import Response

from accounts import access, scopes
from accounts.api.base import GovernedAPIView
from core.api import location
from core.errors import Forbidden, InvalidInput, LengthRequired, NotFound
from core.openapi import NOT_MODIFIED, etag_header, if_match_header, if_none_match_header
from core.pagination import cursor, paginated
from registry import selectors, services
from registry.api import serializers as s
from registry.models import ModelPerm, ModelVersion, RegisteredModel
from registry.storage import CHUNK

MAX_VERSION_NUMBER = 2**31 - 1
SHA256_PATH = re.compile(r"^sha256:([0-9a-f]{64})$")


class ModelScopedView(GovernedAPIView):
    """Views under /models/{namespace}/{name}/: the model decides access for everything below it."""

    def model(self, codename: str | None = None) -> RegisteredModel:
        found = selectors.model_at(self.kwargs["namespace"], self.kwargs["name"], user=self.request.user)
        return self.governed_object(found, codename, RegisteredModel._meta.verbose_name)

    def below(self, found, codename: str | None, missing: str):
        """An object under the path's model, read with its model (selectors.version_at, alias_at); the
        model's permissions decide (404 hidden, 403 lacking `codename`). When there is none, the model
        alone is looked up, so a missing or hidden model answers exactly as `model()` does and a visible
        one names what is missing."""
        if found is None:
            raise NotFound(f"{self.model(codename)} {missing}.")
        access.require(self.request.user, found.model, codename)
        return found

    def version(self, codename: str | None = None) -> ModelVersion:
        number = int(self.kwargs["number"])
        if number > MAX_VERSION_NUMBER:
            raise NotFound(f"{self.model(codename)} has no version {number}.")
        found = selectors.version_at(self.kwargs["namespace"], self.kwargs["name"], number, user=self.request.user)
        return self.below(found, codename, f"has no version {number}")


class ModelListView(GovernedAPIView):
    required_scopes = {"GET": scopes.READ, "POST": scopes.MODELS_WRITE}
    pagination_class = cursor("id")

    @extend_schema(
        responses=paginated(s.ModelOutput),
        operation_id="models_list",
        summary="List the models I may see",
    )
    def get(self, request):
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(
            selectors.models_visible(user=request.user).select_related("owner_group", "created_by"), request, self
        )
        return paginator.get_paginated_response(s.ModelOutput(page, many=True).data)

    @extend_schema(request=s.ModelCreateInput, responses={201: s.ModelOutput}, summary="Create a model")
    def post(self, request):
        if not request.user.has_perm("registry.add_registeredmodel"):
            raise Forbidden(
                "Creating models needs the registry.add_registeredmodel permission (the model-owners or ci-bots role)."
            )
        data = s.ModelCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        model = services.model_create(actor=request.user, **data.validated_data)
        where = {"Location": location("api-model", namespace=model.namespace, name=model.name)}
        return Response(s.ModelOutput(model).data, status=status.HTTP_201_CREATED, headers=where)


class ModelDetailView(ModelScopedView):
    required_scopes = {"GET": scopes.READ, "PATCH": scopes.MODELS_WRITE}

    def model(self, codename: str | None = None) -> RegisteredModel:  # with what ModelOutput shows
        models = RegisteredModel.objects.select_related("owner_group", "created_by")
        return self.governed(models, codename, namespace=self.kwargs["namespace"], name=self.kwargs["name"])

    @extend_schema(responses=s.ModelOutput, parameters=[etag_header("the model")], summary="Get a model")
    def get(self, request, namespace, name):
        return self.shown(self.model())

    @extend_schema(
        request=s.ModelUpdateInput,
        responses={
            200: s.ModelOutput,
            412: OpenApiResponse(description="precondition_failed: If-Match names another state of the model"),
        },
        parameters=[if_match_header("the model"), etag_header("the model")],
        summary="Change a model's description",
    )
    def patch(self, request, namespace, name):
        model = self.model(ModelPerm.MANAGE)
        data = s.ModelUpdateInput(data=request.data)
        data.is_valid(raise_exception=True)
        if_match = request.headers.get("If-Match")
        return self.shown(
            services.model_update(actor=request.user, model=model, if_match=if_match, **data.validated_data)
        )

    @staticmethod
    def shown(model) -> Response:
        return Response(s.ModelOutput(model).data, headers={"ETag": model.etag})


class VersionListView(ModelScopedView):
    required_scopes = {"GET": scopes.READ, "POST": scopes.VERSIONS_WRITE}
    pagination_class = cursor("-number")
    query_serializers = {"GET": s.VersionListQuery}

    @extend_schema(
        responses=paginated(s.VersionOutput),
        operation_id="models_versions_list",
        summary="List and filter a model's versions (cursor-paginated, newest first)",
    )
    def get(self, request, namespace, name):
        model = self.model()
        filters = {k: v for k, v in self.query().items() if k not in ("cursor", "page_size")}
        filters["tags"], filters["metrics"] = filters.pop("tag", None), filters.pop("metric", None)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(selectors.versions(model=model, **filters), request, self)
        return paginator.get_paginated_response(s.VersionOutput(page, many=True).data)

    @extend_schema(
        request=s.VersionRegisterInput,
        responses={201: s.VersionOutput, 200: OpenApiResponse(s.VersionOutput, description="same digest: existing")},
        summary="Register a version (idempotent by digest)",
    )
    def post(self, request, namespace, name):
        model = self.model(ModelPerm.REGISTER)
        data = s.VersionRegisterInput(data=request.data)
        data.is_valid(raise_exception=True)
        fields = dict(data.validated_data)
        tags = fields.pop("tags")
        version, created = services.version_register(
            actor=request.user, model=model, content=services.VersionContent(**fields), tags=tags
        )
        if not created:
            return Response(s.VersionOutput(version).data)
        where = {"Location": location("api-version", namespace=namespace, name=name, number=version.number)}
        return Response(s.VersionOutput(version).data, status=status.HTTP_201_CREATED, headers=where)


class VersionDetailView(ModelScopedView):
    etag_validates_body = True  # tags and status; the rest of a version never changes
    required_scopes = {"GET": scopes.READ, "PATCH": scopes.VERSIONS_WRITE}

    @extend_schema(
        responses={200: s.VersionOutput, 304: NOT_MODIFIED},
        parameters=[etag_header("the version"), if_none_match_header("the version")],
        summary="Get a version",
    )
    def get(self, request, namespace, name, number):
        return self.shown(self.version())

    @extend_schema(
        request=s.VersionUpdateInput,
        responses={
            200: s.VersionOutput,
            409: OpenApiResponse(
                description="invalid_transition (archived is final), or version_in_use: an archive of a version an "
                "alias points at or a release serves or is on its way to"
            ),
            412: OpenApiResponse(description="precondition_failed: If-Match names another state of the version"),
        },
        parameters=[if_match_header("the version"), etag_header("the version")],
        summary="Change a version's tags (register permission) or status (manage permission)",
        description=(
            "`tags` replaces the whole map. To add or remove one tag without undoing a concurrent change, send "
            "the ETag of the version you read as If-Match: the change is made only if the version is still so "
            "(else 412, nothing written)."
        ),
    )
    def patch(self, request, namespace, name, number):
        data = s.VersionUpdateInput(data=request.data)
        data.is_valid(raise_exception=True)
        version = self.version(ModelPerm.MANAGE if "status" in data.validated_data else ModelPerm.REGISTER)
        if_match = request.headers.get("If-Match")
        return self.shown(
            services.version_update(actor=request.user, version=version, if_match=if_match, **data.validated_data)
        )

    @staticmethod
    def shown(version) -> Response:
        return Response(s.VersionOutput(version).data, headers={"ETag": version.etag})


class ArtifactUploadView(ModelScopedView):
    required_scopes = {"PUT": scopes.VERSIONS_WRITE}

    @extend_schema(
        request={"application/octet-stream": OpenApiTypes.BINARY},
        responses={
            201: s.BlobOutput,
            200: OpenApiResponse(s.BlobOutput, description="already stored"),
            408: OpenApiResponse(
                description="request_timeout: the body stopped arriving for REQUEST_IO_TIMEOUT_SECONDS; nothing stored"
            ),
            411: OpenApiResponse(description="length_required: the body has no Content-Length (a chunked upload)"),
        },
        summary="Upload one file's bytes, addressed by its sha256 (streamed and verified while stored)",
    )
    def put(self, request, namespace, name, digest):
        model = self.model(ModelPerm.REGISTER)
        match = SHA256_PATH.match(digest)
        if match is None:
            raise InvalidInput(f"'{digest}' is not sha256:<64 lowercase hex>.", detail={"digest": ["Bad digest."]})
        raw = request._request  # the Django request: read the body as a stream, never whole

        def chunks():
            while chunk := raw.read(CHUNK):
                yield chunk

        size = self.declared_size(raw.META.get("CONTENT_LENGTH"))
        blob = services.blob_upload(actor=request.user, model=model, chunks=chunks(), sha256=match[1], size=size)
        body = {"sha256": blob.sha256, "size": blob.size, "created": blob.created}
        return Response(body, status=status.HTTP_201_CREATED if blob.created else status.HTTP_200_OK)

    @staticmethod
    def declared_size(length: str | None) -> int:
        """The body's Content-Length. Without one (Transfer-Encoding: chunked, as `curl -T -` sends from a pipe)
        the request's body reads as empty under WSGI (gunicorn and the development server alike): a 411, not an
        empty file that does not match the digest."""
        if not length:
            raise LengthRequired(
                "The upload has no Content-Length header (a chunked body, e.g. `curl -T -` from a pipe), and an "
                "artifact's bytes are taken only with their length declared. Send the file with Content-Length "
                "(`curl -T model.bin` sets it).",
                detail={"Content-Length": ["Required."]},
            )
        if not length.isascii() or not length.isdigit():
            problem = f"Content-Length '{length[:40]}' is not a number of bytes."
            raise InvalidInput(problem, detail={"Content-Length": [problem]})
        return int(length)


class AliasListView(ModelScopedView):
    @extend_schema(responses=s.AliasOutput(many=True), summary="List a model's aliases")
    def get(self, request, namespace, name):
        return Response(s.AliasOutput(selectors.aliases(model=self.model()), many=True).data)


class AliasDetailView(ModelScopedView):
    etag_validates_body = True  # every move changes it
    required_scopes = {"GET": scopes.READ, "PUT": scopes.MODELS_WRITE, "DELETE": scopes.MODELS_WRITE}

    @extend_schema(
        responses={200: s.AliasOutput, 304: NOT_MODIFIED},
        parameters=[etag_header("the alias"), if_none_match_header("the alias")],
        summary="Resolve an alias to a version",
    )
    def get(self, request, namespace, name, alias):
        found = self.below(
            selectors.alias_at(namespace, name, alias, user=request.user), None, f"has no alias '{alias}'"
        )
        return self.shown(found)

    @extend_schema(
        request=s.AliasSetInput,
        responses={
            200: s.AliasOutput,
            201: s.AliasOutput,
            412: OpenApiResponse(description="precondition_failed: If-Match names another state of the alias"),
        },
        parameters=[if_match_header("the alias"), etag_header("the alias")],
        summary="Point an alias at a version (protected aliases: managers only)",
        description=(
            "To move an alias only if nobody moved it since you read it (two CI jobs promoting candidates), send the "
            "ETag you read as If-Match: else 412, nothing written. A move to where the alias already points is a 200 "
            "whatever If-Match says."
        ),
    )
    def put(self, request, namespace, name, alias):
        model = self.model(ModelPerm.REGISTER)
        data = s.AliasSetInput(data=request.data)
        data.is_valid(raise_exception=True)
        found, created = services.alias_set(
            actor=request.user,
            model=model,
            name=alias,
            number=data.validated_data["version"],
            protected=data.validated_data["protected"],
            if_match=request.headers.get("If-Match"),
        )
        return self.shown(found, status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(
        responses={
            204: None,
            412: OpenApiResponse(description="precondition_failed: If-Match names another state of the alias"),
        },
        parameters=[if_match_header("the alias")],
        summary="Remove an alias (protected aliases: managers only)",
    )
    def delete(self, request, namespace, name, alias):
        model = self.model(ModelPerm.REGISTER)
        services.alias_delete(actor=request.user, model=model, name=alias, if_match=request.headers.get("If-Match"))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @staticmethod
    def shown(alias, code: int = status.HTTP_200_OK) -> Response:
        return Response(s.AliasOutput(alias).data, status=code, headers={"ETag": alias.etag})
