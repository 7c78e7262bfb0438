"""When the mail server refused for good the link confirming an account's address, for the Account page to say so."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0007_mail_claims'),
    ]

    operations = [
        migrations.AddField(
            model_name='emailaddressstate',
            name='link_refused_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
