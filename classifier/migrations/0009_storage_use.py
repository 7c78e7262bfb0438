"""Each owner's upload bytes in one row, for the upload quota; counted here from the uploads already stored.

Uploads keep their stored PNG's size from now on; those stored before count at their size as uploaded. Uploads a
release before this one stores while it runs are counted by the daily recount (classifier.tasks).
"""
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models
from django.db.models import Sum


def storage_use_count(apps, schema_editor):
    upload_model, use_model = apps.get_model("classifier", "Upload"), apps.get_model("classifier", "StorageUse")
    totals = upload_model.objects.order_by().values("owner_id").annotate(total=Sum("size"))
    use_model.objects.bulk_create(
        (use_model(owner_id=row["owner_id"], bytes=row["total"]) for row in totals.iterator()), batch_size=1000
    )


class Migration(migrations.Migration):

    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ('classifier', '0008_prediction_several_digits'),
    ]

    operations = [
        migrations.AddField(
            model_name='upload',
            name='stored_size',
            field=models.PositiveIntegerField(blank=True, help_text='Size in bytes of the stored PNG; empty for uploads stored before it was kept.', null=True),
        ),
        migrations.CreateModel(
            name='StorageUse',
            fields=[
                ('owner', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, primary_key=True, related_name='storage_use', serialize=False, to=settings.AUTH_USER_MODEL)),
                ('bytes', models.BigIntegerField(default=0, help_text="What the owner's uploads take on the media volume.")),
            ],
        ),
        migrations.RunPython(storage_use_count, migrations.RunPython.noop),
    ]
