"""A Python client of Quarry generated from proto/ with grpcio-tools.

Usage: python3 tests/python/quarry_client.py --addr 127.0.0.1:7700 [--ca ca.pem --api-key qk_...]
Generates the stubs into a temporary directory, then calls Health, Ingest, Search and Ask,
and exits non-zero if any answer is wrong. With --ca it speaks TLS trusting that CA; with
--api-key it sends `authorization: Bearer <key>` on every call (and checks that a call
without it is refused). The README's Python example is this file.
"""

import argparse
import json
import os
import pathlib
import sys
import tempfile

import grpc
from grpc_tools import protoc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = pathlib.Path(__file__).resolve().parents[2]


def generate_stubs(out_dir):
    proto_root = REPO / "proto"
    files = sorted(str(path) for path in (proto_root / "quarry" / "v1").glob("*.proto"))
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    status = protoc.main(
        ["protoc", f"-I{proto_root}", f"-I{include}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", *files]
    )
    if status != 0:
        sys.exit(f"protoc failed with {status}")
    sys.path.insert(0, str(out_dir))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", default="127.0.0.1:7700")
    parser.add_argument("--ca", help="CA certificate (PEM) of a TLS gateway")
    parser.add_argument("--api-key", help="an API key from `quarry keys create`")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out_dir:
        generate_stubs(out_dir)
        from quarry.v1 import common_pb2, quarry_pb2, quarry_pb2_grpc

        if args.ca:
            tls = grpc.ssl_channel_credentials(root_certificates=pathlib.Path(args.ca).read_bytes())
            if args.api_key:
                # Sent as `authorization: Bearer <key>` on every call.
                tls = grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials(args.api_key))
            channel = grpc.secure_channel(args.addr, tls)
        else:
            channel = grpc.insecure_channel(args.addr)
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="quarry.v1.Quarry"), timeout=10
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING, health

        quarry = quarry_pb2_grpc.QuarryStub(channel)
        if args.api_key:
            keyless = grpc.secure_channel(args.addr, grpc.ssl_channel_credentials(pathlib.Path(args.ca).read_bytes()))
            try:
                quarry_pb2_grpc.QuarryStub(keyless).Search(quarry_pb2.SearchRequest(query="bird", k=1), timeout=30)
                sys.exit("a call without an API key was served")
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
        documents = [
            common_pb2.Document(id="py-kiwi", title="Kiwi", text="The kiwi is a flightless bird native to New Zealand.",
                                metadata_json=json.dumps({"kind": "bird", "legs": 2})),
            common_pb2.Document(id="py-llama", title="Llama", text="The llama is a domesticated camelid from the Andes of South America.",
                                metadata_json=json.dumps({"kind": "mammal", "legs": 4})),
            common_pb2.Document(id="py-bad", title="Bad", text=""),
        ]
        summary = quarry.Ingest(iter(documents), timeout=30)
        assert summary.accepted == 2 and summary.rejected == 1, summary
        assert summary.errors[0].field == "text", summary

        hits = quarry.Search(quarry_pb2.SearchRequest(query="flightless bird", k=3, mode=common_pb2.SEARCH_MODE_KEYWORD), timeout=30)
        assert hits.hits[0].doc_id == "py-kiwi", hits

        # A metadata filter, applied before ranking.
        four_legs = common_pb2.Filter(field=common_pb2.FieldCondition(
            field="legs", range=common_pb2.FilterRange(gte=common_pb2.FilterValue(number=3))))
        filtered = quarry.Search(quarry_pb2.SearchRequest(query="the", k=3, mode=common_pb2.SEARCH_MODE_KEYWORD,
                                                          filter=four_legs), timeout=30)
        assert [hit.doc_id for hit in filtered.hits] == ["py-llama"], filtered
        assert json.loads(filtered.hits[0].metadata_json)["kind"] == "mammal", filtered

        answer = quarry.Ask(quarry_pb2.AskRequest(question="Where do llamas come from?", k=2), timeout=30)
        assert "py-llama" in answer.sources, answer
        again = quarry.Ask(quarry_pb2.AskRequest(question="Where do llamas come from?", k=2), timeout=30)
        assert again.cached and again.answer == answer.answer, again
        print(answer.answer)
        print("sources:", list(answer.sources), "confidence: %.2f" % answer.confidence)

        try:
            quarry.Search(quarry_pb2.SearchRequest(query=" ", k=3), timeout=30)
            sys.exit("a blank query was accepted")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
            assert error.details().startswith("query"), error.details()
    print("python client: ok")


if __name__ == "__main__":
    main()
