package testenv

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
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
