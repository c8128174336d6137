"""A real gRPC client for the gRPC tests (tests/it/grpc.rs), on grpcio with raw-bytes methods.

    client.py TARGET CALLS_JSON [--tls CA_FILE]

Makes each call of CALLS_JSON in order on one channel (plaintext HTTP/2 by prior knowledge, or
TLS with h2 by ALPN trusting CA_FILE, for the name `localhost`) and prints a JSON list with one
result per call: {"code": "OK", "code_value": 0, "details": ..., "responses": [...],
"initial": {...}, "trailing": {...}}.

A call is {"method": "Unary" | "ServerStream" | "ClientStream" | "Bidi", "request": text or
[texts], "token": bearer token or null, "service": the service name (default
`portcullis.test.Echo`), "parallel": n}: it calls `/<service>/<method>`. With "parallel", a
unary call is made n times at once, and its result is only {"codes": [the n status names]}.
"""

import json
import sys

import grpc

SERVICE = "portcullis.test.Echo"


def metadata_dict(metadata):
    return {key: value for key, value in (metadata or ()) if isinstance(value, str)}


def call(channel, spec):
    method = spec["method"]
    path = f"/{spec.get('service') or SERVICE}/{method}"
    metadata = []
    if spec.get("token"):
        metadata.append(("authorization", f"Bearer {spec['token']}"))
    request = spec.get("request", "")
    kinds = {
        "Unary": channel.unary_unary,
        "ServerStream": channel.unary_stream,
        "ClientStream": channel.stream_unary,
        "Bidi": channel.stream_stream,
    }
    stub = kinds[method](path)
    if method in ("ClientStream", "Bidi"):
        request = iter([r.encode() for r in request])
    else:
        request = request.encode()
    if spec.get("parallel"):
        calls = [stub.future(request, metadata=metadata, timeout=10) for _ in range(spec["parallel"])]
        codes = []
        for c in calls:
            try:
                c.result()
                codes.append(c.code().name)
            except grpc.RpcError as e:
                codes.append(e.code().name)
        return {"codes": codes}
    result = {"responses": []}
    try:
        if method in ("Unary", "ClientStream"):
            response, rpc = stub.with_call(request, metadata=metadata, timeout=10)
            result["responses"].append(response.decode())
        else:
            rpc = stub(request, metadata=metadata, timeout=10)
            for response in rpc:
                result["responses"].append(response.decode())
        code, details = rpc.code(), rpc.details()
        initial, trailing = rpc.initial_metadata(), rpc.trailing_metadata()
    except grpc.RpcError as e:
        code, details = e.code(), e.details()
        initial, trailing = e.initial_metadata(), e.trailing_metadata()
    result.update(
        code=code.name,
        code_value=code.value[0],
        details=details,
        initial=metadata_dict(initial),
        trailing=metadata_dict(trailing),
    )
    return result


def main():
    target, calls = sys.argv[1], json.loads(sys.argv[2])
    # Never through a proxy from the environment: the tests talk to 127.0.0.1 only.
    options = [("grpc.enable_http_proxy", 0)]
    if len(sys.argv) > 4 and sys.argv[3] == "--tls":
        with open(sys.argv[4], "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        options.append(("grpc.ssl_target_name_override", "localhost"))
        channel = grpc.secure_channel(target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    with channel:
        print(json.dumps([call(channel, spec) for spec in calls]), flush=True)


if __name__ == "__main__":
    sys.exit(main())
