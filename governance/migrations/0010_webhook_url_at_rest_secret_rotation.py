"""Webhook receiver URLs encrypted at rest (they may carry a credential), and the previous secret kept during a
rotation's grace period. Reversible: going back decrypts the URLs into the plain column and drops the previous
secrets (only the current one signs)."""

from django.db import migrations, models

# The box the endpoints' secrets are in (HKDF of SECRET_KEY; SECRET_KEY_FALLBACKS still open): it must be the
# very one the running code opens, so it is not copied here.
from governance.webhooks import decrypt_url, encrypt_url


def encrypt_urls(apps, schema_editor):
    endpoints = apps.get_model("governance", "WebhookEndpoint").objects
    for pk, url in endpoints.values_list("pk", "url"):
        endpoints.filter(pk=pk).update(url_encrypted=encrypt_url(url))


def decrypt_urls(apps, schema_editor):
    endpoints = apps.get_model("governance", "WebhookEndpoint").objects
    for pk, token in endpoints.values_list("pk", "url_encrypted"):
        endpoints.filter(pk=pk).update(url=decrypt_url(token))


class Migration(migrations.Migration):
    dependencies = [
        ("governance", "0009_host_revision_fixed_at_request"),
    ]

    operations = [
        migrations.AddField(
            model_name="webhookendpoint",
            name="url_encrypted",
            field=models.TextField(default=""),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="webhookendpoint",
            name="previous_secret_encrypted",
            field=models.TextField(blank=True, default=""),
        ),
        migrations.AddField(
            model_name="webhookendpoint",
            name="previous_secret_expires_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunPython(encrypt_urls, decrypt_urls),
        # A default for going back: the plain column is re-added to a table with rows, then filled by decrypt_urls.
        migrations.AlterField(
            model_name="webhookendpoint",
            name="url",
            field=models.URLField(default="", max_length=2000),
        ),
        migrations.RemoveField(model_name="webhookendpoint", name="url"),
    ]
