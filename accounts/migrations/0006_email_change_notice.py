"""Email confirmation links owed are recorded, set_at may be unknown, and change notices are stored until sent."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models
from django.db.models import F
from django.db.models.functions import Coalesce, Now


def set_at_fill(apps, schema_editor):
    """Going back to a version that needs every address's age: one not known gets the moment it was confirmed, or
    (waiting still) now; its links made before that stop working, as for an address just set."""
    apps.get_model("accounts", "EmailAddressState").objects.filter(set_at__isnull=True).update(
        set_at=Coalesce(F("confirmed_at"), Now()))


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0005_email_address_state'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name='emailaddressstate',
            name='link_requested_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AlterField(
            model_name='emailaddressstate',
            name='set_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        # Undone before set_at may be null no more.
        migrations.RunPython(migrations.RunPython.noop, set_at_fill, elidable=True),
        migrations.CreateModel(
            name='EmailChangeNotice',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('username', models.CharField(max_length=150)),
                ('address', models.EmailField(max_length=254)),
                ('kind', models.CharField(choices=[('replaced', 'replaced'), ('removed', 'removed')], max_length=8)),
                ('by_staff', models.BooleanField(default=False)),
                ('created_at', models.DateTimeField()),
                ('queued_at', models.DateTimeField()),
                ('sent_at', models.DateTimeField(blank=True, null=True)),
                ('given_up_at', models.DateTimeField(blank=True, null=True)),
                ('user', models.ForeignKey(null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'indexes': [models.Index(condition=models.Q(('given_up_at__isnull', True), ('sent_at__isnull', True)), fields=['queued_at'], name='email_change_notice_unsent')],
            },
        ),
    ]
