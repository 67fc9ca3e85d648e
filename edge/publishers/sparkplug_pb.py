"""Sparkplug B payload messages, built at import from the schema published in the Eclipse Sparkplug 3.0.0
specification (package org.eclipse.tahu.protobuf, proto2). Written here field by field from the specification
rather than from generated code, and only the parts Lineside sends or reads (Payload, Metric, PropertySet,
PropertyValue); the field numbers are the specification's, so any Sparkplug decoder reads what we write.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = ["Payload", "DataType"]

_F = descriptor_pb2.FieldDescriptorProto
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED


class DataType:
    """Sparkplug B metric data types (specification section 6.4.16)."""

    Int32, Int64, UInt32, UInt64, Float, Double, Boolean, String, DateTime, Text = 3, 4, 7, 8, 9, 10, 11, 12, 13, 14


def _field(msg: descriptor_pb2.DescriptorProto, name: str, number: int, ftype: int, label: int = _OPT,
           type_name: str | None = None, oneof: int | None = None) -> None:
    f = msg.field.add(name=name, number=number, type=ftype, label=label)
    if type_name:
        f.type_name = type_name
    if oneof is not None:
        f.oneof_index = oneof


def _build() -> type:
    fd = descriptor_pb2.FileDescriptorProto(name="lineside/sparkplug_b.proto", package="org.eclipse.tahu.protobuf",
                                            syntax="proto2")
    payload = fd.message_type.add(name="Payload")
    pkg = ".org.eclipse.tahu.protobuf.Payload."

    pv = payload.nested_type.add(name="PropertyValue")
    pv.oneof_decl.add(name="value")
    _field(pv, "type", 1, _F.TYPE_UINT32)
    _field(pv, "is_null", 2, _F.TYPE_BOOL)
    for name, num, t in (("int_value", 3, _F.TYPE_UINT32), ("long_value", 4, _F.TYPE_UINT64),
                         ("float_value", 5, _F.TYPE_FLOAT), ("double_value", 6, _F.TYPE_DOUBLE),
                         ("boolean_value", 7, _F.TYPE_BOOL), ("string_value", 8, _F.TYPE_STRING)):
        _field(pv, name, num, t, oneof=0)

    ps = payload.nested_type.add(name="PropertySet")
    _field(ps, "keys", 1, _F.TYPE_STRING, _REP)
    _field(ps, "values", 2, _F.TYPE_MESSAGE, _REP, pkg + "PropertyValue")

    m = payload.nested_type.add(name="Metric")
    m.oneof_decl.add(name="value")
    _field(m, "name", 1, _F.TYPE_STRING)
    _field(m, "alias", 2, _F.TYPE_UINT64)
    _field(m, "timestamp", 3, _F.TYPE_UINT64)
    _field(m, "datatype", 4, _F.TYPE_UINT32)
    _field(m, "is_historical", 5, _F.TYPE_BOOL)
    _field(m, "is_transient", 6, _F.TYPE_BOOL)
    _field(m, "is_null", 7, _F.TYPE_BOOL)
    _field(m, "properties", 9, _F.TYPE_MESSAGE, type_name=pkg + "PropertySet")
    for name, num, t in (("int_value", 10, _F.TYPE_UINT32), ("long_value", 11, _F.TYPE_UINT64),
                         ("float_value", 12, _F.TYPE_FLOAT), ("double_value", 13, _F.TYPE_DOUBLE),
                         ("boolean_value", 14, _F.TYPE_BOOL), ("string_value", 15, _F.TYPE_STRING),
                         ("bytes_value", 16, _F.TYPE_BYTES)):
        _field(m, name, num, t, oneof=0)

    _field(payload, "timestamp", 1, _F.TYPE_UINT64)
    _field(payload, "metrics", 2, _F.TYPE_MESSAGE, _REP, pkg + "Metric")
    _field(payload, "seq", 3, _F.TYPE_UINT64)
    _field(payload, "uuid", 4, _F.TYPE_STRING)
    _field(payload, "body", 5, _F.TYPE_BYTES)

    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("org.eclipse.tahu.protobuf.Payload"))


Payload = _build()
