"""TF Serving config messages that the tensorflow-serving-api wheel does not ship.

`BatchingParameters` (servables/tensorflow/session_bundle_config.proto), `MonitoringConfig`
(config/monitoring_config.proto) and `SSLConfig` (config/ssl_config.proto) are rebuilt here from
their upstream definitions, with the same package, names and field numbers, so the same text files
parse here and in tensorflow_model_server.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

_F = descriptor_pb2.FieldDescriptorProto


def _field(name, number, kind, type_name=None, repeated=False):
    field = _F(name=name, number=number, type=kind)
    field.label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
    if type_name:
        field.type_name = type_name
    return field


def _file() -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FileDescriptorProto(
        name="xfer/serving/tf_serving_configs.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    i64, s, b = (
        ".google.protobuf.Int64Value",
        ".google.protobuf.StringValue",
        ".google.protobuf.BoolValue",
    )
    msg = _F.TYPE_MESSAGE
    f.message_type.add(
        name="BatchingParameters",
        field=[
            _field("max_batch_size", 1, msg, i64),
            _field("batch_timeout_micros", 2, msg, i64),
            _field("max_enqueued_batches", 3, msg, i64),
            _field("num_batch_threads", 4, msg, i64),
            _field("thread_pool_name", 5, msg, s),
            _field("allowed_batch_sizes", 6, _F.TYPE_INT64, repeated=True),
            _field("pad_variable_length_inputs", 7, _F.TYPE_BOOL),
            _field("enable_large_batch_splitting", 8, msg, b),
            _field("max_execution_batch_size", 9, msg, i64),
        ],
    )
    f.message_type.add(
        name="PrometheusConfig",
        field=[_field("enable", 1, _F.TYPE_BOOL), _field("path", 2, _F.TYPE_STRING)],
    )
    f.message_type.add(
        name="MonitoringConfig",
        field=[_field("prometheus_config", 1, msg, ".tensorflow.serving.PrometheusConfig")],
    )
    f.message_type.add(  # the PEM texts themselves, not file names (server.cc reads them as is)
        name="SSLConfig",
        field=[
            _field("server_key", 1, _F.TYPE_STRING),
            _field("server_cert", 2, _F.TYPE_STRING),
            _field("custom_ca", 3, _F.TYPE_STRING),
            _field("client_verify", 4, _F.TYPE_BOOL),
        ],
    )
    return f


def _build():
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    pool.Add(_file())
    get = message_factory.GetMessageClass
    return (
        get(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")),
        get(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig")),
        get(pool.FindMessageTypeByName("tensorflow.serving.SSLConfig")),
    )


BatchingParameters, MonitoringConfig, SSLConfig = _build()
