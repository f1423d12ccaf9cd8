"""User code that imports clustrix itself and uses it on the node (the packaging tests).

Run there, ``ClusterConfig`` needs clustrix's own requirements (pydantic, pydantic-settings):
the worker runtime zip holds clustrix and cloudpickle only, the rest must be installed.
"""

from __future__ import annotations

import clustrix
from clustrix import ClusterConfig


def config_on_the_node(cores: int) -> dict[str, object]:
    """Build configs where the call runs; say where clustrix and its dependencies came from."""
    import pydantic_settings

    return {
        "cores": ClusterConfig(cores=cores).cores,
        "cluster_type": ClusterConfig().cluster_type,
        "clustrix_from": clustrix.__file__,
        "pydantic_settings_from": pydantic_settings.__file__,
    }
