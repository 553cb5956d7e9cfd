from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('generation', '0003_idempotency'),
    ]

    operations = [
        migrations.CreateModel(
            name='LoginCounter',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('kind', models.CharField(choices=[('address', 'client address'), ('account', 'username')], max_length=8)),
                ('key', models.CharField(max_length=160)),
                ('attempts', models.PositiveIntegerField(default=0, help_text='Checked (or being checked) since the last lockout')),
                ('lockouts', models.PositiveIntegerField(default=0, help_text='Lockouts in a row; the next lasts twice the last')),
                ('locked_until', models.DateTimeField(blank=True, null=True)),
                ('last_attempt_at', models.DateTimeField()),
            ],
            options={
                'constraints': [models.UniqueConstraint(fields=('kind', 'key'), name='logincounter_unique_kind_key')],
            },
        ),
        migrations.CreateModel(
            name='RateCounter',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('scope', models.CharField(max_length=32)),
                ('who', models.CharField(max_length=128)),
                ('window_start', models.BigIntegerField(help_text='Unix seconds')),
                ('hits', models.PositiveIntegerField()),
            ],
            options={
                'constraints': [models.UniqueConstraint(fields=('scope', 'who'), name='ratecounter_unique_scope_who')],
            },
        ),
    ]
