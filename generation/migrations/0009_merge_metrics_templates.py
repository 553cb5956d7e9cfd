# Joins the two branches that both follow 0005_workflows: metrics (0007) and workflow templates (0008).

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('generation', '0007_metrics'),
        ('generation', '0008_templates'),
    ]

    operations = []
