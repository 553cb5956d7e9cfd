import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


def copy_existing_keys(apps, schema_editor):
    """Keys stored on requests become "submit" records with no fingerprint (they match any body),
    so a client retrying across the upgrade still gets its request back until the key expires."""
    GenerationRequest = apps.get_model("generation", "GenerationRequest")
    IdempotencyRecord = apps.get_model("generation", "IdempotencyRecord")
    keyed = GenerationRequest.objects.exclude(idempotency_key__isnull=True).values_list(
        "id", "user_id", "idempotency_key", "created_at")
    IdempotencyRecord.objects.bulk_create(
        [IdempotencyRecord(request_id=pk, user_id=user_id, operation="submit", key=key, fingerprint="",
                           created_at=created_at) for pk, user_id, key, created_at in keyed.iterator()],
        batch_size=1000)


class Migration(migrations.Migration):

    dependencies = [
        ('generation', '0002_generationrequest_executed_at'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='IdempotencyRecord',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('operation', models.CharField(choices=[('submit', 'submit'), ('regenerate', 'regenerate')], max_length=16)),
                ('key', models.CharField(max_length=255)),
                ('fingerprint', models.CharField(help_text='sha256 of the call; empty for keys stored before fingerprints existed (they match any call)', max_length=64)),
                ('created_at', models.DateTimeField(db_index=True, default=django.utils.timezone.now)),
                ('request', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='generation.generationrequest')),
                ('user', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'constraints': [models.UniqueConstraint(fields=('user', 'operation', 'key'), name='idempotency_unique_user_operation_key')],
            },
        ),
        migrations.RunPython(copy_existing_keys, migrations.RunPython.noop),
    ]
