// The independent verdict for tests/differential.rs: panva's jose, pinned in
// package-lock.json, as one long-lived process.
//
// stdin, one JSON value per line:
//   first   {"jwks": {...}, "issuer": "...", "algorithms": [...],
//            "clockTolerance": 5, "now": <Unix seconds>,
//            "requiredClaims": ["exp", "sub"]}
//   then    "<token>"            (a JSON string: tokens may hold any character)
// stdout, one line per token, in order:
//   {"valid": true} or {"valid": false, "code": "ERR_..."}
// (jose's messages are not sent: a JSON.parse error quotes the token's text,
// lone surrogates included, which is not UTF-8 JSON.)
//
// The policy is what jose can be told: exactly these algorithms, this
// issuer, this clock tolerance, these required claims, and the time fixed at
// "now". Keys come from the JWKS by kid and algorithm (createLocalJWKSet);
// nothing in a token can name another key.
import { createInterface } from 'node:readline'
import { createLocalJWKSet, jwtVerify } from 'jose'

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity })
let options
let keys

for await (const line of lines) {
  if (line === '') continue
  if (options === undefined) {
    const config = JSON.parse(line)
    keys = createLocalJWKSet(config.jwks)
    options = {
      algorithms: config.algorithms,
      issuer: config.issuer,
      clockTolerance: config.clockTolerance,
      currentDate: new Date(config.now * 1000),
      requiredClaims: config.requiredClaims,
    }
    process.stdout.write('{"ready":true}\n')
    continue
  }
  let answer
  try {
    await jwtVerify(JSON.parse(line), keys, options)
    answer = { valid: true }
  } catch (err) {
    answer = { valid: false, code: String(err?.code ?? err?.name ?? 'ERR_UNEXPECTED') }
  }
  process.stdout.write(JSON.stringify(answer) + '\n')
}
