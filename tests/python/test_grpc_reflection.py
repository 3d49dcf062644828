"""gRPC server reflection through the real grpcio-reflection client (which speaks the v1alpha
protocol, as older grpcurl builds do): the public listener lists exactly what it serves
(Inference, Catalog, Billing, Admin, health, reflection; never the internal Metering), health is
resolvable by name, and a call built only from the reflected descriptors works."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pool, json_format
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from harness import MODEL_IDS, auth
from mock_rules import echo

TIMEOUT = 30

PUBLIC_SERVICES = {
    "tollgate.v1.Inference",
    "tollgate.v1.Catalog",
    "tollgate.v1.Billing",
    "tollgate.v1.Admin",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}


@pytest.fixture(scope="module")
def reflected(grpc_channel):
    database = ProtoReflectionDescriptorDatabase(grpc_channel)
    return database, descriptor_pool.DescriptorPool(database)


def metadata(key) -> list[tuple[str, str]]:
    return [(name.lower(), value) for name, value in auth(key).items()]


def unary_by_name(channel: grpc.Channel, pool, service: str, method: str):
    """A callable for `service/method` built only from reflected descriptors, and its request
    class."""
    descriptor = pool.FindServiceByName(service).FindMethodByName(method)
    request = GetMessageClass(descriptor.input_type)
    response = GetMessageClass(descriptor.output_type)
    call = channel.unary_unary(
        f"/{service}/{method}",
        request_serializer=request.SerializeToString,
        response_deserializer=response.FromString,
    )
    return call, request


def test_lists_exactly_the_public_services(reflected):
    database, _ = reflected
    assert set(database.get_services()) == PUBLIC_SERVICES


def test_health_is_resolvable_by_name(reflected):
    _, pool = reflected
    health = pool.FindServiceByName("grpc.health.v1.Health")
    assert {m.name for m in health.methods} >= {"Check", "Watch"}


def test_metering_is_not_resolvable(reflected):
    """Metering's service is cut from the public descriptors; its messages stay (Billing's
    CheckKey answers with KeyInfo)."""
    database, pool = reflected
    with pytest.raises(grpc.RpcError) as err:
        database.FindFileContainingSymbol("tollgate.v1.Metering")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    check_key = pool.FindServiceByName("tollgate.v1.Billing").FindMethodByName("CheckKey")
    assert check_key.output_type.full_name == "tollgate.v1.KeyInfo"


def test_list_models_by_name(grpc_channel, reflected, key):
    _, pool = reflected
    call, request = unary_by_name(grpc_channel, pool, "tollgate.v1.Catalog", "ListModels")
    reply = call(request(), metadata=metadata(key), timeout=TIMEOUT)
    listed = {m["id"] for m in json_format.MessageToDict(reply)["models"]}
    assert set(MODEL_IDS) <= listed


def test_chat_by_name(grpc_channel, reflected, key):
    _, pool = reflected
    call, request = unary_by_name(grpc_channel, pool, "tollgate.v1.Inference", "Chat")
    messages = [{"role": "user", "content": "reflected hello"}]
    body = json_format.ParseDict(
        {"model": "deepseek-chat", "messages": [{"role": "ROLE_USER", "text": "reflected hello"}]},
        request(),
    )
    reply = json_format.MessageToDict(call(body, metadata=metadata(key), timeout=TIMEOUT))
    assert reply["choices"][0]["message"]["text"] == echo(messages)
    assert int(reply["usage"]["costPicodollars"]) > 0
