"""DVC stage entry points: `python -m stages.<name>`. Each parses params, calls the library, logs to MLflow."""
