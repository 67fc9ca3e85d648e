"""Camera or video through OpenCV: a device index, a video file, an RTSP URL or a GStreamer pipeline."""

from __future__ import annotations

import time

from edge.config import CameraSource as CameraConfig
from edge.errors import BackendUnavailable, SourceError
from edge.sources.base import Frame, Source

__all__ = ["CameraSource"]


class CameraSource(Source):
    def __init__(self, station: str, cfg: CameraConfig) -> None:
        try:
            import cv2
        except ImportError as err:
            raise BackendUnavailable("camera sources need OpenCV: pip install 'lineside[camera]'") from err
        self.station = station
        self._cv2 = cv2
        uri = cfg.uri
        if uri.isdigit():
            cap = cv2.VideoCapture(int(uri))
        elif "appsink" in uri:
            cap = cv2.VideoCapture(uri, cv2.CAP_GSTREAMER)
        else:
            cap = cv2.VideoCapture(uri)
        if not cap.isOpened():
            raise SourceError(f"station {station}: cannot open camera/video '{uri}'; check the URI and device access")
        self._cap = cap
        self._uri = uri
        self._min_dt = 1.0 / cfg.fps_limit if cfg.fps_limit else 0.0
        self._last = 0.0
        self._seq = 0
        self.exhausted = False

    def poll(self) -> list[Frame]:
        if self.exhausted or time.monotonic() - self._last < self._min_dt:
            return []
        ok, bgr = self._cap.read()
        if not ok:
            self.exhausted = True  # end of a video file, or the camera went away
            return []
        self._last = time.monotonic()
        self._seq += 1
        rgb = self._cv2.cvtColor(bgr, self._cv2.COLOR_BGR2RGB)
        ref = f"{self._uri}#{self._seq}"
        return [Frame(self.station, ref, identity=f"camera:{ref}@{time.time_ns()}", rgb=rgb)]

    def close(self) -> None:
        self._cap.release()
