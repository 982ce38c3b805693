"""The model server: serves one function of a model build over HTTP (docs/models.md)."""
