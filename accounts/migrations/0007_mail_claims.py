"""An owed confirmation link and a change notice are claimed by the one sender that mails them."""

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
    ]
