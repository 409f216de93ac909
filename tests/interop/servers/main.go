// interop-go: a small Go net/http origin for upkeep's interoperability suite
// (tests/interop/run). Only the standard library (GO111MODULE=off, no network).
//
//	interop-go -cert FILE -key FILE [-addr 127.0.0.1:0] [-idle 120s] [-stats 127.0.0.1:0]
//	interop-go -plain [-addr 127.0.0.1:0]        (a cleartext HTTP/1.1 backend, e.g. behind HAProxy)
//
// With -cert/-key it serves TLS with ALPN h2 and http/1.1 (net/http's bundled HTTP/2).
// It prints "stats 127.0.0.1:PORT" (with -stats) and then "listening 127.0.0.1:PORT" on
// stdout once it accepts connections.
// SIGHUP is a graceful reload: a new server generation takes over the same listening
// socket and the old one shuts down gracefully (GOAWAY on HTTP/2, idle HTTP/1.1
// connections closed, in-flight requests finished). SIGTERM/SIGINT: exit.
//
// Endpoints:
//
//	/f/<size>      <size> bytes of the test pattern (tests/support/upkeep_test/patterns.py)
//	/echo?id=ID    the request body echoed back (read whole, then sent with a length);
//	               each ID is counted (see /stats), so a POST sent twice shows
//	/trailers      10000 pattern bytes, chunked, then trailers X-Trailer-One: one and
//	               X-Body-Sha256: <sha256 of the body>; ?cl=1 also sends Content-Length
//	/headers       response with a 16 KiB X-Big header, 100 X-Many-NNN headers and the request's
//	               X-Big echoed as X-Echo-Big; the body says what arrived:
//	               "big=<length of X-Big> many=<count of X-Many-* fields>"
//	/stats         (also on the -stats listener) JSON: connections accepted (with their remote addresses), requests,
//	               posts per id, protocol per request, generation
package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const lineLen = 32

func pattern(size int) []byte {
	out := make([]byte, 0, size+lineLen)
	for off := 0; len(out) < size; off += lineLen {
		out = append(out, fmt.Sprintf("%010d upkeep-test-pattern.\n", off)...)
	}
	return out[:size]
}

type stats struct {
	mu          sync.Mutex
	connections int
	remotes     []string
	requests    int
	posts       map[string]int
	protos      map[string]int
	generation  int
}

var st = &stats{posts: map[string]int{}, protos: map[string]int{}}

// --- a listener shared by the server generations -----------------------------------

// genListener is one generation's view of the shared socket: closing it (what
// Server.Shutdown does) stops this generation from accepting, not the socket.
type genListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
	addr  net.Addr
}

func (g *genListener) Accept() (net.Conn, error) {
	select {
	case c := <-g.conns:
		return c, nil
	case <-g.done:
		return nil, net.ErrClosed
	}
}

func (g *genListener) Close() error {
	g.once.Do(func() { close(g.done) })
	return nil
}

func (g *genListener) Addr() net.Addr { return g.addr }

type acceptor struct {
	mu  sync.Mutex
	cur *genListener
	ln  net.Listener
}

func (a *acceptor) newGen() *genListener {
	g := &genListener{conns: make(chan net.Conn), done: make(chan struct{}), addr: a.ln.Addr()}
	a.mu.Lock()
	a.cur = g
	a.mu.Unlock()
	return g
}

func (a *acceptor) loop() {
	for {
		c, err := a.ln.Accept()
		if err != nil {
			log.Printf("accept: %v", err)
			return
		}
		for {
			a.mu.Lock()
			g := a.cur
			a.mu.Unlock()
			select {
			case g.conns <- c:
			case <-g.done:
				continue // that generation is shutting down: hand it to the next one
			}
			break
		}
	}
}

// --- handlers -------------------------------------------------------------------------

