"""Joins the scale work (0006) and operator-defined workflows (0008): no schema change of its own."""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("generation", "0006_scale"),
        ("generation", "0008_templates"),
    ]

    operations = []
