#!/usr/bin/env node
// A small HTTP service that asks clerk-introspect before it touches Postgres,
// then lets Postgres row-level security do the rest, the way Supabase does.
// The same flow as ../python/service.py, with @grpc/grpc-js and pg.
//
//   node service.js --introspect localhost:50051 \
//     --database 'postgresql://authenticator@localhost:5432/postgres' --listen 127.0.0.1:8080
//
// For every request with `Authorization: Bearer <Clerk session token>`:
// 1. GetClaims on clerk-introspect (only role "authenticated" accepted);
// 2. refused: the answer clerk-introspect's Envoy ext_authz server gives (401
//    invalid_token or 403 insufficient_scope with the reason, 503 when no
//    decision was possible), and the database is never touched;
// 3. valid: one transaction doing what PostgREST does with a verified token:
//    SET LOCAL ROLE <role claim>, then
//    set_config('request.jwt.claims', <the signed payload>, true), then the
//    route's query, whose rows row-level security filters (schema.sql).
//
// Routes: GET /whoami, GET /notes, POST /notes {"body"}, GET /org/notes,
// POST /org/notes {"body"} (organization admins only). The token is never
// logged or echoed.
'use strict';

const http = require('node:http');
const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const pg = require('pg');

const APPLICATION_NAME = 'supabase-example-node';
// The only role a user's request may run as: never service_role (it bypasses
// row-level security), whatever the server's configuration allows.
const USER_ROLES = ['authenticated'];
const MAX_BODY_BYTES = 16 * 1024;
const MAX_NOTE_CHARS = 2000;
const MAX_DESCRIPTION = 300;

// Reasons for a token that verified but that a policy refuses: 403
// insufficient_scope. Every other reason is 401 invalid_token. The same split
// as clerk-introspect's ext_authz server (src/service/respond/check.rs).
const FORBIDDEN = new Set([
  'REASON_AUTHORIZED_PARTY_MISMATCH',
  'REASON_AUDIENCE_MISMATCH',
  'REASON_ROLE_NOT_ALLOWED',
  'REASON_MISSING_ROLE',
  'REASON_TOKEN_TYPE_NOT_ACCEPTED',
]);
const MISSING_TOKEN = [
  'REASON_MALFORMED',
  'No session token was sent: expected an Authorization: Bearer <token> header holding the Clerk session token.',
];

// Each route's one statement. The result is one JSON text built by Postgres,
// sent as it is: JSON.parse would round integers above 2^53.
const NOTE = "json_build_object('id', id, 'user_id', user_id, 'body', body)";
const ORG_NOTE =
  "json_build_object('id', id, 'organization_id', organization_id, 'author_id', author_id, 'body', body)";
const ROUTES = {
  'GET /whoami': [
    "select json_build_object('current_user', current_user, 'sub', auth.jwt()->>'sub'," +
      " 'organization_id', coalesce(auth.jwt()->>'org_id', auth.jwt()->'o'->>'id'), 'jwt', auth.jwt())::text as result",
    false,
  ],
  'GET /notes': [`select coalesce(json_agg(${NOTE} order by id), '[]')::text as result from public.notes`, false],
  'POST /notes': [`insert into public.notes (body) values ($1) returning ${NOTE}::text as result`, true],
  'GET /org/notes': [
    `select coalesce(json_agg(${ORG_NOTE} order by id), '[]')::text as result from public.org_notes`,
    false,
  ],
  'POST /org/notes': [`insert into public.org_notes (body) values ($1) returning ${ORG_NOTE}::text as result`, true],
};

class Refusal extends Error {
  constructor(status, body, headers = {}) {
    super(body.message || body.error);
    Object.assign(this, { status, body, headers });
  }
}

// The refusal for an invalid token, as the ext_authz server answers it.
function refuse(reason, message) {
  const [status, error] = FORBIDDEN.has(reason) ? [403, 'insufficient_scope'] : [401, 'invalid_token'];
  return new Refusal(
    status,
    { reason, message },
    { 'www-authenticate': wwwAuthenticate(error, message), 'x-introspect-reason': reason },
  );
}

