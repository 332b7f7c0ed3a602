"""The Covercraft HTTP service: OpenAI-compatible images API and the publishing hook.

``create_app(service, settings, generator=None)`` builds the FastAPI app; ``covercraft api``
(flows/service/cli.py) serves it with uvicorn. Settings: configs/service.yaml.
"""

from flows.service.app import create_app
from flows.service.settings import ServiceSettings, load_service_config

__all__ = ["create_app", "ServiceSettings", "load_service_config"]
