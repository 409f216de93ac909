// interop-node: a small Node.js http2 origin for upkeep's interoperability suite
// (tests/interop/run): http2.createSecureServer with allowHTTP1, so one TLS port
// speaks h2 and HTTP/1.1 (ALPN). Only Node's own modules.
//
//   node --max-http-header-size=131072 server.js --cert FILE --key FILE [--idle-ms 120000] [--stats]
//
// Prints "stats 127.0.0.1:PORT" (with --stats: /stats in cleartext on a port of its own,
// whose connections are not counted) and then "listening 127.0.0.1:PORT" once it accepts
// connections. SIGHUP is a graceful
// reload: a new server generation takes the connections accepted from then on; the old
// one closes its HTTP/2 sessions gracefully (GOAWAY, streams in flight finish) and its
// HTTP/1.1 connections once they are idle. SIGTERM/SIGINT: exit.
//
// The endpoints are the same as the Go server's (servers/main.go):
//   /f/<size>  /echo?id=ID  /trailers[?cl=1]  /headers  /stats
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const http2 = require('http2');
const net = require('net');

function arg(name, dflt) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : dflt;
}
const cert = fs.readFileSync(arg('--cert'));
const key = fs.readFileSync(arg('--key'));
const idleMs = parseInt(arg('--idle-ms', '120000'), 10);

function pattern(size) {
  const lines = Math.ceil(size / 32);
  const parts = [];
  for (let i = 0; i < lines; i++) {
    parts.push(String(i * 32).padStart(10, '0') + ' upkeep-test-pattern.\n');
  }
  return Buffer.from(parts.join(''), 'latin1').subarray(0, size);
}
const patternCache = new Map();
function cachedPattern(size) {
  if (!patternCache.has(size)) patternCache.set(size, pattern(size));
  return patternCache.get(size);
}

const stats = { connections: 0, remotes: [], requests: 0, posts: {}, protos: {}, generation: 0 };

function handler(req, res) {
  stats.requests++;
  const proto = 'HTTP/' + req.httpVersion;
  stats.protos[proto] = (stats.protos[proto] || 0) + 1;
  const url = new URL(req.url, 'https://origin.test');
  const path = url.pathname;
  if (path.startsWith('/f/')) {
    const n = parseInt(path.slice(3), 10);
    if (!(n >= 0 && n <= 256 * 1024 * 1024)) { res.writeHead(400); res.end('bad size\n'); return; }
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(n) });
    // HTTP/2: streamed (see sendStreaming). HTTP/1.1: written at once; Node 20's HTTP/1 parser
    // fails a keep-alive connection with HPE_PAUSED ("request aborted mid-body") when the
    // next request's body arrives while a response written piecewise on 'drain' is still
    // flushing, which a client that reuses connections (upkeep) triggers at once.
    if (req.httpVersionMajor === 1) res.end(cachedPattern(n));
    else sendStreaming(res, cachedPattern(n));
  } else if (path === '/echo') {
    const chunks = [];
    let done = false;
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      done = true;
      const body = Buffer.concat(chunks);
      const id = url.searchParams.get('id');
      if (id) stats.posts[id] = (stats.posts[id] || 0) + 1;
      res.writeHead(200, {
        'content-type': 'application/octet-stream',
        'content-length': String(body.length),
        'x-request-transfer-encoding': req.headers['transfer-encoding'] || '',
        'x-request-content-length': req.headers['content-length'] || '',
      });
      res.end(body);
    });
    req.on('aborted', () => { if (!done) console.error('echo: request aborted mid-body'); });
  } else if (path === '/trailers') {
    const body = cachedPattern(10000);
    const sum = crypto.createHash('sha256').update(body).digest('hex');
    const head = { 'content-type': 'application/octet-stream', 'trailer': 'X-Trailer-One, X-Body-Sha256' };
    if (url.searchParams.get('cl') === '1') head['content-length'] = String(body.length);
    res.writeHead(200, head);
    res.write(body.subarray(0, 5000));
    res.write(body.subarray(5000));
    res.addTrailers({ 'X-Trailer-One': 'one', 'X-Body-Sha256': sum });
    res.end();
  } else if (path === '/headers') {
    const big = req.headers['x-big'] || '';
    let many = 0;
    for (const k of Object.keys(req.headers)) if (k.startsWith('x-many-')) many++;
    const head = { 'content-type': 'text/plain', 'x-big': 'b'.repeat(16384), 'x-echo-big': big };
    for (let i = 0; i < 100; i++) head['x-many-' + String(i).padStart(3, '0')] = 'value-' + String(i).padStart(3, '0');
    res.writeHead(200, head);
    res.end(`big=${big.length} many=${many}`);
  } else if (path === '/stats') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(stats));
  } else {
    res.writeHead(404);
    res.end('not found\n');
  }
}

