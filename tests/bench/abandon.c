/* abandon: the load tool for what wrk cannot do (tests/bench/run builds it with cc).
 *
 *   abandon -a 127.0.0.1:PORT -c CONC -d SECONDS [-u URL-OR-PATH] [-H HOST] [-k BYTES]
 *           [-t] [-S SNI] [-C CAFILE] [-P HOST:PORT] [-r]
 *       S5, the mission workload: CONC threads, each in a loop until the deadline:
 *       connect (+ CONNECT with -P, + TLS handshake with -t), send one GET, read the
 *       response head and BYTES (default 100; -1: the whole Content-Length body) body
 *       bytes, close (unread data left: the kernel sends RST).
 *       Prints one JSON line: requests, errors by kind, duration, req/s, latency
 *       percentiles in microseconds (connect start to the BYTES-th body byte), TLS
 *       handshakes and how many of them resumed a session.
 *
 *   abandon -m keepalive -a 127.0.0.1:PORT -c CONC -d SECONDS [-u ...] [-H ...] [-t ...]
 *           [-P HOST:PORT] [-r]
 *       S7: CONC threads, each opens ONE connection (CONNECT + TLS with -P -t) and sends
 *       GET after GET on it (keep-alive), reading each whole body (Content-Length),
 *       until the deadline; a failed connection counts an error and is opened anew.
 *       Same JSON line; latency is per request (request write to its last body byte).
 *
 *   abandon -m handshake -a 127.0.0.1:PORT -n N -t [-C CAFILE] [-P HOST:PORT] [-S SNI]
 *           [-i FIRST] [-X HOST:PORT] [-r]
 *       One client, N connections one after the other: connect (+ CONNECT), TLS
 *       handshake, close without a request. A "%d" in the -P host and in -S is replaced
 *       by FIRST + the connection's index (FIRST defaults to 0), so each handshake can
 *       name a new host ("h%d.origin.test:443"). Same JSON line; requests = handshakes,
 *       latency = connect start to the end of the handshake.
 *       -X HOST:PORT interleaves: after each of the N, one more handshake CONNECTing to
 *       HOST:PORT (SNI: that host), timed apart: "x_requests", "x_errors" and
 *       "x_latency_us" in the JSON (new vs. cached host under the same conditions).
 *
 *   abandon -m idle -a 127.0.0.1:PORT -c CONN [-u ...] [-H ...]
 *       Opens CONN keep-alive connections one after the other, sends one GET on each and
 *       reads the complete response (Content-Length), then keeps all of them open and
 *       idle. Prints "ready OK FAILED" once done, then waits for EOF on stdin or
 *       SIGTERM and exits (the kernel closes the sockets).
 *
 * -u is the request target as sent (absolute-form through a proxy,
 * "http://origin.test/1m", or origin-form "/1m" straight to an origin).
 * -t speaks TLS (OpenSSL, ALPN http/1.1), verifying against -C when given; the SNI (and
 * the name verified) is -S, else the -P host, else -H.
 * -P HOST:PORT: through the HTTP proxy at -a, send `CONNECT HOST:PORT`, read its 2xx
 * head, then speak (TLS and) HTTP over the same socket.
 * -r resumes TLS sessions as curl and Python clients do: each thread keeps the session
 * of its last connection (SSL_get1_session) and offers it on its next (SSL_set_session).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in g_addr;
static const char *g_target = "/1m";
static const char *g_host = "origin.test";
static const char *g_sni = NULL;
static const char *g_ca = NULL;
static const char *g_proxy_target = NULL; /* -P: CONNECT HOST:PORT through -a */
static const char *g_alt_target = NULL;   /* -X: handshake mode, interleaved target */
static int g_tls = 0;
static int g_resume = 0;
static long g_keep = 100;
static double g_deadline;
static SSL_CTX *g_ctx;
static char g_request[2048];
static size_t g_request_len;

enum { E_CONNECT, E_PROXY, E_TLS, E_WRITE, E_READ, E_STATUS, E_N };
static const char *E_NAMES[E_N] = {"connect", "proxy", "tls", "write", "read", "status"};

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

