"""An owed confirmation link and a change notice are claimed by the one sender that mails them; a link's last request
is recorded, and the links owed are indexed for the sweep."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0006_email_change_notice'),
    ]

    operations = [
        migrations.AddField(
            model_name='emailaddressstate',
            name='link_claimed_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='emailchangenotice',
            name='claimed_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='emailaddressstate',
            name='link_last_requested_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddIndex(
            model_name='emailaddressstate',
            index=models.Index(condition=models.Q(('link_requested_at__isnull', False)), fields=['link_requested_at'], name='email_address_state_link_owed'),
        ),
    ]
