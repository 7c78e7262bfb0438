"""Validation accuracy on checkpoints and runs: what models are compared by, null for those from before it."""
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('training', '0006_times_as_python_writes_them'),
    ]

    operations = [
        migrations.AddField(
            model_name='checkpoint',
            name='validation_accuracy',
            field=models.FloatField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='trainingrun',
            name='validation_accuracy',
            field=models.FloatField(blank=True, null=True),
        ),
    ]