struct worker {
  pthread_t th;
  uint32_t *lat;
  size_t n, cap;
  long errors[E_N];
  long handshakes, resumed;
  SSL_SESSION *session; /* -r: the session of this thread's last connection */
  long index;           /* handshake mode: the next connection's number */
  const char *target;   /* the CONNECT authority template; NULL: -P */
};

struct conn {
  int fd;
  SSL *ssl;
};

/* `tmpl` with a "%d" in it replaced by `index` (no other conversion is honoured). */
static void format_name(char *out, size_t cap, const char *tmpl, long index) {
  const char *p = strstr(tmpl, "%d");
  if (!p) {
    snprintf(out, cap, "%s", tmpl);
    return;
  }
  snprintf(out, cap, "%.*s%ld%s", (int)(p - tmpl), tmpl, index, p + 2);
}

/* CONNECT `authority` on fd and read the proxy's head: 0 on a 2xx, else -1. The proxy
   sends nothing after its head before the client speaks, so a plain read is exact. */
static int proxy_connect(int fd, const char *authority) {
  char buf[4096];
  int n = snprintf(buf, sizeof buf, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n"
                                    "User-Agent: upkeep-bench-abandon\r\n\r\n",
                   authority, authority);
  if (n <= 0 || (size_t)n >= sizeof buf || send(fd, buf, (size_t)n, MSG_NOSIGNAL) != n) return -1;
  size_t have = 0;
  char *end = NULL;
  while (!end) {
    if (have == sizeof buf - 1) return -1;
    ssize_t r = recv(fd, buf + have, sizeof buf - 1 - have, 0);
    if (r <= 0) return -1;
    have += (size_t)r;
    end = memmem(buf, have, "\r\n\r\n", 4);
  }
  if ((size_t)(end - buf) + 4 != have) return -1; /* bytes past the head: not expected */
  int status = 0;
  buf[have] = 0;
  if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1) return -1;
  return status >= 200 && status < 300 ? 0 : -1;
}

static int conn_open(struct conn *c, struct worker *w, int *err) {
  char authority[300], sni_buf[300];
  const char *sni = g_sni;
  c->ssl = NULL;
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (c->fd < 0) { *err = E_CONNECT; return -1; }
  struct timeval tv = {10, 0};
  setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(c->fd, (struct sockaddr *)&g_addr, sizeof g_addr) != 0) {
    *err = E_CONNECT;
    close(c->fd);
    return -1;
  }
  const char *target = w->target ? w->target : g_proxy_target;
  if (target) {
    format_name(authority, sizeof authority, target, w->index);
    if (proxy_connect(c->fd, authority) != 0) {
      *err = E_PROXY;
      close(c->fd);
      return -1;
    }
    if (!sni) { /* the SNI defaults to the CONNECT host */
      char *colon = strrchr(authority, ':');
      if (colon) *colon = 0;
      sni = authority;
    }
  }
  if (g_tls) {
    if (!sni) sni = g_host;
    format_name(sni_buf, sizeof sni_buf, sni, w->index);
    c->ssl = SSL_new(g_ctx);
    SSL_set_fd(c->ssl, c->fd);
    SSL_set_tlsext_host_name(c->ssl, sni_buf);
    if (g_ca) SSL_set1_host(c->ssl, sni_buf);
    if (g_resume && w->session) SSL_set_session(c->ssl, w->session);
    if (SSL_connect(c->ssl) != 1) {
      *err = E_TLS;
      SSL_free(c->ssl);
      close(c->fd);
      /* a session the server would not take is not offered again */
      if (w->session) SSL_SESSION_free(w->session);
      w->session = NULL;
      return -1;
    }
    w->handshakes++;
    if (SSL_session_reused(c->ssl)) w->resumed++;
  }
  return 0;
}

