"""A sample's true digit is a digit: the admin refused nothing, and counted a label of 42 as a wrong answer."""

import django.core.validators
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('classifier', '0012_prediction_several_digits_close_together'),
    ]

    operations = [
        migrations.AlterField(
            model_name='upload',
            name='label',
            field=models.PositiveSmallIntegerField(blank=True, null=True, validators=[django.core.validators.MaxValueValidator(9)]),
        ),
    ]