// An HTTP/2 body written the way a streaming server does (fs.createReadStream().pipe(res)):
// in 64 KiB pieces, waiting for 'drain'. (res.end(whole 8 MiB buffer) keeps the queued data
// charged to the session after the client cancels the stream, and after two such cancels
// Node refuses every new stream with RST_STREAM ENHANCE_YOUR_CALM: maxSessionMemory.)
function sendStreaming(res, buf) {
  let off = 0;
  let closed = false;
  res.on('close', () => { closed = true; });
  const pump = () => {
    while (!closed && off < buf.length) {
      const end = Math.min(off + 65536, buf.length);
      const more = res.write(buf.subarray(off, end));
      off = end;
      if (!more) { res.once('drain', pump); return; }
    }
    if (!closed) res.end();
  };
  pump();
}

// One generation: a secure server that is handed the sockets the plain listener accepts.
function newGeneration() {
  const gen = { closing: false, sessions: new Set(), h1: new Set() };
  const srv = http2.createSecureServer({
    cert, key, allowHTTP1: true, ALPNProtocols: ['h2', 'http/1.1'],
    maxHeaderListPairs: 4000, maxSendHeaderBlockLength: 1 << 20,
    settings: { maxHeaderListSize: 1 << 20 },
  });
  srv.keepAliveTimeout = idleMs;
  srv.on('request', (req, res) => {
    if (req.httpVersionMajor === 1) {
      const sock = req.socket;
      sock.activeRequests = (sock.activeRequests || 0) + 1;
      sock.requestsSeen = (sock.requestsSeen || 0) + 1;
      clearTimeout(sock.idleTimer);
      if (gen.closing) res.setHeader('connection', 'close');
      res.on('close', () => {
        sock.activeRequests--;
        armIdle(gen, sock);
      });
    }
    handler(req, res);
  });
  srv.on('session', (session) => {
    gen.sessions.add(session);
    session.on('close', () => gen.sessions.delete(session));
    session.setTimeout(idleMs, () => session.close());
    if (gen.closing) session.close();
  });
  srv.on('secureConnection', (sock) => {
    if (sock.alpnProtocol !== 'h2') {
      gen.h1.add(sock);
      sock.activeRequests = 0;
      sock.acceptedAt = Date.now();
      sock.on('close', () => gen.h1.delete(sock));
      armIdle(gen, sock);
    }
  });
  srv.on('tlsClientError', (err) => console.error('tls: ' + err.message));
  gen.srv = srv;
  stats.generation++;
  return gen;
}

function armIdle(gen, sock) {
  clearTimeout(sock.idleTimer);
  if (sock.activeRequests > 0 || sock.destroyed) return;
  if (gen.closing) {
    // Like Go's Server.Shutdown: a connection that has not sent its first request yet is
    // not idle until it is 5 s old (its request may be on the way); the others close now.
    const young = !sock.requestsSeen && Date.now() - sock.acceptedAt < 5000;
    if (!young) { sock.end(); return; }
    sock.idleTimer = setTimeout(() => armIdle(gen, sock), 5000 - (Date.now() - sock.acceptedAt));
    return;
  }
  sock.idleTimer = setTimeout(() => { if (sock.activeRequests === 0) sock.end(); }, idleMs);
}

function listenMain() {
  listener.listen(0, '127.0.0.1', () => {
    const a = listener.address();
    process.stdout.write(`listening ${a.address}:${a.port}\n`);
  });
}

let current = newGeneration();
const listener = net.createServer({ pauseOnConnect: false }, (sock) => {
  stats.connections++;
  stats.remotes.push(sock.remoteAddress + ':' + sock.remotePort);
  current.srv.emit('connection', sock);
});
if (process.argv.includes('--stats')) {
  const statsServer = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(stats));
  });
  statsServer.listen(0, '127.0.0.1', () => {
    const a = statsServer.address();
    process.stdout.write(`stats ${a.address}:${a.port}\n`);
    listenMain();
  });
} else {
  listenMain();
}

process.on('SIGHUP', () => {
  const old = current;
  current = newGeneration();
  old.closing = true;
  for (const s of old.sessions) s.close();
  for (const sock of old.h1) armIdle(old, sock);
  console.error(`SIGHUP: generation ${stats.generation} serving, the previous one closing`);
});
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
