from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.response import Response

from accounts import scopes
from accounts.api.base import GovernedAPIView
from core.api import location
from core.errors import Forbidden, InvalidInput, NotFound
from core.openapi import NOT_MODIFIED, etag_header, if_match_header, if_none_match_header
from core.pagination import cursor, paginated
from governance import deployment, presenters, selectors, services
from governance.api import serializers as s
from governance.hosts import HOSTS
from governance.models import DeploymentTarget, PromotionRequest
from registry.models import ModelPerm, ModelVersion, RegisteredModel


def releases_context(user, releases) -> dict:
    """Serializer context naming which of these releases' models the caller may view (HidesModel)."""
    model_ids = [r.version.model_id for r in releases if r is not None]
    return {"visible_model_ids": selectors.visible_model_ids(user=user, model_ids=model_ids)}


def targets_output(user, targets: list[DeploymentTarget]) -> list:
    overrides = selectors.policy_overrides_by_target(user=user, targets=targets)  # one query for the list
    views = [target_view(t, overrides[t.pk]) for t in targets]
    return s.TargetOutput(views, many=True, context=releases_context(user, [v["live_release"] for v in views])).data


def target_view(target: DeploymentTarget, overrides: list) -> dict:
    return {
        "name": target.name,
        "kind": target.kind,
        "stage": target.stage,
        "config": target.config,
        "credentials_ref": target.credentials_ref,
        "rollout": target.rollout,
        "description": target.description,
        "capabilities": sorted(HOSTS[target.kind].capabilities),
        "policy": selectors.current_policy(target=target),
        "policy_overrides": overrides,
        "live_release": selectors.live_release(target=target),
        "created_at": target.created_at,
    }


class TargetListView(GovernedAPIView):
    required_scopes = {"GET": scopes.READ, "POST": scopes.DEPLOYMENTS_WRITE}

    @extend_schema(responses=s.TargetOutput(many=True), summary="List deployment targets I may see")
    def get(self, request):
        targets = selectors.targets_visible(user=request.user)
        return Response(targets_output(request.user, list(targets)))

    @extend_schema(
        request=s.TargetCreateInput,
        responses={201: s.TargetOutput},
        summary="Create a deployment target with its policy",
    )
    def post(self, request):
        if not request.user.has_perm("governance.add_deploymenttarget"):
            raise Forbidden(
                "Creating deployment targets needs the governance.add_deploymenttarget permission "
                "(platform administrators)."
            )
        data = s.TargetCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        target = services.target_create(actor=request.user, **data.validated_data)
        where = {"Location": location("api-target", name=target.name)}
        return Response(targets_output(request.user, [target])[0], status=status.HTTP_201_CREATED, headers=where)


class TargetDetailView(GovernedAPIView):
    @extend_schema(
        responses=s.TargetOutput, summary="Get a deployment target, its policy, its model overrides and live release"
    )
    def get(self, request, name):
        return Response(targets_output(request.user, [self.governed(DeploymentTarget.objects, name=name)])[0])


class TargetPolicyView(GovernedAPIView):
    etag_validates_body = True  # a policy version never changes
    required_scopes = {"GET": scopes.READ, "PUT": scopes.DEPLOYMENTS_WRITE}

    def _scope(self, name, namespace=None, model_name=None):
        target = self.governed(
            DeploymentTarget.objects, "manage_deploymenttarget" if self.request.method == "PUT" else None, name=name
        )
        model = None
        if namespace is not None:
            model = self.governed(RegisteredModel.objects, namespace=namespace, name=model_name)
        return target, model

    @extend_schema(
        responses={200: s.PolicyOutput, 304: NOT_MODIFIED},
        parameters=[etag_header("the policy in force"), if_none_match_header("the policy in force")],
        summary="The current policy (of the target, or its override for a model)",
    )
    def get(self, request, name, namespace=None, model_name=None):
        target, model = self._scope(name, namespace, model_name)
        return self.shown(selectors.current_policy(target=target, model=model))

    @extend_schema(
        request=s.PolicyRulesSchema,
        responses={
            200: s.PolicyOutput,
            412: OpenApiResponse(description="precondition_failed: another policy is in force than If-Match names"),
        },
        parameters=[if_match_header("the policy"), etag_header("the new policy")],
        summary="Set a new policy version (earlier approvals stop counting)",
        description=(
            "The rules are sent whole. To edit the policy you read without undoing a change made since, send "
            "the ETag of your GET as If-Match: the new version is made only if that policy is still in force. "
            "A rule not named in the schema is refused (400 naming it)."
        ),
    )
    def put(self, request, name, namespace=None, model_name=None):
        target, model = self._scope(name, namespace, model_name)
        if not isinstance(request.data, dict):
            raise InvalidInput("The policy must be a JSON object.")
        if_match = request.headers.get("If-Match")
        return self.shown(
            services.policy_set(actor=request.user, target=target, model=model, rules=request.data, if_match=if_match)
        )

    @staticmethod
    def shown(policy) -> Response:
        return Response(s.PolicyOutput(policy).data, headers={"ETag": policy.etag})


