// Package sdstest runs what the tests of this module talk to: the real trust-sds binary on
// a directory of manifests, HTTPS upstreams with certificates made on the spot, and a
// scripted SDS server for protocol paths a real server never takes (bad bundles).
package sdstest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"
)

// Timeout bounds every wait in the tests. It is generous: the machines running them are
// small and shared, and a wait normally ends in milliseconds.
const Timeout = 20 * time.Second

// Binary is the trust-sds executable: $TRUST_SDS_BIN (relative paths are taken from the
// module root, go/), else ../target/release/trust-sds. A missing binary fails the test:
// a skipped integration test would look like a passing one.
func Binary(t testing.TB) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	moduleRoot := filepath.Join(filepath.Dir(file), "..", "..")
	path := os.Getenv("TRUST_SDS_BIN")
	if path == "" {
		path = filepath.Join("..", "target", "release", "trust-sds")
	}
	if !filepath.IsAbs(path) {
		path = filepath.Join(moduleRoot, path)
	}
	info, err := os.Stat(path)
	if err == nil && (info.IsDir() || info.Mode()&0o111 == 0) {
		err = errors.New("not an executable file")
	}
	if err != nil {
		t.Fatalf("trust-sds binary not usable at %s (build it with `cargo build --release`, or set TRUST_SDS_BIN): %v", path, err)
	}
	return path
}

// Server is a running `trust-sds serve --manifests`.
type Server struct {
	// Addr is the SDS listen address, host:port.
	Addr string
	t    testing.TB
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
	kill sync.Once
}

// StartServer runs trust-sds on dir, listening on listen ("127.0.0.1:0" for any port), and
// returns once it logs its address. It is killed when the test ends.
func StartServer(t testing.TB, dir, listen string) *Server {
	t.Helper()
	cmd := exec.Command(Binary(t), "serve",
		"--manifests", dir,
		"--listen", listen,
		"--admin-listen", "127.0.0.1:0",
		"--log-format", "json")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting trust-sds: %v", err)
	}
	s := &Server{t: t, cmd: cmd, log: &syncBuffer{}, done: make(chan struct{})}
	addr := make(chan string, 1)
	go s.readLog(stderr, addr)
	t.Cleanup(func() {
		s.Kill()
		if t.Failed() {
			t.Logf("trust-sds log (%s):\n%s", listen, s.log.String())
		}
	})
	select {
	case a := <-addr:
		s.Addr = a
	case <-s.done:
		t.Fatalf("trust-sds exited before serving:\n%s", s.log.String())
	case <-time.After(Timeout):
		t.Fatalf("trust-sds did not report its address within %v:\n%s", Timeout, s.log.String())
	}
	return s
}

// readLog keeps the log for failure reports and picks out the listen address.
func (s *Server) readLog(stderr interface{ Read([]byte) (int, error) }, addr chan<- string) {
	defer close(s.done)
	lines := bufio.NewScanner(stderr)
	lines.Buffer(make([]byte, 64*1024), 1024*1024)
	found := false
	for lines.Scan() {
		line := lines.Bytes()
		s.log.Write(append(append([]byte(nil), line...), '\n'))
		if found {
			continue
		}
		var entry struct {
			Fields struct {
				SDSAddr string `json:"sds_addr"`
			} `json:"fields"`
		}
		if json.Unmarshal(line, &entry) == nil && entry.Fields.SDSAddr != "" {
			found = true
			addr <- entry.Fields.SDSAddr
		}
	}
	_ = s.cmd.Wait()
}

// Kill ends the server at once (SIGKILL: no draining, as in a crash) and waits for it.
func (s *Server) Kill() {
	s.kill.Do(func() { _ = s.cmd.Process.Kill() })
	<-s.done
}

// Log is what the server logged so far.
func (s *Server) Log() string { return s.log.String() }

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
