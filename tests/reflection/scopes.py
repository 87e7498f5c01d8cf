"""An independent backend, in Python, that knows nothing of weapp but its address: it learns
session-svc's API through gRPC server reflection (no key needed for that), builds its messages
from the descriptors it was sent, and calls RevokeUser and Publish with no key, with the
gateway's key and with an admin key. Prints what each call answered, as JSON.

    python scopes.py HOST:PORT GATEWAY_KEY ADMIN_KEY
"""
import json
import sys

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

SERVICE = "weapp.session.v1.SessionService"


def main():
    target, gateway_key, admin_key = sys.argv[1:4]
    channel = grpc.insecure_channel(target)
    reflection = ProtoReflectionDescriptorDatabase(channel)
    services = reflection.get_services()
    if SERVICE not in services:
        raise SystemExit(f"{SERVICE} not listed by reflection: {services}")
    pool = DescriptorPool(reflection)
    service = pool.FindServiceByName(SERVICE)
    push_message = GetMessageClass(pool.FindMessageTypeByName("weapp.session.v1.PushMessage"))

    def request(method):
        descriptor = service.FindMethodByName(method)
        return descriptor, GetMessageClass(descriptor.input_type), GetMessageClass(descriptor.output_type)

    def call(method, build, key):
        _, req, resp = request(method)
        stub = channel.unary_unary(f"/{SERVICE}/{method}", request_serializer=req.SerializeToString,
                                   response_deserializer=resp.FromString)
        metadata = [("authorization", f"Bearer {key}")] if key else []
        try:
            stub(build(req), metadata=metadata, timeout=5)
            return "OK"
        except grpc.RpcError as e:
            return e.code().name

    calls = {
        "RevokeUser": lambda req: req(open_id="o-reflection"),
        "Publish": lambda req: req(message=push_message(open_id="o-reflection", text="hi")),
    }
    answers = {
        who: {method: call(method, build, key) for method, build in calls.items()}
        for who, key in (("no key", None), ("gateway key", gateway_key), ("admin key", admin_key))
    }
    print(json.dumps(answers))


if __name__ == "__main__":
    main()
