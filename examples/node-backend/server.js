// A business backend behind weapp, in Node: what a team writes instead of express routes next
// to `req.session`. The gateway forwards /api/... here (WEAPP_ROUTES_FILE) with the user's
// identity; this service
//
//   * trusts no header by itself: it verifies the signed assertion (X-Weapp-Assertion, an
//     ES256 JWT) with `jose` against the gateway's JWKS, and takes the user from its claims;
//   * answers the user (GET /api/hello);
//   * pushes to the user's open WebSockets through session-svc's gRPC API, with its own API
//     key (POST /api/push; the key needs the `push` scope);
//   * answers relayed WebSocket messages (POST /api/ws, for WEAPP_WS_RELAY_URL).
//
// Environment:
//   PORT                  listen port                        (default 9000)
//   WEAPP_JWKS_URL        the gateway's JWKS                 (default http://127.0.0.1:8765/.well-known/jwks.json)
//   WEAPP_ISSUER          the assertions' issuer             (default weapp)
//   WEAPP_SESSION_SVC     session-svc's gRPC address         (default 127.0.0.1:50051)
//   WEAPP_API_KEY_FILE    file holding this service's key    (no push without it)
'use strict';

const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { createRemoteJWKSet, jwtVerify } = require('jose');

const port = Number(process.env.PORT || 9000);
const jwksUrl = process.env.WEAPP_JWKS_URL || 'http://127.0.0.1:8765/.well-known/jwks.json';
const issuer = process.env.WEAPP_ISSUER || 'weapp';
const sessionSvc = process.env.WEAPP_SESSION_SVC || '127.0.0.1:50051';
const keyFile = process.env.WEAPP_API_KEY_FILE;

// Fetched once and cached; fetched again when a token names a key id it does not know yet
// (key rotation), at most every 30 s.
const jwks = createRemoteJWKSet(new URL(jwksUrl), { cooldownDuration: 30_000 });

const proto = protoLoader.loadSync(
  path.join(__dirname, '../../proto/weapp/session/v1/session.proto'),
  { keepCase: false, longs: Number, defaults: true, oneofs: true },
);
const { SessionService } = grpc.loadPackageDefinition(proto).weapp.session.v1;
const sessions = new SessionService(sessionSvc, grpc.credentials.createInsecure());
const apiKey = keyFile ? fs.readFileSync(keyFile, 'utf8').trim() : null;

/** The user of a request, from its verified assertion; throws when there is none or it is bad. */
async function verifiedUser(req) {
  const token = req.headers['x-weapp-assertion'];
  if (!token) throw new Error('no identity assertion');
  const { payload } = await jwtVerify(token, jwks, { issuer, algorithms: ['ES256'] });
  return payload; // sub = openId, user = the user object, sid = short session hash
}

function publish(openId, text) {
  return new Promise((resolve, reject) => {
    const metadata = new grpc.Metadata();
    if (apiKey) metadata.set('authorization', `Bearer ${apiKey}`);
    const deadline = new Date(Date.now() + 3000);
    sessions.publish({ message: { openId, text } }, metadata, { deadline }, (err, answer) =>
      err ? reject(err) : resolve(answer),
    );
  });
}

function readBody(req, limit = 64 * 1024) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > limit) reject(new Error('body too large'));
      else chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function send(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

const server = http.createServer(async (req, res) => {
  let claims;
  try {
    claims = await verifiedUser(req);
  } catch (err) {
    return send(res, 401, { error: 'identity not verified', reason: err.code || err.message });
  }
  const url = new URL(req.url, 'http://localhost');
  try {
    if (req.method === 'GET' && url.pathname === '/api/hello') {
      const name = (claims.user && claims.user.nickName) || claims.sub;
      return send(res, 200, { hello: name, openId: claims.sub, session: claims.sid });
    }
    if (req.method === 'POST' && url.pathname === '/api/push') {
      const text = await readBody(req);
      const answer = await publish(claims.sub, text);
      return send(res, 200, { sockets: answer.sockets });
    }
    if (req.method === 'POST' && url.pathname === '/api/ws') {
      const text = await readBody(req);
      res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' });
      return res.end(`${claims.sub} said: ${text}`);
    }
    return send(res, 404, { error: 'no such route' });
  } catch (err) {
    console.error('request failed:', err.code || '', err.details || err.message);
    return send(res, 502, { error: 'failed', reason: err.details || err.message });
  }
});

server.listen(port, '127.0.0.1', () => {
  console.log(`example backend listening on 127.0.0.1:${port}`);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
