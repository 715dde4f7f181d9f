"""FetchSecrets over a Unix socket with gRPC C-core (grpcio), the client stack of Python,
C++, Ruby and PHP. Usage: grpcio_fetch.py SOCKET REQUEST_HEX TIMEOUT_SECONDS [AUTHORITY]

Prints `OK <response hex>` or `ERR <status code name> <details>`. The request and response
are raw protobuf bytes (encoded and decoded by the Rust test), so no generated stubs are
needed. AUTHORITY, when given, is set as `grpc.default_authority`.
"""

import sys

import grpc


def main() -> None:
    path, request_hex, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
    authority = sys.argv[4] if len(sys.argv) > 4 else ""
    options = [("grpc.default_authority", authority)] if authority else []
    with grpc.insecure_channel("unix:" + path, options=options) as channel:
        fetch = channel.unary_unary(
            "/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets"
        )
        try:
            response = fetch(bytes.fromhex(request_hex), timeout=timeout)
            print("OK", response.hex())
        except grpc.RpcError as e:
            print("ERR", e.code().name, e.details())


if __name__ == "__main__":
    main()