static void conn_close(struct conn *c, struct worker *w) {
  if (c->ssl) {
    if (g_resume && w) {
      /* No close_notify goes out (the client just hangs up), but OpenSSL would mark
         the session of a connection freed without one as not resumable: say it was
         shut down, so the session can be offered on the next connection. */
      SSL_set_shutdown(c->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
      SSL_SESSION *s = SSL_get1_session(c->ssl);
      if (s && SSL_SESSION_is_resumable(s)) {
        if (w->session) SSL_SESSION_free(w->session);
        w->session = s;
      } else if (s) {
        SSL_SESSION_free(s);
      }
    }
    SSL_free(c->ssl); /* no close_notify: the client just hangs up */
  }
  close(c->fd);
}

static ssize_t conn_write(struct conn *c, const void *b, size_t n) {
  if (c->ssl) return SSL_write(c->ssl, b, (int)n);
  return send(c->fd, b, n, MSG_NOSIGNAL);
}

static ssize_t conn_read(struct conn *c, void *b, size_t n) {
  if (c->ssl) return SSL_read(c->ssl, b, (int)n);
  return recv(c->fd, b, n, 0);
}

/* Reads the response head, then body bytes until `want` (-1: Content-Length) are in.
   Returns 0 when done with a 2xx status, else the error kind + 1. */
static int read_response(struct conn *c, long want) {
  char buf[16384];
  size_t have = 0;
  char *end = NULL;
  while (!end) {
    if (have == sizeof buf) return E_READ + 1;
    ssize_t r = conn_read(c, buf + have, sizeof buf - have);
    if (r <= 0) return E_READ + 1;
    have += (size_t)r;
    end = memmem(buf, have, "\r\n\r\n", 4);
  }
  int status = 0;
  if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1) return E_READ + 1;
  size_t head = (size_t)(end - buf) + 4;
  long body = (long)(have - head);
  if (want < 0) {
    want = 0;
    /* Content-Length: at the start of a header line */
    for (char *p = buf; p < end; p++) {
      if ((p == buf || p[-1] == '\n') && strncasecmp(p, "content-length:", 15) == 0) {
        want = atol(p + 15);
        break;
      }
    }
  }
  while (body < want) {
    ssize_t r = conn_read(c, buf, sizeof buf);
    if (r <= 0) return E_READ + 1;
    body += r;
  }
  return (status >= 200 && status < 300) ? 0 : E_STATUS + 1;
}

static void record(struct worker *w, double t0) {
  if (w->n == w->cap) {
    w->cap = w->cap ? w->cap * 2 : 4096;
    w->lat = realloc(w->lat, w->cap * sizeof *w->lat);
    if (!w->lat) abort();
  }
  w->lat[w->n++] = (uint32_t)((now() - t0) * 1e6);
}

static void *abandon_loop(void *arg) {
  struct worker *w = arg;
  while (now() < g_deadline) {
    double t0 = now();
    struct conn c;
    int err;
    if (conn_open(&c, w, &err) != 0) {
      w->errors[err]++;
      usleep(1000); /* do not spin on a refusing listener */
      continue;
    }
    if (conn_write(&c, g_request, g_request_len) != (ssize_t)g_request_len) {
      w->errors[E_WRITE]++;
      conn_close(&c, w);
      continue;
    }
    int rc = read_response(&c, g_keep);
    conn_close(&c, w);
    if (rc) {
      w->errors[rc - 1]++;
      continue;
    }
    record(w, t0);
  }
  return NULL;
}

/* -m keepalive: one connection per thread, request after request, whole bodies. */
static void *keepalive_loop(void *arg) {
  struct worker *w = arg;
  struct conn c;
  int open = 0;
  while (now() < g_deadline) {
    int err;
    if (!open) {
      if (conn_open(&c, w, &err) != 0) {
        w->errors[err]++;
        usleep(1000);
        continue;
      }
      open = 1;
    }
    double t0 = now();
    if (conn_write(&c, g_request, g_request_len) != (ssize_t)g_request_len) {
      w->errors[E_WRITE]++;
      conn_close(&c, w);
      open = 0;
      continue;
    }
    int rc = read_response(&c, -1);
    if (rc) {
      w->errors[rc - 1]++;
      conn_close(&c, w);
      open = 0;
      continue;
    }
    record(w, t0);
  }
  if (open) conn_close(&c, w);
  return NULL;
}

