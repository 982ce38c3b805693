"""Resource profiles the caller may use."""

from workbench_hub.handlers.base import APIHandler
from workbench_hub.profiles import profiles_for


class ProfileListHandler(APIHandler):
    async def get(self):
        profiles = profiles_for(self.service.resource_profiles, self.identity.groups)
        self.write_json({"profiles": profiles})


handlers = [(r"profiles", ProfileListHandler)]
