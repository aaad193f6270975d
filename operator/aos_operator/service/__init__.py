"""The service room: config.yaml (schema versions 1 and 2), the normalized service description,
and the image config and Aos service config generated from it. Pure: no I/O beyond reading
the config file, no Kubernetes, no network."""

from aos_operator.service.artifacts import image_config, service_config
from aos_operator.service.description import ServiceDescription
from aos_operator.service.loader import ConfigResult, load_service, parse_config_data, read_config

__all__ = [
    "ConfigResult",
    "ServiceDescription",
    "image_config",
    "load_service",
    "parse_config_data",
    "read_config",
    "service_config",
]