// clerk-introspect could not decide (keys not loaded, or unreachable): 503.
function noDecision(message) {
  return new Refusal(503, { reason: 'UNAVAILABLE', message }, { 'x-introspect-reason': 'UNAVAILABLE', 'retry-after': '5' });
}

// RFC 6750: printable ASCII only, `"` as `'`, `\` as `/`, at most 300 characters.
function wwwAuthenticate(error, description) {
  let clean = '';
  for (const c of description) {
    if (c === '"') clean += "'";
    else if (c === '\\') clean += '/';
    else if (c >= ' ' && c <= '~') clean += c;
  }
  if (clean.length > MAX_DESCRIPTION) clean = `${clean.slice(0, MAX_DESCRIPTION - 3)}...`;
  return `Bearer error="${error}", error_description="${clean}"`;
}

// The token of the one `Authorization: Bearer <token>` header (scheme in any
// case). Node joins repeated Authorization headers with ", ".
function bearerToken(header) {
  const value = (header || '').trim();
  const space = value.search(/[ \t]/);
  const scheme = space < 0 ? value : value.slice(0, space);
  const token = space < 0 ? '' : value.slice(space).trim();
  if (!token || scheme.toLowerCase() !== 'bearer') throw refuse(...MISSING_TOKEN);
  if (token.includes(',')) {
    throw refuse(
      'REASON_MALFORMED',
      'The request carries more than one authorization header value; send exactly one bearer token.',
    );
  }
  return token;
}

// The reason and the sentence of an UNAUTHENTICATED GetClaims: its message is
// "REASON_X: sentence" (the contract). The same name is in the
// google.rpc.ErrorInfo of grpc-status-details-bin; ../../clients/node/client.js
// shows how to read it from there.
function rejection(err) {
  const message = err.details || '';
  const colon = message.indexOf(': ');
  return colon >= 0 ? [message.slice(0, colon), message.slice(colon + 2)] : ['REASON_UNSPECIFIED', message];
}

function introspection(target, deadlineSeconds, protoRoot) {
  const definition = protoLoader.loadSync('introspect/v1/introspect.proto', {
    includeDirs: [protoRoot],
    keepCase: true,
    enums: String,
    longs: String,
    defaults: true,
  });
  const Service = grpc.loadPackageDefinition(definition).introspect.v1.TokenIntrospection;
  const client = new Service(target, grpc.credentials.createInsecure());
  return (token) =>
    new Promise((resolve, reject) => {
      const deadline = new Date(Date.now() + deadlineSeconds * 1000);
      client.GetClaims({ token, expect: { roles: USER_ROLES } }, { deadline }, (err, answer) => {
        if (!err) {
          // claims_json is the payload exactly as it was signed: forward the
          // text, never a re-serialised object.
          resolve({ role: answer.identity.role, claimsJson: answer.claims_json });
        } else if (err.code === grpc.status.UNAUTHENTICATED) {
          reject(refuse(...rejection(err)));
        } else {
          reject(noDecision(`clerk-introspect answered ${grpc.status[err.code] ?? err.code}: ${err.details}`));
        }
      });
    });
}