class PromotionBase(GovernedAPIView):
    def resolve(self, data: dict, codename: str | None = None) -> tuple[ModelVersion, DeploymentTarget]:
        namespace, name = data["model"].split("/", 1)
        model = self.governed(RegisteredModel.objects, codename, namespace=namespace, name=name)
        version = ModelVersion.objects.select_related("model").filter(model=model, number=data["version"]).first()
        if version is None:
            raise NotFound(f"{model} has no version {data['version']}.")
        target = self.governed(DeploymentTarget.objects, name=data["target"])
        return version, target

    def promotion(self, pk: int) -> PromotionRequest:
        request = selectors.promotions_visible(user=self.request.user).filter(pk=pk).first()
        if request is None:
            raise NotFound(f"No promotion request {pk}.")
        return request

    def detail(self, pk: int, code=status.HTTP_200_OK) -> Response:
        view = presenters.promotion_view(self.promotion(pk))
        return Response(s.PromotionOutput(view).data, status=code)


class PromotionDryRunView(PromotionBase):
    required_scopes = {"POST": scopes.PROMOTIONS_WRITE}

    @extend_schema(
        request=s.PromotionInput,
        responses=s.DryRunOutput,
        summary="Check a version against a target's policy without requesting anything",
    )
    def post(self, request):
        data = s.PromotionInput(data=request.data)
        data.is_valid(raise_exception=True)
        version, target = self.resolve(data.validated_data)
        evaluation = selectors.promotion_evaluate(version=version, target=target)
        return Response(
            s.DryRunOutput(
                {
                    "model": str(version.model),
                    "version": version.number,
                    "digest": version.digest,
                    "target": target.name,
                    "policy_version": evaluation.policy.version,
                    "approvals_required": evaluation.rules.approvals_required,
                    "checks": [c.__dict__ for c in evaluation.checks],
                    "passed": all(c.passed for c in evaluation.checks),
                }
            ).data
        )


class PromotionListView(PromotionBase):
    required_scopes = {"GET": scopes.READ, "POST": scopes.PROMOTIONS_WRITE}
    pagination_class = cursor("-id")
    query_serializers = {"GET": s.PromotionListQuery}

    @extend_schema(
        responses=paginated(s.PromotionListItem),
        operation_id="promotions_list",
        summary="List promotion requests (newest first); waiting_for_me=true gives my review queue",
    )
    def get(self, request):
        q = self.query()
        qs = (
            selectors.review_queue(user=request.user)
            if q["waiting_for_me"]
            else selectors.promotions_visible(user=request.user)
        )
        if q.get("state"):
            qs = qs.filter(state=q["state"])
        if q.get("target"):
            qs = qs.filter(target__name=q["target"])
        if q.get("model"):
            namespace, name = q["model"].split("/", 1)
            qs = qs.filter(version__model__namespace=namespace, version__model__name=name)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(qs.order_by("-id"), request, self)
        return paginator.get_paginated_response(s.PromotionListItem(page, many=True).data)

    @extend_schema(
        request=s.PromotionInput,
        responses={201: s.PromotionOutput},
        summary="Request promotion of a version to a target",
    )
    def post(self, request):
        data = s.PromotionInput(data=request.data)
        data.is_valid(raise_exception=True)
        version, target = self.resolve(data.validated_data, ModelPerm.PROMOTE)
        promotion = services.promotion_request(
            actor=request.user, version=version, target=target, reason=data.validated_data["reason"]
        )
        response = self.detail(promotion.pk, status.HTTP_201_CREATED)
        response["Location"] = location("api-promotion", pk=promotion.pk)
        return response


