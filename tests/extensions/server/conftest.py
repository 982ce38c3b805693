"""jupyter_server's pytest fixtures, running on pytest-asyncio's event loop.

The fixtures are imported by name rather than enabling the `pytest_jupyter` plugin, whose
hooks would run coroutine tests on a loop of their own.
"""

import asyncio
import json
from pathlib import Path

import pytest
from pytest_jupyter.jupyter_core import (  # noqa: F401
    echo_kernel_spec,
    jp_config_dir,
    jp_data_dir,
    jp_env_config_path,
    jp_env_jupyter_path,
    jp_environ,
    jp_home_dir,
    jp_kernel_dir,
    jp_runtime_dir,
    jp_system_config_path,
    jp_system_jupyter_path,
)
from pytest_jupyter.jupyter_server import (  # noqa: F401
    jp_argv,
    jp_auth_header,
    jp_base_url,
    jp_configurable_serverapp,
    jp_extension_environ,
    jp_fetch,
    jp_http_port,
    jp_logging_stream,
    jp_nbconvert_templates,
    jp_root_dir,
    jp_server_cleanup,
    jp_serverapp,
    jp_template_dir,
    jp_web_app,
)
from pytest_jupyter.pytest_tornasync import (  # noqa: F401
    http_server,
    http_server_client,
    http_server_port,
    io_loop,
)
from traitlets.config import Config

EXTENSIONS = Path(__file__).parents[3] / "extensions"
SHIPPED_CONFIG = EXTENSIONS / "jupyter-config" / "server-config" / "workbench_lab.json"


@pytest.fixture
async def jp_asyncio_loop():
    """The loop pytest-asyncio runs the tests on, so the server and the test share it."""
    return asyncio.get_running_loop()


@pytest.fixture
def extra_config():
    """Server config on top of the shipped file; tests parametrize it."""
    return {}


@pytest.fixture
def jp_server_config(in_session, extra_config):
    """The extension enabled by the config file the package installs, in a session's env."""
    config = Config(json.loads(SHIPPED_CONFIG.read_text()))
    config.merge(Config(extra_config))
    return config
