"""The OpenAPI document of this API (workbench_hub/openapi.yaml), served as JSON."""

from functools import cache
from pathlib import Path

import yaml

from workbench_hub.handlers.base import APIHandler

OPENAPI_PATH = Path(__file__).parent.parent / "openapi.yaml"


@cache
def openapi_document() -> dict:
    return yaml.safe_load(OPENAPI_PATH.read_text())


class OpenAPIHandler(APIHandler):
    async def get(self):
        self.write_json(openapi_document())


handlers = [(r"openapi.json", OpenAPIHandler)]
