"""Read-only API tokens; every existing token keeps full access."""
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0002_tokens_from_plain_keys'),
    ]

    operations = [
        migrations.AddField(
            model_name='apitoken',
            name='read_only',
            field=models.BooleanField(default=False, editable=False, help_text='Reads only (GET, HEAD, OPTIONS); every other request is refused.'),
        ),
    ]