// Runs `statement` as the token's role, with its claims, in one transaction.
async function runAs(pool, who, statement, params) {
  const client = await pool.connect();
  let broken;
  try {
    await client.query('begin');
    // What PostgREST does with a verified token, in this order, local to the
    // transaction so nothing outlives it on the pooled connection.
    await client.query(`set local role ${client.escapeIdentifier(who.role)}`);
    await client.query("select set_config('request.jwt.claims', $1, true)", [who.claimsJson]);
    const { rows } = await client.query(statement, params);
    await client.query('commit');
    return rows[0].result;
  } catch (err) {
    broken = await client.query('rollback').then(
      () => undefined,
      (e) => e,
    );
    throw err;
  } finally {
    client.release(broken);
  }
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new Refusal(413, { error: `the body is over ${MAX_BODY_BYTES} bytes` }));
        req.destroy();
      } else {
        chunks.push(chunk);
      }
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function noteBody(raw) {
  let note;
  try {
    note = JSON.parse(raw.toString('utf8'))?.body;
  } catch {
    note = undefined;
  }
  if (typeof note !== 'string' || note.length === 0 || [...note].length > MAX_NOTE_CHARS) {
    throw new Refusal(400, { error: `expected a JSON object {"body": "<1 to ${MAX_NOTE_CHARS} characters>"}` });
  }
  return note;
}

function handler(claimsOf, pool) {
  return async (req, res) => {
    let status = 500;
    let payload = JSON.stringify({ error: 'internal error' });
    let headers = {};
    try {
      const route = ROUTES[`${req.method} ${req.url.split('?')[0]}`];
      if (!route) throw new Refusal(404, { error: `no route ${req.method} ${req.url}` });
      const [statement, takesBody] = route;
      if (Number(req.headers['content-length'] || 0) > MAX_BODY_BYTES) {
        throw new Refusal(413, { error: `the body is over ${MAX_BODY_BYTES} bytes` }, { connection: 'close' });
      }
      const raw = await readBody(req);
      const who = await claimsOf(bearerToken(req.headers.authorization));
      const params = takesBody ? [noteBody(raw)] : [];
      payload = await runAs(pool, who, statement, params);
      status = req.method === 'POST' ? 201 : 200;
    } catch (err) {
      if (err instanceof Refusal) {
        [status, payload, headers] = [err.status, JSON.stringify(err.body), err.headers];
      } else if (err.code === '42501') {
        // Row-level security refused the row: 403, as PostgREST answers.
        [status, payload] = [403, JSON.stringify({ error: err.message, code: err.code })];
      } else if (/^[0-9A-Z]{5}$/.test(err.code ?? '') && !err.code.startsWith('08')) {
        // An SQLSTATE other than a connection failure (class 08).
        console.error(`database error ${err.code}`);
        [status, payload] = [500, JSON.stringify({ error: 'database error', code: err.code })];
      } else {
        console.error(`database unavailable: ${err.code ?? err.message}`);
        [status, payload] = [503, JSON.stringify({ error: 'the database is not available' })];
      }
    }
    res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', ...headers });
    res.end(payload);
    // The request line only: the token travels in a header, never logged.
    console.error(`${req.method} ${req.url} ${status}`);
  };
}

function main() {
  const { values } = parseArgs({
    options: {
      introspect: { type: 'string', default: 'localhost:50051' },
      database: { type: 'string' },
      listen: { type: 'string', default: '127.0.0.1:8080' },
      deadline: { type: 'string', default: '2' },
      proto: { type: 'string', default: path.join(__dirname, '..', '..', '..', 'proto') },
    },
  });
  if (!values.database) {
    console.error('service.js: --database <connection string of the authenticator role> is required');
    return 64;
  }
  const claimsOf = introspection(values.introspect, Number.parseFloat(values.deadline) || 2, values.proto);
  const pool = new pg.Pool({
    connectionString: values.database,
    application_name: APPLICATION_NAME,
    max: 4,
    connectionTimeoutMillis: 5000,
  });
  pool.on('error', (err) => console.error(`idle database connection failed: ${err.code ?? err.message}`));
  const colon = values.listen.lastIndexOf(':');
  const host = values.listen.slice(0, colon).replace(/^\[|\]$/g, '');
  const server = http.createServer(handler(claimsOf, pool));
  server.listen(Number(values.listen.slice(colon + 1)), host, () => {
    console.log(`listening on http://${values.listen.slice(0, colon)}:${server.address().port}`);
  });
  return undefined;
}

const code = main();
if (code !== undefined) process.exitCode = code;
