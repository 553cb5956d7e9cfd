from django.apps import AppConfig


class ModelsRegistryConfig(AppConfig):
    default_auto_field = 'django.db.models.BigAutoField'
    name = 'models_registry'
