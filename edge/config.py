"""The daemon's YAML config, validated on load: unknown keys, wrong types and missing files are refused with
the key path and the fix. Secrets come from environment variables or files, never from the YAML."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from edge.contract import field_problem, read_document
from edge.errors import ConfigError

__all__ = ["DaemonConfig", "load_config", "StationConfig", "MqttConfig", "SparkplugConfig", "JsonPublisherConfig"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FolderSource(_Strict):
    type: Literal["folder"] = "folder"
    path: Path = Field(description="watched folder; new image files are scored in arrival order")
    done_dir: Path | None = Field(None, description="move scored files here (default: delete nothing, keep in place)")
    failed_dir: Path | None = Field(None, description="move files that gave an error verdict here")
    poll_s: float = Field(0.1, gt=0, description="polling interval")
    settle_s: float = Field(0.2, ge=0, description="a file without an end marker (TIFF, BMP) is taken once its size "
                            "and mtime are unchanged this long; a PNG/JPEG is taken as soon as it ends with its end "
                            "marker (best of all: write to a dot-file, then rename it)")
    incomplete_wait_s: float = Field(30.0, ge=0, description="a PNG/JPEG without its end marker is waited for this "
                                     "long (a camera still writing) before it is scored as an error")


class CameraSource(_Strict):
    type: Literal["camera"] = "camera"
    uri: str = Field(description="device index ('0'), video file, RTSP URL or GStreamer pipeline ending in appsink")
    fps_limit: float | None = Field(None, gt=0, description="score at most this many frames per second")


class MqttSource(_Strict):
    type: Literal["mqtt"] = "mqtt"
    topic: str = Field(description="trigger topic: payload is an image, or JSON {id, path}")
    path_root: Path | None = Field(None, description="JSON triggers may name image files only inside this folder "
                                   "(unset: path triggers are refused)")
    max_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="largest image accepted (payload or file)")


Source = Annotated[Union[FolderSource, CameraSource, MqttSource], Field(discriminator="type")]


class StationConfig(_Strict):
    name: str = Field(description="station name, used in topics", pattern=r"^[A-Za-z0-9_-]+$")
    source: Source
    threshold: float | None = Field(None, description="override the bundle's threshold for this station")


class TlsConfig(_Strict):
    ca: Path = Field(description="CA certificate of the broker")
    cert: Path | None = Field(None, description="client certificate")
    key: Path | None = Field(None, description="client private key")


class BrokerAddress(_Strict):
    host: str
    port: int = Field(1883, ge=1, le=65535)


class MqttConfig(_Strict):
    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    failover: list[BrokerAddress] = Field(default_factory=list, description="further brokers, tried in order when "
                                          "the current one cannot be reached (same credentials and TLS)")
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str | None = Field(None, description="MQTT client id; default lineside-<line>-<hostname>, unique per "
                                  "box and fixed across restarts (the persistent session that keeps triggers needs it)")
    prefix: str = Field("lineside", description="topic prefix: <prefix>/<line>/<station>/verdict")
    line: str = Field("line1", pattern=r"^[A-Za-z0-9_-]+$")
    username: str | None = None
    password_env: str | None = Field("LINESIDE_MQTT_PASSWORD", description="environment variable holding the password")
    password_file: Path | None = Field(None, description="file holding the password (systemd LoadCredential)")
    tls: TlsConfig | None = None
    keepalive_s: int = Field(30, ge=5)
    reconnect_min_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)

    def password(self) -> str | None:
        if self.password_file is not None:
            return self.password_file.read_text().strip()
        if self.password_env:
            return os.environ.get(self.password_env)
        return None


class JsonPublisherConfig(_Strict):
    type: Literal["json"] = "json"


class SparkplugConfig(_Strict):
    type: Literal["sparkplug"] = "sparkplug"
    group_id: str = Field("lineside", pattern=r"^[^/+#]+$", description="Sparkplug group id")
    edge_node_id: str | None = Field(None, pattern=r"^[^/+#]+$", description="edge node id (default: the line "
                                     "and host name, like the MQTT client id)")
    primary_host_id: str | None = Field(None, pattern=r"^[^/+#]+$", description="publish only while this primary "
                                        "host application is online (spBv1.0/STATE/<id>); unset: always")
    broker: MqttConfig | None = Field(None, description="broker for Sparkplug (default: the mqtt section's); the "
                                      "edge node has its own connection because its will must be the NDEATH")
    qos: Literal[0, 1] = Field(0, description="QoS of NDATA/DDATA: 0 as the specification requires; 1 lets the "
                               "spool wait for the broker's PUBACK (outside the specification)")


PublisherConfig = Annotated[Union[JsonPublisherConfig, SparkplugConfig], Field(discriminator="type")]


class QueueConfig(_Strict):
    max_items: int = Field(100_000, ge=10, description="verdicts kept while the broker is away; oldest dropped beyond")
    max_age_s: float | None = Field(None, gt=0, description="drop undelivered verdicts older than this (counted and "
                                    "logged); off by default: a clock corrected on a board without RTC would drop them")


class HeatmapConfig(_Strict):
    enabled: bool = True
    max_files: int = Field(500, ge=1, description="oldest overlays are deleted beyond this many")


class MetricsConfig(_Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535, description="Prometheus port (0: pick a free one)")


class BackendConfig(_Strict):
    device: str = Field("auto", description="auto, cpu, npu, gpu, cuda, or dla:N (Jetson)")
    threads: int = Field(0, ge=0, description="inference threads (0: runtime default)")


class CommandsConfig(_Strict):
    enabled: bool = Field(False, description="accept remote commands on <prefix>/<line>/set (off: not subscribed)")
    bundle_dir: Path | None = Field(None, description="a reload command may name only bundles inside this folder; "
                                    "remote reloads also need trust.keys")


class TrustConfig(_Strict):
    keys: list[Path] = Field(default_factory=list, description="Ed25519 public keys (edge-deploy keygen) whose "
                             "signed bundles this daemon runs; with keys set, unsigned, foreign-key and older "
                             "(rollback) bundles are refused")


# list fields whose entries must differ in one attribute: field -> (attribute, the rule as said to the user)
_DISTINCT = {"publishers": ("type", "each publisher type may appear once"),
             "stations": ("name", "station names must be unique")}


class DaemonConfig(_Strict):
    bundle: Path = Field(description="bundle folder built by edge-deploy")
    state_dir: Path = Field(Path("/var/lib/lineside"), description="queue database, heatmaps")
    cache_dir: Path = Field(Path("/var/cache/lineside"), description="compiled-model caches")
    backend: BackendConfig = Field(default_factory=BackendConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    heatmaps: HeatmapConfig = Field(default_factory=HeatmapConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    commands: CommandsConfig = Field(default_factory=CommandsConfig)
    trust: TrustConfig = Field(default_factory=TrustConfig)
    publishers: list[PublisherConfig] = Field(default_factory=lambda: [JsonPublisherConfig()], min_length=1,
                                              description="how verdicts leave the box: json (default), sparkplug")
    stations: list[StationConfig] = Field(min_length=1)
    max_pixels: int = Field(16384 * 16384, ge=1, description="frames larger than this are refused (error verdict)")

    @field_validator(*_DISTINCT)
    @classmethod
    def _distinct(cls, v: list[Any], info: ValidationInfo) -> list[Any]:
        attr, rule = _DISTINCT[info.field_name or ""]
        keys = [getattr(x, attr) for x in v]
        if len(set(keys)) != len(keys):
            raise ValueError(f"{rule}, got {keys}")
        return v


def load_config(path: str | Path) -> DaemonConfig:
    """Load and validate the YAML config; relative paths are resolved against the config's folder."""
    p = Path(path)
    raw = read_document(p, "yaml", ConfigError, "config")
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    try:
        cfg = DaemonConfig(**raw)
    except ValidationError as err:
        raise ConfigError(f"{p}: {field_problem(err)}") from err
    base = p.resolve().parent

    def fix(q: Path) -> Path:
        return q if q.is_absolute() else base / q

    cfg.bundle, cfg.state_dir, cfg.cache_dir = fix(cfg.bundle), fix(cfg.state_dir), fix(cfg.cache_dir)
    cfg.trust.keys = [fix(k) for k in cfg.trust.keys]
    for k in cfg.trust.keys:
        if not k.is_file():
            raise ConfigError(f"{p}: trust.keys: file {k} does not exist (copy the .pub from edge-deploy keygen)")
    if cfg.commands.bundle_dir is not None:
        cfg.commands.bundle_dir = fix(cfg.commands.bundle_dir)
    for st in cfg.stations:
        if isinstance(st.source, FolderSource):
            st.source.path = fix(st.source.path)
            st.source.done_dir = fix(st.source.done_dir) if st.source.done_dir else None
            st.source.failed_dir = fix(st.source.failed_dir) if st.source.failed_dir else None
        if isinstance(st.source, MqttSource) and st.source.path_root is not None:
            st.source.path_root = fix(st.source.path_root)
    if cfg.mqtt.tls:
        for name in ("ca", "cert", "key"):
            f = getattr(cfg.mqtt.tls, name)
            if f is not None and not fix(f).is_file():
                raise ConfigError(f"{p}: mqtt.tls.{name}: file {fix(f)} does not exist")
            if f is not None:
                setattr(cfg.mqtt.tls, name, fix(f))
    if cfg.mqtt.password_file is not None and not fix(cfg.mqtt.password_file).is_file():
        raise ConfigError(f"{p}: mqtt.password_file: file {fix(cfg.mqtt.password_file)} does not exist")
    return cfg
