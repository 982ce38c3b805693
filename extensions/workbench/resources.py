"""The REST resources a Client exposes, one class each (`client.projects`, ...)."""

from urllib.parse import quote


class Projects:
    """Projects API of a Client."""

    def __init__(self, client):
        self._client = client

    def list(self):
        """Every project the caller may see, each a dict with its `role`."""
        return self._client.request("GET", "projects")["projects"]

    def get(self, name):
        """One project by name; WorkbenchError(404) if it does not exist for the caller."""
        return self._client.request("GET", f"projects/{quote(name, safe='')}")
