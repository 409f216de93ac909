/* abandon: the load tool for what wrk cannot do (tests/bench/run builds it with cc).
 *
 *   abandon -a 127.0.0.1:PORT -c CONC -d SECONDS [-u URL-OR-PATH] [-H HOST] [-k BYTES]
 *           [-t] [-S SNI] [-C CAFILE]
 *       S5, the mission workload: CONC threads, each in a loop until the deadline:
 *       connect (+ TLS handshake with -t), send one GET, read the response head and
 *       BYTES (default 100) body bytes, close (unread data left: the kernel sends RST).
 *       Prints one JSON line: requests, errors by kind, duration, req/s, latency
 *       percentiles in microseconds (connect start to the BYTES-th body byte).
 *
 *   abandon -m idle -a 127.0.0.1:PORT -c CONN [-u ...] [-H ...]
 *       Opens CONN keep-alive connections one after the other, sends one GET on each and
 *       reads the complete response (Content-Length), then keeps all of them open and
 *       idle. Prints "ready OK FAILED" once done, then waits for EOF on stdin or
 *       SIGTERM and exits (the kernel closes the sockets).
 *
 * -u is the request target as sent (absolute-form through a proxy,
 * "http://origin.test/1m", or origin-form "/1m" straight to an origin).
 * -t speaks TLS (OpenSSL, ALPN http/1.1), verifying against -C when given.
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
static int g_tls = 0;
static long g_keep = 100;
static double g_deadline;
static SSL_CTX *g_ctx;
static char g_request[2048];
static size_t g_request_len;

enum { E_CONNECT, E_TLS, E_WRITE, E_READ, E_STATUS, E_N };
static const char *E_NAMES[E_N] = {"connect", "tls", "write", "read", "status"};

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
};

struct conn {
  int fd;
  SSL *ssl;
};

static int conn_open(struct conn *c, int *err) {
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
  if (g_tls) {
    c->ssl = SSL_new(g_ctx);
    SSL_set_fd(c->ssl, c->fd);
    const char *sni = g_sni ? g_sni : g_host;
    SSL_set_tlsext_host_name(c->ssl, sni);
    if (g_ca) SSL_set1_host(c->ssl, sni);
    if (SSL_connect(c->ssl) != 1) {
      *err = E_TLS;
      SSL_free(c->ssl);
      close(c->fd);
      return -1;
    }
  }
  return 0;
}

static void conn_close(struct conn *c) {
  if (c->ssl) SSL_free(c->ssl); /* no close_notify: the client just hangs up */
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

static void *abandon_loop(void *arg) {
  struct worker *w = arg;
  while (now() < g_deadline) {
    double t0 = now();
    struct conn c;
    int err;
    if (conn_open(&c, &err) != 0) {
      w->errors[err]++;
      usleep(1000); /* do not spin on a refusing listener */
      continue;
    }
    if (conn_write(&c, g_request, g_request_len) != (ssize_t)g_request_len) {
      w->errors[E_WRITE]++;
      conn_close(&c);
      continue;
    }
    int rc = read_response(&c, g_keep);
    conn_close(&c);
    if (rc) {
      w->errors[rc - 1]++;
      continue;
    }
    if (w->n == w->cap) {
      w->cap = w->cap ? w->cap * 2 : 4096;
      w->lat = realloc(w->lat, w->cap * sizeof *w->lat);
      if (!w->lat) abort();
    }
    w->lat[w->n++] = (uint32_t)((now() - t0) * 1e6);
  }
  return NULL;
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
  struct conn *cs = calloc((size_t)n, sizeof *cs);
  int ok = 0, failed = 0;
  for (int i = 0; i < n; i++) {
    int err;
    if (conn_open(&cs[i], &err) != 0) { failed++; cs[i].fd = -1; continue; }
    if (conn_write(&cs[i], g_request, g_request_len) != (ssize_t)g_request_len ||
        read_response(&cs[i], -1) != 0) {
      failed++;
      conn_close(&cs[i]);
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
  fprintf(stderr, "usage: abandon [-m abandon|idle] -a HOST:PORT -c N [-d SECONDS] [-u TARGET] "
                  "[-H HOST] [-k BYTES] [-t] [-S SNI] [-C CAFILE]\n");
  exit(2);
}

int main(int argc, char **argv) {
  const char *mode = "abandon", *addr = NULL;
  int conc = 16;
  double seconds = 10;
  int opt;
  while ((opt = getopt(argc, argv, "m:a:c:d:u:H:k:tS:C:")) != -1) {
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
  int keep_alive = strcmp(mode, "idle") == 0;
  g_request_len = (size_t)snprintf(g_request, sizeof g_request,
                                   "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: upkeep-bench-abandon\r\n%s\r\n",
                                   g_target, g_host, keep_alive ? "" : "Connection: close\r\n");
  if (keep_alive) return idle_mode(conc);
  if (strcmp(mode, "abandon") != 0) usage();

  struct worker *ws = calloc((size_t)conc, sizeof *ws);
  double t0 = now();
  g_deadline = t0 + seconds;
  for (int i = 0; i < conc; i++) {
    if (pthread_create(&ws[i].th, NULL, abandon_loop, &ws[i]) != 0) {
      fprintf(stderr, "abandon: pthread_create failed\n");
      return 2;
    }
  }
  size_t total = 0;
  long errors[E_N] = {0};
  for (int i = 0; i < conc; i++) {
    pthread_join(ws[i].th, NULL);
    total += ws[i].n;
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
  printf("}, \"latency_us\": {\"p50\": %u, \"p90\": %u, \"p99\": %u, \"max\": %u}}\n",
         pct(all, total, 50), pct(all, total, 90), pct(all, total, 99), total ? all[total - 1] : 0);
  return 0;
}
