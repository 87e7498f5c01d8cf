// The tutorial's server: express + wafer-node-session (+ connect-mongo) + ws, one process.
//   APP_ID, APP_SECRET   the mini-program (the sandbox's app)
//   PORT                 HTTP port (default 3000)
//   MONGODB_URI          sessions in MongoDB via connect-mongo; default: express-session's MemoryStore
'use strict';

const http = require('http');
const express = require('express');
const waferSession = require('wafer-node-session');
const WebSocket = require('ws');

const appId = process.env.APP_ID;
const appSecret = process.env.APP_SECRET;
if (!appId || !appSecret) {
  throw new Error('set APP_ID and APP_SECRET');
}

let store;
if (process.env.MONGODB_URI) {
  const MongoStore = require('connect-mongo')(waferSession);
  store = new MongoStore({ url: process.env.MONGODB_URI });
}

const sessionMiddleware = waferSession({ appId, appSecret, loginPath: '/login', store });

const app = express();
app.use(sessionMiddleware);
// The business route of the forwarding benchmark, answered here as the tutorial's app would:
// in-process, behind the session middleware.
app.get('/api/hello', (request, response) => {
  if (!request.session) return response.status(401).json({ error: 'ERR_INVALID_SESSION' });
  response.send('hello');
});
app.use('/me', (request, response) => {
  response.json(request.session ? request.session.userInfo : { noBody: true });
});
app.use((request, response) => {
  response.send('Response from express');
});

const server = http.createServer(app);
const wss = new WebSocket.Server({ server, path: '/ws' });
wss.on('connection', (ws, request) => {
  // As the tutorial does: run the session middleware on the upgrade request.
  sessionMiddleware(request, null, () => {
    if (!request.session) {
      ws.send(JSON.stringify(request.sessionError || { error: 'ERR_INVALID_SESSION' }));
      ws.close(1008, 'invalid session');
      return;
    }
    const name = request.session.userInfo.nickName || request.session.userInfo.openId;
    ws.send(`Server: 恭喜，${name}`);
    ws.on('message', (message) => ws.send(`Server: Received(${message})`));
  });
});

server.listen(Number(process.env.PORT || 3000), () => {
  console.log(`node reference listening on ${server.address().port}`);
});
