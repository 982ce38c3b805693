"""Built-in project templates."""

from workbench_hub.handlers.base import APIHandler
from workbench_hub.projects import list_templates


class TemplateListHandler(APIHandler):
    async def get(self):
        self.write_json({"templates": list_templates()})


handlers = [(r"templates", TemplateListHandler)]
