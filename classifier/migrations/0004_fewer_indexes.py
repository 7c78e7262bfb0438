"""Indexes that every upload paid for and no query needed: each was covered by a composite or unique one."""
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('classifier', '0003_prediction_input_pixels'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterField(
            model_name='prediction',
            name='status',
            field=models.CharField(choices=[('pending', 'Pending'), ('running', 'Running'), ('done', 'Done'), ('failed', 'Failed')], default='pending', max_length=8),
        ),
        migrations.AlterField(
            model_name='upload',
            name='owner',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='uploads', to=settings.AUTH_USER_MODEL),
        ),
        migrations.AlterField(
            model_name='upload',
            name='sample_set',
            field=models.CharField(blank=True, max_length=16),
        ),
        migrations.AlterField(
            model_name='upload',
            name='sha256',
            field=models.CharField(max_length=64),
        ),
    ]
