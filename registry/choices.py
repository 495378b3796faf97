from django.db import models


class VersionStatus(models.TextChoices):
    REGISTERED = "registered"
    DEPRECATED = "deprecated"
    ARCHIVED = "archived"


# Allowed status moves; archived is final.
STATUS_TRANSITIONS = {
    VersionStatus.REGISTERED: {VersionStatus.DEPRECATED, VersionStatus.ARCHIVED},
    VersionStatus.DEPRECATED: {VersionStatus.REGISTERED, VersionStatus.ARCHIVED},
    VersionStatus.ARCHIVED: set(),
}