class PromotionDetailView(PromotionBase):
    @extend_schema(responses=s.PromotionOutput, summary="Get a promotion request with approvals and checks")
    def get(self, request, pk):
        return self.detail(pk)


class PromotionApproveView(PromotionBase):
    required_scopes = {"POST": scopes.APPROVALS_WRITE}

    @extend_schema(
        request=s.ApproveInput,
        responses=s.PromotionOutput,
        summary="Approve a promotion request",
        description="Name what you reviewed (digest, card_revision, policy_version) to have the approval refused "
        "with 409 changed_since_review if any of it changed meanwhile.",
    )
    def post(self, request, pk):
        self.promotion(pk)
        data = s.ApproveInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.promotion_approve(
            actor=request.user, request_id=pk, comment=data.validated_data["comment"], seen=data.seen()
        )
        return self.detail(pk)


class PromotionRejectView(PromotionBase):
    required_scopes = {"POST": scopes.APPROVALS_WRITE}

    @extend_schema(
        request=s.RejectInput, responses=s.PromotionOutput, summary="Reject a promotion request (comment required)"
    )
    def post(self, request, pk):
        self.promotion(pk)
        data = s.RejectInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.promotion_reject(
            actor=request.user, request_id=pk, comment=data.validated_data["comment"], seen=data.seen()
        )
        return self.detail(pk)


class PromotionCancelView(PromotionBase):
    required_scopes = {"POST": scopes.PROMOTIONS_WRITE}

    @extend_schema(request=s.CancelInput, responses=s.PromotionOutput, summary="Cancel a pending promotion request")
    def post(self, request, pk):
        self.promotion(pk)
        data = s.CancelInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.promotion_cancel(actor=request.user, request_id=pk, **data.validated_data)
        return self.detail(pk)


class TargetRollbackView(GovernedAPIView):
    required_scopes = {"POST": scopes.DEPLOYMENTS_WRITE}

    @extend_schema(
        request=s.RollbackInput,
        responses={202: s.ReleaseOutput},
        summary="Roll traffic back to the previous (or a named) release; the reconciler executes it",
        description="Send `from`, the release desired when you read the target, to have the rollback refused with "
        "409 changed_since_review if another release became desired since (as the web UI's rollback form does).",
    )
    def post(self, request, name):
        target = self.governed(DeploymentTarget.objects, "deploy_deploymenttarget", name=name)
        data = s.RollbackInput(data=request.data)
        data.is_valid(raise_exception=True)
        release = deployment.deployment_rollback(
            actor=request.user,
            target=target,
            reason=data.validated_data["reason"],
            to_number=data.validated_data["release"],
            from_number=data.validated_data["from"],
        )
        context = releases_context(request.user, [release])
        return Response(s.ReleaseOutput(release, context=context).data, status=status.HTTP_202_ACCEPTED)


class TargetReleaseListView(GovernedAPIView):
    pagination_class = cursor("-number")

    @extend_schema(
        responses=paginated(s.ReleaseOutput),
        operation_id="targets_releases_list",
        summary="A target's releases, newest first",
    )
    def get(self, request, name):
        target = self.governed(DeploymentTarget.objects, name=name)
        paginator = self.pagination_class()
        qs = target.releases.select_related("target", "version__model", "created_by")
        page = paginator.paginate_queryset(qs, request, self)
        context = releases_context(request.user, page)
        return paginator.get_paginated_response(s.ReleaseOutput(page, many=True, context=context).data)


class TargetServedAtView(GovernedAPIView):
    query_serializers = {"GET": s.ServedAtQuery}

    @extend_schema(responses=s.ServedAtOutput, summary="What served the target at a given time")
    def get(self, request, name):
        target = self.governed(DeploymentTarget.objects, name=name)
        at = self.query()["at"]
        period = deployment.served_at(target=target, at=at)
        release = period.release if period else None
        return Response(
            s.ServedAtOutput(
                {
                    "at": at,
                    "release": release,
                    "serving_since": period.started_at if period else None,
                    "serving_until": period.ended_at if period else None,
                },
                context=releases_context(request.user, [release]),
            ).data
        )
