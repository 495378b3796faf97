"""The built-in roles as data: each is a group with model-wide permissions.

Object-level grants (a model's owners, a target's approvers) come on top, per object, through
accounts.services.permission_grant. `manage.py ensure_roles` applies this table idempotently.
"""

from django.contrib.auth.models import Group, Permission
from django.db import transaction

AUDITORS = "auditors"
REVIEWERS = "reviewers"
MODEL_OWNERS = "model-owners"
CI_BOTS = "ci-bots"

ROLE_PERMISSIONS: dict[str, list[str]] = {
    AUDITORS: ["audit.view_auditevent", "registry.view_registeredmodel", "governance.view_deploymenttarget"],
    REVIEWERS: ["registry.view_registeredmodel", "governance.view_deploymenttarget"],
    MODEL_OWNERS: ["registry.add_registeredmodel", "governance.view_deploymenttarget"],
    CI_BOTS: ["registry.add_registeredmodel", "governance.view_deploymenttarget"],
}


def ensure_roles() -> dict[str, Group]:
    groups = {}
    with transaction.atomic():
        for name, perms in ROLE_PERMISSIONS.items():
            group, _ = Group.objects.get_or_create(name=name)
            wanted = []
            for perm in perms:
                app_label, codename = perm.split(".")
                wanted.append(Permission.objects.get(content_type__app_label=app_label, codename=codename))
            missing = [p for p in wanted if not group.permissions.filter(pk=p.pk).exists()]
            if missing:
                group.permissions.add(*missing)
            groups[name] = group
    return groups
