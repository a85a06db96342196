package testenv

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// LockedBuffer is an io.Writer that is safe for concurrent use, for
// collecting the output of a child process or a logger during a test.
type LockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *LockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *LockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// FreeAddr returns a loopback address whose port had no listener when it
// was chosen, for a server process the test starts.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	return addr
}

// BuildServer builds the server command, with the given build tags, into a
// new temporary directory. It returns the binary's path and a function
// that removes the directory. TestMain functions call it once per package.
func BuildServer(tags ...string) (string, func(), error) {
	dir, err := os.MkdirTemp("", "messaging-server-")
	if err != nil {
		return "", nil, fmt.Errorf("create temp dir: %w", err)
	}
	remove := func() { os.RemoveAll(dir) }
	binary := filepath.Join(dir, "server")
	args := []string{"build", "-o", binary}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	build := exec.Command("go", append(args, "github.com/go-messaging-system/messaging/cmd/server")...)
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		remove()
		return "", nil, fmt.Errorf("build server: %w", err)
	}
	return binary, remove, nil
}

// Server is a server process that a test started with StartServer.
type Server struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // exit status, set before done closes
}

// readyClient polls the readiness endpoint, giving up on one request after
// 5 seconds.
var readyClient = &http.Client{Timeout: 5 * time.Second}

// StartServer starts binary with env added to the process environment and
// its output written to out, then waits until GET readyURL returns 200. It
// fails the test when the process exits first or timeout passes. A process
// still running when the test ends is killed.
func StartServer(t testing.TB, binary string, env []string, out io.Writer, readyURL string, timeout time.Duration) *Server {
	t.Helper()
	cmd := exec.Command(binary)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("failed to start %s: %v", binary, err)
	}
	s := &Server{cmd: cmd, done: make(chan struct{})}
	go func() {
		s.err = cmd.Wait()
		close(s.done)
	}()
	t.Cleanup(func() {
		if !s.Exited() {
			_ = cmd.Process.Kill()
			<-s.done
		}
	})

	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if s.Exited() {
			t.Fatalf("server exited before it was ready: %v", s.err)
		}
		if res, err := readyClient.Get(readyURL); err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return s
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("server not ready within %s", timeout)
	return nil
}

// Exited reports whether the process has ended.
func (s *Server) Exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// Kill sends SIGKILL and waits for the process to end.
func (s *Server) Kill(t testing.TB) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("failed to kill server process %d: %v", s.cmd.Process.Pid, err)
	}
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("server process %d still runs 10s after SIGKILL", s.cmd.Process.Pid)
	}
}

// Stop sends SIGTERM and fails the test unless the process exits with
// status 0 within timeout. It returns how long the process took to exit.
func (s *Server) Stop(t testing.TB, timeout time.Duration) time.Duration {
	t.Helper()
	took, err := s.Terminate(t, timeout)
	if err != nil {
		t.Fatalf("server exited with an error after SIGTERM: %v", err)
	}
	return took
}

// Terminate sends SIGTERM and fails the test unless the process exits
// within timeout. It returns how long the process took to exit and its
// exit status, nil for status 0.
func (s *Server) Terminate(t testing.TB, timeout time.Duration) (time.Duration, error) {
	t.Helper()
	started := time.Now()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("failed to send SIGTERM to server process %d: %v", s.cmd.Process.Pid, err)
	}
	select {
	case <-s.done:
	case <-time.After(timeout):
		t.Fatalf("server timed out: still running %s after SIGTERM", timeout)
	}
	return time.Since(started), s.err
}

// RequireRunning fails the test, with the exit status, when the process
// has ended.
func (s *Server) RequireRunning(t testing.TB) {
	t.Helper()
	if s.Exited() {
		t.Fatalf("server exited: %v", s.err)
	}
}
