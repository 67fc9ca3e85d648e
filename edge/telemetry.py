"""Vendor usage telemetry off: OpenVINO and NNCF send Google Analytics events unless something stops them.

`import openvino` sends a GA4 "general_import" event to www.google-analytics.com
(openvino/tools/ovc/__init__.py) and NNCF one per tracked API call. Lineside calls no host it was not given.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["disable_vendor_telemetry"]

log = logging.getLogger(__name__)

_PACKAGE = "openvino_telemetry"


def disable_vendor_telemetry() -> bool:
    """Make `openvino_telemetry` unimportable in this process, so OpenVINO and NNCF use their no-op stubs.

    Both import it in a try block and fall back to a stub on ImportError
    (openvino/tools/ovc/telemetry_utils.py, nncf/telemetry/wrapper.py: "No telemetry will be sent"); a None
    entry in sys.modules makes that import raise. The package's own opt-outs are a consent file under
    $HOME/intel or CI=true in the environment: the first writes outside our directories and depends on who
    runs us, the second changes what CI means to everything else in the process. Call this before the first
    import of openvino or nncf.

    Returns:
        False, with a warning, if the package was already imported (too late: its import event was sent).
    """
    loaded = sys.modules.get(_PACKAGE, False)
    if loaded is None:
        return True
    if loaded is not False:
        log.warning("%s was imported before disable_vendor_telemetry(); OpenVINO/NNCF may send usage events",
                    _PACKAGE)
        return False
    sys.modules[_PACKAGE] = None  # type: ignore[assignment]
    return True
