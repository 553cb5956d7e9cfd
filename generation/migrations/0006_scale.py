"""Scale: liveness and progress move to a narrow table; retry backoff; cancel stops the backend in a task.

- ``RunState`` (one narrow row per dispatched request: the lease and progress) takes over
  ``heartbeat_at``, ``progress``, ``current_node``, ``current_step`` and ``total_steps``, which a
  running job rewrote several times a second in the wide, many-indexed request row. Existing rows
  that were ever dispatched get theirs copied over. On PostgreSQL its pages keep half their room
  free (fillfactor 50), so those rewrites stay HOT (no index touched) on the same page.
- ``not_before`` (a requeued request waits until then) and ``backend_stop`` (after a cancel:
  stopping its prompt on the backend) are new; ``genreq_queued_user_idx`` lets the dispatcher find
  which users wait in one index probe per user; ``genreq_queued_req_idx`` leaves out requests without
  requirements (a condition on those must not turn into a scan of the index).
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


COPY_TO_RUNSTATE = """
    INSERT INTO generation_runstate (request_id, attempt, heartbeat_at, progress, current_node, current_step,
                                     total_steps)
    SELECT id, attempts, heartbeat_at, progress, current_node, current_step, total_steps
    FROM generation_generationrequest WHERE attempts > 0 OR progress > 0
"""
COPY_BACK = """
    UPDATE generation_generationrequest SET
        heartbeat_at = (SELECT r.heartbeat_at FROM generation_runstate r WHERE r.request_id = generation_generationrequest.id),
        progress = COALESCE((SELECT r.progress FROM generation_runstate r
                             WHERE r.request_id = generation_generationrequest.id), 0),
        current_node = COALESCE((SELECT r.current_node FROM generation_runstate r
                                 WHERE r.request_id = generation_generationrequest.id), ''),
        current_step = COALESCE((SELECT r.current_step FROM generation_runstate r
                                 WHERE r.request_id = generation_generationrequest.id), 0),
        total_steps = COALESCE((SELECT r.total_steps FROM generation_runstate r
                                WHERE r.request_id = generation_generationrequest.id), 0)
"""


def leave_room_for_hot_updates(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER TABLE generation_runstate SET (fillfactor = 50)")


class Migration(migrations.Migration):

    dependencies = [
        ('generation', '0005_workflows'),
        ('models_registry', '0003_registry_jobs'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='RunState',
            fields=[
                ('request', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, primary_key=True, related_name='run', serialize=False, to='generation.generationrequest')),
                ('attempt', models.PositiveSmallIntegerField(default=0)),
                ('heartbeat_at', models.DateTimeField(blank=True, null=True)),
                ('progress', models.FloatField(default=0.0)),
                ('current_node', models.CharField(blank=True, default='', max_length=64)),
                ('current_step', models.PositiveIntegerField(default=0)),
                ('total_steps', models.PositiveIntegerField(default=0)),
            ],
        ),
        migrations.RunPython(leave_room_for_hot_updates, migrations.RunPython.noop),
        migrations.RunSQL(COPY_TO_RUNSTATE, COPY_BACK),
        migrations.RemoveConstraint(
            model_name='generationrequest',
            name='genreq_progress_0_1',
        ),
        migrations.RemoveField(
            model_name='generationrequest',
            name='current_node',
        ),
        migrations.RemoveField(
            model_name='generationrequest',
            name='current_step',
        ),
        migrations.RemoveField(
            model_name='generationrequest',
            name='heartbeat_at',
        ),
        migrations.RemoveField(
            model_name='generationrequest',
            name='progress',
        ),
        migrations.RemoveField(
            model_name='generationrequest',
            name='total_steps',
        ),
        migrations.AddField(
            model_name='generationrequest',
            name='backend_stop',
            field=models.CharField(blank=True, choices=[('', 'Nothing to stop'), ('pending', 'Stopping on the backend'), ('done', 'Stopped on the backend'), ('unreachable', 'Backend did not answer')], default='', help_text='After a cancel: stopping its prompt on the backend', max_length=16),
        ),
        migrations.AddField(
            model_name='generationrequest',
            name='not_before',
            field=models.DateTimeField(blank=True, help_text='A requeued request waits until then (retry backoff)', null=True),
        ),
        migrations.AlterField(
            model_name='generationrequest',
            name='updated_at',
            field=models.DateTimeField(auto_now=True, help_text='Last change of the row (not of progress)'),
        ),
        migrations.AddIndex(
            model_name='generationrequest',
            index=models.Index(condition=models.Q(('status', 'queued')), fields=['user', 'created_at', 'id'], name='genreq_queued_user_idx'),
        ),
        migrations.RemoveIndex(
            model_name='generationrequest',
            name='genreq_queued_req_idx',
        ),
        migrations.AddIndex(
            model_name='generationrequest',
            index=models.Index(condition=models.Q(('requirements__isnull', False), ('status', 'queued')), fields=['requirements', 'created_at'], name='genreq_queued_req_idx'),
        ),
        migrations.AddConstraint(
            model_name='runstate',
            constraint=models.CheckConstraint(condition=models.Q(('progress__gte', 0.0), ('progress__lte', 1.0)), name='runstate_progress_0_1'),
        ),
    ]