func handler(w http.ResponseWriter, r *http.Request) {
	st.mu.Lock()
	st.requests++
	st.protos[r.Proto]++
	st.mu.Unlock()
	path := r.URL.Path
	switch {
	case strings.HasPrefix(path, "/f/"):
		n, err := strconv.Atoi(strings.TrimPrefix(path, "/f/"))
		if err != nil || n < 0 || n > 256<<20 {
			http.Error(w, "bad size", 400)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(n))
		w.Write(pattern(n))
	case path == "/echo":
		body, err := io.ReadAll(r.Body)
		if err != nil {
			// The client (upkeep) went away mid-upload: never count it as arrived.
			log.Printf("echo id=%s: body read failed after %d bytes: %v", r.URL.Query().Get("id"), len(body), err)
			return
		}
		if id := r.URL.Query().Get("id"); id != "" {
			st.mu.Lock()
			st.posts[id]++
			st.mu.Unlock()
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Header().Set("X-Request-Transfer-Encoding", strings.Join(r.TransferEncoding, ","))
		w.Header().Set("X-Request-Content-Length", strconv.FormatInt(r.ContentLength, 10))
		w.Write(body)
	case path == "/trailers":
		body := pattern(10000)
		sum := sha256.Sum256(body)
		w.Header().Set("Trailer", "X-Trailer-One, X-Body-Sha256")
		w.Header().Set("Content-Type", "application/octet-stream")
		if r.URL.Query().Get("cl") == "1" {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		}
		w.WriteHeader(200)
		w.Write(body[:5000])
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		w.Write(body[5000:])
		w.Header().Set("X-Trailer-One", "one")
		w.Header().Set("X-Body-Sha256", hex.EncodeToString(sum[:]))
	case path == "/headers":
		big := r.Header.Get("X-Big")
		many := 0
		for k := range r.Header {
			if strings.HasPrefix(k, "X-Many-") {
				many += len(r.Header[k])
			}
		}
		w.Header().Set("X-Big", strings.Repeat("b", 16384))
		for i := 0; i < 100; i++ {
			w.Header().Set(fmt.Sprintf("X-Many-%03d", i), fmt.Sprintf("value-%03d", i))
		}
		w.Header().Set("X-Echo-Big", big)
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "big=%d many=%d", len(big), many)
	case path == "/stats":
		statsHandler(w, r)
	default:
		http.NotFound(w, r)
	}
}

func statsHandler(w http.ResponseWriter, r *http.Request) {
	st.mu.Lock()
	b, _ := json.Marshal(map[string]interface{}{
		"connections": st.connections, "remotes": st.remotes, "requests": st.requests,
		"posts": st.posts, "protos": st.protos, "generation": st.generation,
	})
	st.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Write(b)
}

func connState(c net.Conn, s http.ConnState) {
	if s == http.StateNew {
		st.mu.Lock()
		st.connections++
		st.remotes = append(st.remotes, c.RemoteAddr().String())
		st.mu.Unlock()
	}
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	cert := flag.String("cert", "", "certificate (PEM)")
	key := flag.String("key", "", "private key (PEM)")
	plain := flag.Bool("plain", false, "cleartext HTTP/1.1 (no TLS)")
	idle := flag.Duration("idle", 120*time.Second, "idle timeout of kept-alive connections")
	statsAddr := flag.String("stats", "", "also serve /stats in cleartext here (connections to it are not counted)")
	flag.Parse()
	log.SetFlags(log.Lmicroseconds)

	if *statsAddr != "" {
		sl, err := net.Listen("tcp", *statsAddr)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("stats %s\n", sl.Addr().String())
		go http.Serve(sl, http.HandlerFunc(statsHandler))
	}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	var tlsConf *tls.Config
	if !*plain {
		pair, err := tls.LoadX509KeyPair(*cert, *key)
		if err != nil {
			log.Fatal(err)
		}
		tlsConf = &tls.Config{Certificates: []tls.Certificate{pair}, NextProtos: []string{"h2", "http/1.1"}}
	}
	acc := &acceptor{ln: ln}
	start := func() *http.Server {
		srv := &http.Server{
			Handler:           http.HandlerFunc(handler),
			IdleTimeout:       *idle,
			ReadHeaderTimeout: 30 * time.Second,
			MaxHeaderBytes:    1 << 20,
			ConnState:         connState,
			ErrorLog:          log.Default(),
		}
		g := acc.newGen()
		st.mu.Lock()
		st.generation++
		st.mu.Unlock()
		go func() {
			var err error
			if tlsConf != nil {
				srv.TLSConfig = tlsConf.Clone()
				err = srv.ServeTLS(g, "", "")
			} else {
				err = srv.Serve(g)
			}
			if err != nil && err != http.ErrServerClosed {
				log.Printf("serve: %v", err)
			}
		}()
		return srv
	}
	cur := start()
	go acc.loop()
	fmt.Printf("listening %s\n", ln.Addr().String())
	os.Stdout.Sync()

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	for s := range sigs {
		if s != syscall.SIGHUP {
			log.Printf("%v: exiting", s)
			os.Exit(0)
		}
		old := cur
		cur = start()
		log.Printf("SIGHUP: generation %d serving, the previous one shutting down", st.generation)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if err := old.Shutdown(ctx); err != nil {
				log.Printf("shutdown of the old generation: %v", err)
			}
		}()
	}
}
