"""Email addresses are confirmed by a link mailed to them; those set before count as confirmed."""
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models
from django.utils import timezone


def existing_addresses_confirm(apps, schema_editor):
    # Reset links went to these addresses before confirmation existed: left unconfirmed, every account would lose
    # its password reset on upgrading, and learn it only once locked out. Marked confirmed, they go on as before;
    # any address set from now on waits for its link.
    user_model = apps.get_model(settings.AUTH_USER_MODEL)
    state_model = apps.get_model("accounts", "EmailAddressState")
    now = timezone.now()
    users = user_model.objects.exclude(email="").values_list("pk", "email").order_by("pk")
    # A thousand at a time, from the last one done: bulk_create makes a list of all it is given, whole tables too.
    last = None
    while batch := list((users if last is None else users.filter(pk__gt=last))[:BATCH_SIZE]):
        state_model.objects.bulk_create(
            state_model(user_id=pk, set_at=now, confirmed_email=email, confirmed_at=now) for pk, email in batch)
        last = batch[-1][0]


BATCH_SIZE = 1000


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0004_api_token_read_only_database_default'),
        ('auth', '0012_alter_user_first_name_max_length'),
    ]

    operations = [
        migrations.CreateModel(
            name='EmailAddressState',
            fields=[
                ('user', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, primary_key=True, related_name='email_state', serialize=False, to=settings.AUTH_USER_MODEL)),
                ('set_at', models.DateTimeField()),
                ('confirmed_email', models.EmailField(blank=True, default='', max_length=254)),
                ('confirmed_at', models.DateTimeField(blank=True, null=True)),
            ],
            options={
                'verbose_name': 'email address state',
            },
        ),
        migrations.RunPython(existing_addresses_confirm, migrations.RunPython.noop),
    ]
