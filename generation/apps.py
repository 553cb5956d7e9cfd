from django.apps import AppConfig


class GenerationConfig(AppConfig):
    default_auto_field = 'django.db.models.BigAutoField'
    name = 'generation'

    def ready(self):
        # models that live with the concept they serve, outside models.py
        from generation import (  # noqa: F401
            checks,
            idempotency,
            login_guard,
            throttling,
        )
