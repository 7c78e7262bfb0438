"""Tokens made before keys were stored as digests keep working; their plain keys are then deleted."""
import hashlib

from django.db import migrations
from django.db.migrations.recorder import MigrationRecorder
from django.utils import timezone

# The table of rest_framework.authtoken, which earlier versions used: read and dropped by name, since that app is
# no longer installed.
PLAIN_TABLE = "authtoken_token"
# Each user had at most one token then.
CONVERTED_NAME = "API token"


def tokens_from_plain_keys(apps, schema_editor):
    connection = schema_editor.connection
    if PLAIN_TABLE not in connection.introspection.table_names():
        return
    alias = connection.alias
    ApiToken = apps.get_model("accounts", "ApiToken")
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(map(connection.ops.quote_name, ('key', 'user_id')))} "
                       f"FROM {connection.ops.quote_name(PLAIN_TABLE)}")
        rows = cursor.fetchall()
    # Those tokens never expired: their age counts from now, or a deployment would cut off every program holding
    # one older than API_TOKEN_MAX_AGE_DAYS the moment it upgraded.
    converted = timezone.now()
    ApiToken.objects.using(alias).bulk_create(
        ApiToken(user_id=user_id, name=CONVERTED_NAME, digest=hashlib.sha256(key.encode()).hexdigest(),
                 prefix=key[:8], created_at=converted)
        for key, user_id in rows
    )
    schema_editor.execute(f"DROP TABLE {connection.ops.quote_name(PLAIN_TABLE)}")
    # Its permissions would go on being offered in the admin's group and user forms.
    apps.get_model("contenttypes", "ContentType").objects.using(alias).filter(app_label="authtoken").delete()
    # Forgotten as applied, so a version that still uses the table creates it again (empty) when it migrates.
    MigrationRecorder(connection).migration_qs.filter(app="authtoken").delete()


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial"), ("contenttypes", "0002_remove_content_type_name")]

    # Going back leaves the digests: the plain keys are gone, and their owners make new tokens.
    operations = [migrations.RunPython(tokens_from_plain_keys, migrations.RunPython.noop)]
