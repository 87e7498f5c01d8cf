"""An independent backend, in Python, that knows nothing of weapp but the addresses of two
session-svc replicas: it learns the API through gRPC server reflection and asks both for
WeChat's access_token, 50 calls at once on each; then, once WeChat (the sandbox) has stopped
accepting that token, two "backends" report it at once, one to each replica. Prints what it
saw, and the sandbox's call counts after each phase, as JSON.

    python central_control.py REPLICA_A REPLICA_B SANDBOX_URL
"""
import json
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

SERVICE = "weapp.session.v1.SessionService"


class Replica:
    def __init__(self, target):
        self.channel = grpc.insecure_channel(target)
        pool = DescriptorPool(ProtoReflectionDescriptorDatabase(self.channel))
        self.service = pool.FindServiceByName(SERVICE)

    def call(self, method, **fields):
        descriptor = self.service.FindMethodByName(method)
        request, response = GetMessageClass(descriptor.input_type), GetMessageClass(descriptor.output_type)
        stub = self.channel.unary_unary(f"/{SERVICE}/{method}", request_serializer=request.SerializeToString,
                                        response_deserializer=response.FromString)
        return stub(request(**fields), timeout=20)


def sandbox(url, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method="POST" if data else "GET",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        return json.load(answer)


def main():
    a, b = Replica(sys.argv[1]), Replica(sys.argv[2])
    sandbox_url = sys.argv[3]
    with ThreadPoolExecutor(max_workers=100) as pool:
        calls = [pool.submit(r.call, "GetAccessToken") for r in (a, b) for _ in range(50)]
        first = [c.result() for c in calls]
    tokens = sorted({t.access_token for t in first})
    after_first = sandbox(sandbox_url, "/sandbox/tokens/stats")

    sandbox(sandbox_url, "/sandbox/tokens/revoke", {"access_token": tokens[0]})
    with ThreadPoolExecutor(max_workers=2) as pool:
        reports = [pool.submit(r.call, "ReportInvalidAccessToken", access_token=tokens[0]) for r in (a, b)]
        second = [r.result() for r in reports]
    after_reports = sandbox(sandbox_url, "/sandbox/tokens/stats")
    print(json.dumps({
        "tokens": len(tokens),
        "expires_in_s": min(t.expires_in.seconds for t in first),
        "after_first": after_first,
        "reported_answers": len({t.access_token for t in second}),
        "reported_answer_is_new": all(t.access_token != tokens[0] for t in second),
        "after_reports": after_reports,
    }))


if __name__ == "__main__":
    main()
