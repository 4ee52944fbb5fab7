#!/usr/bin/env python3
"""Calls clerk-introspect: Verify, then GetClaims, for one token read from stdin.

    printf '%s' "$TOKEN" | python3 client.py --target localhost:50051

The token comes on stdin so that it never shows in `ps` or shell history.
UNAVAILABLE (server unreachable, or the issuer's keys not loaded) is retried
with exponential backoff; an invalid token is reported with its reason.

Exit codes: 0 valid, 1 invalid token, 2 could not get an answer, 64 usage.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

# Stubs made by ./generate.sh from proto/introspect/v1/introspect.proto.
sys.path.insert(0, str(Path(__file__).resolve().parent / "generated"))
try:
    from introspect.v1 import introspect_pb2, introspect_pb2_grpc
except ImportError:
    sys.exit("client.py: the generated stubs are missing; run ./generate.sh first")

EXIT_VALID, EXIT_INVALID, EXIT_NO_ANSWER, EXIT_USAGE = 0, 1, 2, 64


class NoAnswer(Exception):
    """The server could not answer (after retries, for UNAVAILABLE)."""


def call_with_retry(name, rpc, request, *, attempts, deadline, backoff=0.2, max_backoff=2.0):
    """Calls `rpc`, retrying UNAVAILABLE up to `attempts` times in all, with
    exponential backoff and full jitter. Any other error is raised at once."""
    for attempt in range(1, attempts + 1):
        try:
            return rpc(request, timeout=deadline)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            if attempt == attempts:
                raise NoAnswer(f"{name}: UNAVAILABLE after {attempts} attempts: {err.details()}") from err
            delay = random.uniform(0, min(max_backoff, backoff * 2 ** (attempt - 1)))
            print(
                f"{name}: UNAVAILABLE (attempt {attempt} of {attempts}): {err.details()}; retrying in {delay:.2f} s",
                file=sys.stderr,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


def rejection_reason(err: grpc.RpcError) -> tuple[str, str, str]:
    """The reason of an UNAUTHENTICATED error, where it was read, and the
    sentence: from the google.rpc.ErrorInfo in the grpc-status-details-bin
    trailer when present, else from the "REASON_X: sentence" message."""
    prefix, _, sentence = (err.details() or "").partition(": ")
    status = rpc_status.from_call(err)
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason, f"ErrorInfo, domain {info.domain}", sentence
    return prefix, "message", sentence


def main() -> int:
    parser = argparse.ArgumentParser(description="Verify a Clerk session token with clerk-introspect.")
    parser.add_argument("--target", default="localhost:50051", help="server address (default: %(default)s)")
    parser.add_argument("--attempts", type=int, default=4, help="attempts on UNAVAILABLE (default: %(default)s)")
    parser.add_argument("--deadline", type=float, default=2.0, help="seconds per attempt (default: %(default)s)")
    args = parser.parse_args()
    token = sys.stdin.read().strip()
    if not token:
        print("client.py: no token on stdin; use: printf '%s' \"$TOKEN\" | python3 client.py", file=sys.stderr)
        return EXIT_USAGE

    with grpc.insecure_channel(args.target) as channel:
        stub = introspect_pb2_grpc.TokenIntrospectionStub(channel)
        call = dict(attempts=max(1, args.attempts), deadline=args.deadline)
        try:
            answer = call_with_retry("Verify", stub.Verify, introspect_pb2.VerifyRequest(token=token), **call)
            if answer.valid:
                who = answer.identity
                print(f"Verify: valid: subject={who.subject} session={who.session_id} role={who.role}")
                print(f"  issuer={who.issuer} expires={who.expires_at.ToJsonString()} key={who.key_id} alg={who.algorithm}")
            else:
                reason = introspect_pb2.Reason.Name(answer.reason)
                print(f"Verify: invalid: {reason}: {answer.message}")

            try:
                claims = call_with_retry("GetClaims", stub.GetClaims, introspect_pb2.GetClaimsRequest(token=token), **call)
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.UNAUTHENTICATED:
                    raise
                reason, source, sentence = rejection_reason(err)
                print(f"GetClaims: UNAUTHENTICATED: {reason} ({source}): {sentence}")
                return EXIT_INVALID
            print(f"GetClaims: {len(claims.claims.fields)} claims: {claims.claims_json}")
            return EXIT_VALID if answer.valid else EXIT_INVALID
        except NoAnswer as err:
            print(err, file=sys.stderr)
            return EXIT_NO_ANSWER
        except grpc.RpcError as err:
            print(f"{err.code().name}: {err.details()}", file=sys.stderr)
            return EXIT_NO_ANSWER


if __name__ == "__main__":
    sys.exit(main())
