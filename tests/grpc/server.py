"""A real gRPC server for the gRPC tests (tests/it/grpc.rs), on grpcio with raw-bytes
methods (no protobuf, no generated code).

Methods `Unary`, `ServerStream`, `ClientStream` and `Bidi` of any service name (so that each
route of a test can have its own service), on 127.0.0.1, a free port printed first as
`PORT <n>`, plaintext HTTP/2 (h2c), or with `--tls CERT KEY` (PEM files) TLS with h2 by ALPN.
It runs until killed.

- Unary: answers a JSON document of what it received: the request (text), the metadata
  (`authorization` shown only as whether it was there). A request `fail:<text>`
  is answered with status NOT_FOUND and `<text>` as the message, a request `sleep:<seconds>`
  after that long; every answer carries the trailing metadata `x-trailer: <request>`.
- ServerStream: the request is a number n; answers n messages `item-0` .. `item-<n-1>`.
- ClientStream: answers every message received, joined with `,`.
- Bidi: answers each message as it arrives, upper-cased.
"""

import json
import sys
import time
from concurrent import futures

import grpc



def seen(request, context):
    metadata = {}
    for key, value in context.invocation_metadata():
        if key == "authorization":
            value = "<present>"
        metadata[key] = value
    return {"request": request.decode(), "metadata": metadata}


def unary(request, context):
    context.set_trailing_metadata((("x-trailer", request.decode()),))
    text = request.decode()
    if text.startswith("fail:"):
        context.abort(grpc.StatusCode.NOT_FOUND, text[len("fail:"):])
    if text.startswith("sleep:"):
        time.sleep(float(text[len("sleep:"):]))
    return json.dumps(seen(request, context)).encode()


def server_stream(request, context):
    for i in range(int(request.decode())):
        yield f"item-{i}".encode()


def client_stream(request_iterator, context):
    return b",".join(request_iterator)


def bidi(request_iterator, context):
    for message in request_iterator:
        yield message.upper()


HANDLERS = {
    "Unary": grpc.unary_unary_rpc_method_handler(unary),
    "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
    "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
    "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
}


class AnyService(grpc.GenericRpcHandler):
    """Serves the methods above under every service name: `/<any>/<method>`."""

    def service(self, handler_call_details):
        return HANDLERS.get(handler_call_details.method.rsplit("/", 1)[-1])


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    server.add_generic_rpc_handlers((AnyService(),))
    if len(sys.argv) > 3 and sys.argv[1] == "--tls":
        with open(sys.argv[2], "rb") as cert, open(sys.argv[3], "rb") as key:
            credentials = grpc.ssl_server_credentials(((key.read(), cert.read()),))
        port = server.add_secure_port("127.0.0.1:0", credentials)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    sys.exit(main())
