"""The engine over HTTP: Convex's function API, file storage routes, and user HTTP actions under `/http/`."""

from .actions import HttpActions, HttpRouter, load_routes
from .file_storage_api import FileStorageApi
from .function_api import FunctionApi, json_response

__all__ = ["FileStorageApi", "FunctionApi", "HttpActions", "HttpRouter", "json_response", "load_routes"]
