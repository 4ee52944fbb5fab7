#!/usr/bin/env node
// Calls clerk-introspect: Verify, then GetClaims, for one token read from stdin.
//
//   printf '%s' "$TOKEN" | node client.js --target localhost:50051
//
// The token comes on stdin so that it never shows in `ps` or shell history.
// UNAVAILABLE (server unreachable, or the issuer's keys not loaded) is retried
// with exponential backoff; an invalid token is reported with its reason.
//
// Exit codes: 0 valid, 1 invalid token, 2 could not get an answer, 64 usage.
'use strict';

const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const EXIT_VALID = 0;
const EXIT_INVALID = 1;
const EXIT_NO_ANSWER = 2;
const EXIT_USAGE = 64;

// google.rpc.Status and google.rpc.ErrorInfo, to read the
// grpc-status-details-bin trailer that GetClaims sends with UNAUTHENTICATED.
const rpcTypes = protobuf.Root.fromJSON({
  nested: {
    google: {
      nested: {
        protobuf: { nested: { Any: { fields: { type_url: { type: 'string', id: 1 }, value: { type: 'bytes', id: 2 } } } } },
        rpc: {
          nested: {
            Status: {
              fields: {
                code: { type: 'int32', id: 1 },
                message: { type: 'string', id: 2 },
                details: { rule: 'repeated', type: 'google.protobuf.Any', id: 3 },
              },
            },
            ErrorInfo: {
              fields: {
                reason: { type: 'string', id: 1 },
                domain: { type: 'string', id: 2 },
                metadata: { keyType: 'string', type: 'string', id: 3 },
              },
            },
          },
        },
      },
    },
  },
});
const RpcStatus = rpcTypes.lookupType('google.rpc.Status');
const ErrorInfo = rpcTypes.lookupType('google.rpc.ErrorInfo');
const ERROR_INFO_URL = 'type.googleapis.com/google.rpc.ErrorInfo';

class NoAnswer extends Error {}

function loadService(protoRoot) {
  const definition = protoLoader.loadSync('introspect/v1/introspect.proto', {
    includeDirs: [protoRoot],
    keepCase: true,
    enums: String,
    longs: String,
    defaults: true,
  });
  return grpc.loadPackageDefinition(definition).introspect.v1.TokenIntrospection;
}

function unary(client, method, request, deadlineSeconds) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + deadlineSeconds * 1000);
    client[method](request, { deadline }, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Calls `method`, retrying UNAVAILABLE up to `attempts` times in all, with
// exponential backoff and full jitter. Any other error is thrown at once.
async function callWithRetry(client, method, request, { attempts, deadline, backoff = 0.2, maxBackoff = 2.0 }) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await unary(client, method, request, deadline);
    } catch (err) {
      if (err.code !== grpc.status.UNAVAILABLE) throw err;
      if (attempt >= attempts) {
        throw new NoAnswer(`${method}: UNAVAILABLE after ${attempts} attempts: ${err.details}`);
      }
      const delay = Math.random() * Math.min(maxBackoff, backoff * 2 ** (attempt - 1));
      console.error(
        `${method}: UNAVAILABLE (attempt ${attempt} of ${attempts}): ${err.details}; retrying in ${delay.toFixed(2)} s`,
      );
      await sleep(delay * 1000);
    }
  }
}

// The reason of an UNAUTHENTICATED error, where it was read, and the sentence:
// from the google.rpc.ErrorInfo in the grpc-status-details-bin trailer when
// present, else from the "REASON_X: sentence" message.
function rejectionReason(err) {
  const message = err.details || '';
  const colon = message.indexOf(': ');
  const [prefix, sentence] = colon >= 0 ? [message.slice(0, colon), message.slice(colon + 2)] : ['', message];
  for (const raw of err.metadata ? err.metadata.get('grpc-status-details-bin') : []) {
    const status = RpcStatus.decode(raw);
    for (const detail of status.details) {
      if (detail.type_url === ERROR_INFO_URL) {
        const info = ErrorInfo.decode(detail.value);
        return { reason: info.reason, source: `ErrorInfo, domain ${info.domain}`, sentence };
      }
    }
  }
  return { reason: prefix, source: 'message', sentence };
}

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8').trim();
}

async function main() {
  const { values } = parseArgs({
    options: {
      target: { type: 'string', default: 'localhost:50051' },
      attempts: { type: 'string', default: '4' },
      deadline: { type: 'string', default: '2' },
      proto: { type: 'string', default: path.join(__dirname, '..', '..', '..', 'proto') },
    },
  });
  const attempts = Math.max(1, Number.parseInt(values.attempts, 10) || 1);
  const deadline = Number.parseFloat(values.deadline) || 2;
  const token = await readStdin();
  if (!token) {
    console.error('client.js: no token on stdin; use: printf \'%s\' "$TOKEN" | node client.js');
    return EXIT_USAGE;
  }

  const TokenIntrospection = loadService(values.proto);
  const client = new TokenIntrospection(values.target, grpc.credentials.createInsecure());
  const call = { attempts, deadline };
  try {
    const answer = await callWithRetry(client, 'Verify', { token }, call);
    if (answer.valid) {
      const who = answer.identity;
      const expires = new Date(Number(who.expires_at.seconds) * 1000).toISOString();
      console.log(`Verify: valid: subject=${who.subject} session=${who.session_id} role=${who.role}`);
      console.log(`  issuer=${who.issuer} expires=${expires} key=${who.key_id} alg=${who.algorithm}`);
    } else {
      console.log(`Verify: invalid: ${answer.reason}: ${answer.message}`);
    }

    let claims;
    try {
      claims = await callWithRetry(client, 'GetClaims', { token }, call);
    } catch (err) {
      if (err.code !== grpc.status.UNAUTHENTICATED) throw err;
      const { reason, source, sentence } = rejectionReason(err);
      console.log(`GetClaims: UNAUTHENTICATED: ${reason} (${source}): ${sentence}`);
      return EXIT_INVALID;
    }
    console.log(`GetClaims: ${Object.keys(claims.claims.fields).length} claims: ${claims.claims_json}`);
    return answer.valid ? EXIT_VALID : EXIT_INVALID;
  } catch (err) {
    if (err instanceof NoAnswer) {
      console.error(err.message);
    } else {
      console.error(`${grpc.status[err.code] ?? err.code}: ${err.details ?? err.message}`);
    }
    return EXIT_NO_ANSWER;
  } finally {
    client.close();
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    console.error(`client.js: ${err.stack || err}`);
    process.exitCode = EXIT_NO_ANSWER;
  },
);
