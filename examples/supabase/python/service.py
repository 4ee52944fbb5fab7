#!/usr/bin/env python3
"""A small HTTP service that asks clerk-introspect before it touches Postgres,
then lets Postgres row-level security do the rest, the way Supabase does.

    python3 service.py --introspect localhost:50051 \
        --database 'postgresql://authenticator@localhost:5432/postgres' --listen 127.0.0.1:8080

For every request with `Authorization: Bearer <Clerk session token>`:

1. `GetClaims` on clerk-introspect (only role "authenticated" accepted).
2. Refused: the answer clerk-introspect's Envoy ext_authz server gives
   (401 `invalid_token` or 403 `insufficient_scope` with the reason, 503 when
   no decision was possible), and the database is never touched.
3. Valid: one transaction that does what PostgREST does with a verified
   token: `SET LOCAL ROLE <role claim>`, then
   `set_config('request.jwt.claims', <the signed payload>, true)`, then the
   route's query, whose rows row-level security filters (schema.sql).

Routes (JSON in and out):
    GET  /whoami      what Postgres sees: current_user, auth.jwt()
    GET  /notes       the caller's notes
    POST /notes       {"body": "..."}: adds a note for the caller
    GET  /org/notes   the active organization's notes
    POST /org/notes   {"body": "..."}: adds one (organization admins only)

The token is never logged or echoed. Needs the stubs that
examples/clients/python/generate.sh makes (ci/tools/setup.sh runs it).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import psycopg
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

STUBS = Path(__file__).resolve().parents[2] / "clients" / "python" / "generated"
sys.path.insert(0, str(STUBS))
try:
    from introspect.v1 import introspect_pb2, introspect_pb2_grpc
except ImportError:
    sys.exit(f"service.py: the generated stubs are missing from {STUBS}; run examples/clients/python/generate.sh")

APPLICATION_NAME = "supabase-example-python"
# The only role a user's request may run as: never service_role (it bypasses
# row-level security), whatever the server's configuration allows.
USER_ROLES = ["authenticated"]
MAX_BODY_BYTES = 16 * 1024
MAX_NOTE_CHARS = 2000

# Reasons for a token that verified but that a policy refuses: 403
# insufficient_scope. Every other reason is 401 invalid_token. The same split
# as clerk-introspect's ext_authz server (src/service/respond/check.rs).
FORBIDDEN = {
    "REASON_AUTHORIZED_PARTY_MISMATCH",
    "REASON_AUDIENCE_MISMATCH",
    "REASON_ROLE_NOT_ALLOWED",
    "REASON_MISSING_ROLE",
    "REASON_TOKEN_TYPE_NOT_ACCEPTED",
}
MISSING_TOKEN = (
    "REASON_MALFORMED",
    "No session token was sent: expected an Authorization: Bearer <token> header holding the Clerk session token.",
)
MAX_DESCRIPTION = 300

# Each route's one statement. The result is one JSON text built by Postgres,
# sent as it is: nothing here re-encodes what Postgres returned.
NOTE = "json_build_object('id', id, 'user_id', user_id, 'body', body)"
ORG_NOTE = "json_build_object('id', id, 'organization_id', organization_id, 'author_id', author_id, 'body', body)"
ROUTES = {
    ("GET", "/whoami"): (
        "select json_build_object('current_user', current_user, 'sub', auth.jwt()->>'sub',"
        " 'organization_id', coalesce(auth.jwt()->>'org_id', auth.jwt()->'o'->>'id'), 'jwt', auth.jwt())::text",
        False,
    ),
    ("GET", "/notes"): (f"select coalesce(json_agg({NOTE} order by id), '[]')::text from public.notes", False),
    ("POST", "/notes"): (f"insert into public.notes (body) values (%s) returning {NOTE}::text", True),
    ("GET", "/org/notes"): (f"select coalesce(json_agg({ORG_NOTE} order by id), '[]')::text from public.org_notes", False),
    ("POST", "/org/notes"): (f"insert into public.org_notes (body) values (%s) returning {ORG_NOTE}::text", True),
}


@dataclass
class Refusal(Exception):
    """An HTTP answer other than success: status, JSON body, extra headers."""

    status: int
    body: dict
    headers: dict


def refuse(reason: str, message: str) -> Refusal:
    """The refusal for an invalid token, as the ext_authz server answers it."""
    status, error = (403, "insufficient_scope") if reason in FORBIDDEN else (401, "invalid_token")
    return Refusal(
        status,
        {"reason": reason, "message": message},
        {"WWW-Authenticate": www_authenticate(error, message), "x-introspect-reason": reason},
    )


def no_decision(message: str) -> Refusal:
    """clerk-introspect could not decide (its keys are not loaded, or it is
    unreachable): 503, fail closed."""
    return Refusal(503, {"reason": "UNAVAILABLE", "message": message}, {"x-introspect-reason": "UNAVAILABLE", "Retry-After": "5"})


def www_authenticate(error: str, description: str) -> str:
    """RFC 6750 `Bearer error=..., error_description=...`: printable ASCII
    only, `"` as `'`, `\\` as `/`, at most 300 characters."""
    clean = "".join(
        "'" if c == '"' else "/" if c == "\\" else c for c in description if c in ('"', "\\") or " " <= c <= "~"
    )
    if len(clean) > MAX_DESCRIPTION:
        clean = clean[: MAX_DESCRIPTION - 3] + "..."
    return f'Bearer error="{error}", error_description="{clean}"'


def bearer_token(values: list[str]) -> str:
    """The token of the one `Authorization: Bearer <token>` header (scheme
    in any case); a refusal when there is none or more than one."""
    values = [v for v in values if v.strip()]
    scheme, token = (values[0].split(None, 1) + [""])[:2] if values else ("", "")
    token = token.strip(" \t")
    if not token or scheme.lower() != "bearer":
        raise refuse(*MISSING_TOKEN)
    if len(values) > 1 or "," in token:
        raise refuse(
            "REASON_MALFORMED",
            "The request carries more than one authorization header value; send exactly one bearer token.",
        )
    return token


@dataclass
class Verified:
    role: str
    claims_json: str


class Introspection:
    """GetClaims over one channel kept for the life of the process."""

    def __init__(self, target: str, deadline: float):
        self.channel = grpc.insecure_channel(target)
        self.stub = introspect_pb2_grpc.TokenIntrospectionStub(self.channel)
        self.deadline = deadline

    def claims(self, token: str) -> Verified:
        request = introspect_pb2.GetClaimsRequest(token=token, expect=introspect_pb2.Expectations(roles=USER_ROLES))
        try:
            answer = self.stub.GetClaims(request, timeout=self.deadline)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise refuse(*rejection(err)) from None
            raise no_decision(f"clerk-introspect answered {err.code().name}: {err.details()}") from None
        # claims_json is the payload exactly as it was signed: integers stay
        # integers (the claims Struct would have made them doubles).
        return Verified(role=answer.identity.role, claims_json=answer.claims_json)


def rejection(err: grpc.RpcError) -> tuple[str, str]:
    """The reason (from the google.rpc.ErrorInfo) and the sentence of an
    UNAUTHENTICATED GetClaims."""
    prefix, _, sentence = (err.details() or "").partition(": ")
    status = rpc_status.from_call(err)
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason, sentence
    return prefix, sentence


class Database:
    """Runs each request's statement as the token's role, with its claims."""

    def __init__(self, conninfo: str):
        self.pool = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=4,
            timeout=5,
            kwargs={"autocommit": True, "application_name": APPLICATION_NAME},
            name=APPLICATION_NAME,
        )

    def run(self, who: Verified, statement: str, params: tuple) -> str:
        with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            # What PostgREST does with a verified token, in this order, local
            # to the transaction so nothing outlives it on the pooled connection.
            cur.execute(sql.SQL("set local role {}").format(sql.Identifier(who.role)))
            cur.execute("select set_config('request.jwt.claims', %s, true)", (who.claims_json,))
            cur.execute(statement, params)
            return cur.fetchone()[0]


def note_body(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        body = None
    note = body.get("body") if isinstance(body, dict) else None
    if not isinstance(note, str) or not 0 < len(note) <= MAX_NOTE_CHARS:
        raise Refusal(400, {"error": f'expected a JSON object {{"body": "<1 to {MAX_NOTE_CHARS} characters>"}}'}, {})
    return note


class Handler(BaseHTTPRequestHandler):
    introspection: Introspection
    database: Database
    server_version = "supabase-example"

    def do_GET(self):
        self.handle_route("GET")

    def do_POST(self):
        self.handle_route("POST")

    def handle_route(self, method: str):
        status, body, headers = 500, {"error": "internal error"}, {}
        try:
            route = ROUTES.get((method, self.path.split("?", 1)[0]))
            if route is None:
                raise Refusal(404, {"error": f"no route {method} {self.path}"}, {})
            statement, takes_body = route
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES or length < 0:
                raise Refusal(413, {"error": f"the body is over {MAX_BODY_BYTES} bytes"}, {})
            raw = self.rfile.read(length) if length else b""
            token = bearer_token(self.headers.get_all("Authorization") or [])
            who = self.introspection.claims(token)
            params = (note_body(raw),) if takes_body else ()
            text = self.database.run(who, statement, params)
            self.reply(201 if method == "POST" else 200, text.encode(), {})
            return
        except Refusal as r:
            status, body, headers = r.status, r.body, r.headers
        except psycopg.errors.InsufficientPrivilege as e:
            # Row-level security refused the row (42501): 403, as PostgREST answers.
            status, body = 403, {"error": e.diag.message_primary, "code": e.sqlstate}
        except (psycopg.OperationalError, PoolTimeout) as e:
            self.log_message("database unavailable: %s", type(e).__name__)
            status, body = 503, {"error": "the database is not available"}
        except psycopg.Error as e:
            self.log_message("database error %s: %s", e.sqlstate, type(e).__name__)
            status, body = 500, {"error": "database error", "code": e.sqlstate}
        except ValueError:
            status, body = 400, {"error": "bad Content-Length"}
        self.reply(status, json.dumps(body).encode(), headers)

    def reply(self, status: int, payload: bytes, headers: dict):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-store")
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        # The request line only: the token travels in a header, never logged.
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description="Example service: clerk-introspect in front of Postgres RLS.")
    parser.add_argument("--introspect", default="localhost:50051", help="clerk-introspect address (default: %(default)s)")
    parser.add_argument("--database", required=True, help="libpq connection string of the authenticator role")
    parser.add_argument("--listen", default="127.0.0.1:8080", help="HTTP listen address (default: %(default)s)")
    parser.add_argument("--deadline", type=float, default=2.0, help="seconds per GetClaims (default: %(default)s)")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")

    Handler.introspection = Introspection(args.introspect, args.deadline)
    Handler.database = Database(args.database)
    server = ThreadingHTTPServer((host.strip("[]"), int(port)), Handler)
    print(f"listening on http://{args.listen.rpartition(':')[0]}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        Handler.database.pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