static void one_handshake(struct worker *w) {
  double t0 = now();
  struct conn c;
  int err;
  if (conn_open(&c, w, &err) != 0) {
    w->errors[err]++;
    return;
  }
  record(w, t0);
  conn_close(&c, w);
}

/* -m handshake: connect (+ CONNECT) + TLS handshake, then close; n times, one thread;
   with -X each followed by one to the -X target, counted in `alt`. */
static void handshake_loop(struct worker *w, struct worker *alt, long n, long first) {
  alt->target = g_alt_target;
  for (long i = 0; i < n; i++) {
    w->index = first + i;
    one_handshake(w);
    if (g_alt_target) one_handshake(alt);
  }
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

static uint32_t pct(const uint32_t *v, size_t n, double p) {
  if (!n) return 0;
  size_t i = (size_t)(p / 100.0 * (double)(n - 1) + 0.5);
  return v[i < n ? i : n - 1];
}

static volatile sig_atomic_t g_stop;
static void on_term(int sig) { (void)sig; g_stop = 1; }

static int idle_mode(int n) {
  static struct worker idle_worker;
  struct conn *cs = calloc((size_t)n, sizeof *cs);
  int ok = 0, failed = 0;
  for (int i = 0; i < n; i++) {
    int err;
    if (conn_open(&cs[i], &idle_worker, &err) != 0) { failed++; cs[i].fd = -1; continue; }
    if (conn_write(&cs[i], g_request, g_request_len) != (ssize_t)g_request_len ||
        read_response(&cs[i], -1) != 0) {
      failed++;
      conn_close(&cs[i], NULL);
      cs[i].fd = -1;
      continue;
    }
    ok++;
  }
  printf("ready %d %d\n", ok, failed);
  fflush(stdout);
  signal(SIGTERM, on_term);
  char b[64];
  while (!g_stop && read(0, b, sizeof b) > 0) {
  }
  return 0;
}

static void usage(void) {
  fprintf(stderr, "usage: abandon [-m abandon|keepalive|handshake|idle] -a HOST:PORT -c N "
                  "[-d SECONDS] [-u TARGET] [-H HOST] [-k BYTES|-1] [-t] [-S SNI] [-C CAFILE] "
                  "[-P HOST:PORT] [-r] [-n HANDSHAKES] [-i FIRST] [-X HOST:PORT]\n");
  exit(2);
}

int main(int argc, char **argv) {
  const char *mode = "abandon", *addr = NULL;
  int conc = 16;
  double seconds = 10;
  long handshakes = 100, first = 0;
  int opt;
  while ((opt = getopt(argc, argv, "m:a:c:d:u:H:k:tS:C:P:rn:i:X:")) != -1) {
    switch (opt) {
      case 'm': mode = optarg; break;
      case 'a': addr = optarg; break;
      case 'c': conc = atoi(optarg); break;
      case 'd': seconds = atof(optarg); break;
      case 'u': g_target = optarg; break;
      case 'H': g_host = optarg; break;
      case 'k': g_keep = atol(optarg); break;
      case 't': g_tls = 1; break;
      case 'S': g_sni = optarg; break;
      case 'C': g_ca = optarg; break;
      case 'P': g_proxy_target = optarg; break;
      case 'r': g_resume = 1; break;
      case 'n': handshakes = atol(optarg); break;
      case 'i': first = atol(optarg); break;
      case 'X': g_alt_target = optarg; break;
      default: usage();
    }
  }
  if (!addr || conc <= 0) usage();
  char host[256];
  const char *colon = strrchr(addr, ':');
  if (!colon || (size_t)(colon - addr) >= sizeof host) usage();
  memcpy(host, addr, (size_t)(colon - addr));
  host[colon - addr] = 0;
  memset(&g_addr, 0, sizeof g_addr);
  g_addr.sin_family = AF_INET;
  g_addr.sin_port = htons((uint16_t)atoi(colon + 1));
  if (inet_pton(AF_INET, host, &g_addr.sin_addr) != 1) usage();
  signal(SIGPIPE, SIG_IGN);

  if (g_tls) {
    g_ctx = SSL_CTX_new(TLS_client_method());
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_CTX_set_alpn_protos(g_ctx, alpn, sizeof alpn - 1);
    if (g_ca) {
      if (SSL_CTX_load_verify_locations(g_ctx, g_ca, NULL) != 1) {
        fprintf(stderr, "abandon: cannot load %s\n", g_ca);
        return 2;
      }
      SSL_CTX_set_verify(g_ctx, SSL_VERIFY_PEER, NULL);
    }
  }
  int keep_alive = strcmp(mode, "idle") == 0 || strcmp(mode, "keepalive") == 0;
  g_request_len = (size_t)snprintf(g_request, sizeof g_request,
                                   "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: upkeep-bench-abandon\r\n%s\r\n",
                                   g_target, g_host, keep_alive ? "" : "Connection: close\r\n");
  if (strcmp(mode, "idle") == 0) return idle_mode(conc);
  void *(*loop)(void *) = abandon_loop;
  if (strcmp(mode, "keepalive") == 0) {
    loop = keepalive_loop;
  } else if (strcmp(mode, "handshake") == 0) {
    if (!g_tls || handshakes <= 0) usage();
    conc = 1;
    loop = NULL;
  } else if (strcmp(mode, "abandon") != 0) {
    usage();
  }

  struct worker *ws = calloc((size_t)conc, sizeof *ws);
  struct worker alt = {0};
  double t0 = now();
  g_deadline = t0 + seconds;
  if (loop) {
    for (int i = 0; i < conc; i++) {
      if (pthread_create(&ws[i].th, NULL, loop, &ws[i]) != 0) {
        fprintf(stderr, "abandon: pthread_create failed\n");
        return 2;
      }
    }
  } else {
    handshake_loop(&ws[0], &alt, handshakes, first);
  }
  size_t total = 0;
  long errors[E_N] = {0}, hs = 0, resumed = 0;
  for (int i = 0; i < conc; i++) {
    if (loop) pthread_join(ws[i].th, NULL);
    total += ws[i].n;
    hs += ws[i].handshakes;
    resumed += ws[i].resumed;
    for (int e = 0; e < E_N; e++) errors[e] += ws[i].errors[e];
  }
  double elapsed = now() - t0;
  uint32_t *all = malloc((total ? total : 1) * sizeof *all);
  size_t k = 0;
  for (int i = 0; i < conc; i++) {
    memcpy(all + k, ws[i].lat, ws[i].n * sizeof *all);
    k += ws[i].n;
  }
  qsort(all, total, sizeof *all, cmp_u32);
  printf("{\"requests\": %zu, \"duration_s\": %.3f, \"rps\": %.1f, \"errors\": {", total, elapsed,
         total / elapsed);
  for (int e = 0; e < E_N; e++) printf("%s\"%s\": %ld", e ? ", " : "", E_NAMES[e], errors[e]);
  printf("}, \"tls_handshakes\": %ld, \"tls_resumed\": %ld", hs, resumed);
  if (g_alt_target && !loop) {
    qsort(alt.lat, alt.n, sizeof *alt.lat, cmp_u32);
    printf(", \"x_requests\": %zu, \"x_errors\": {", alt.n);
    for (int e = 0; e < E_N; e++) printf("%s\"%s\": %ld", e ? ", " : "", E_NAMES[e], alt.errors[e]);
    printf("}, \"x_latency_us\": {\"p50\": %u, \"p90\": %u, \"p99\": %u, \"max\": %u}",
           pct(alt.lat, alt.n, 50), pct(alt.lat, alt.n, 90), pct(alt.lat, alt.n, 99),
           alt.n ? alt.lat[alt.n - 1] : 0);
  }
  printf(", \"latency_us\": {\"p50\": %u, \"p90\": %u, \"p99\": %u, \"max\": %u}}\n",
         pct(all, total, 50), pct(all, total, 90), pct(all, total, 99), total ? all[total - 1] : 0);
  return 0;
}
