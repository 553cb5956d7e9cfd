"""Built-in workflow types, one module each (``WORKFLOW = …``); the registry finds them here."""
