"""The several-digits mark's description: digits written close together are marked too, and read as one."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('classifier', '0011_idempotency_key'),
    ]

    operations = [
        migrations.AlterField(
            model_name='prediction',
            name='several_digits',
            field=models.BooleanField(db_default=False, default=False, help_text='The picture seemed to hold more than one digit, read as one: the one with the most ink, or, written close together, the digits as one.'),
        ),
    ]
