package api

import (
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// startServer serves env's handler with NewServer's limits on a loopback
// port and returns its base URL.
func startServer(t *testing.T, env *testEnv) string {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := NewServer(listener.Addr().String(), env.handler)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(listener)
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		require.NoError(t, srv.Shutdown(ctx))
		<-done
	})
	return "http://" + listener.Addr().String()
}

func TestServerRejectsOversizedHeaders(t *testing.T) {
	t.Parallel()
	base := startServer(t, setup(t))
	client := &http.Client{Timeout: 5 * time.Second}

	req, err := http.NewRequest(http.MethodGet, base+"/health", nil)
	require.NoError(t, err)
	req.Header.Set("X-Padding", strings.Repeat("a", 2*ServerMaxHeaderBytes))
	resp, err := client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusRequestHeaderFieldsTooLarge, resp.StatusCode)
	client.CloseIdleConnections()
}

func TestServerRejectsOversizedBodyOverTheWire(t *testing.T) {
	t.Parallel()
	base := startServer(t, setup(t))
	client := &http.Client{Timeout: 10 * time.Second}

	body := `{"payload": "` + strings.Repeat("a", DefaultMaxBodyBytes) + `"}`
	req, err := http.NewRequest(http.MethodPost, base+"/api/v1/messages", strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+tenantToken(t, "alpha"))
	resp, err := client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)
	client.CloseIdleConnections()
}

// A client that never finishes its headers is cut off after
// ServerReadHeaderTimeout instead of holding a connection forever.
func TestServerDropsSlowHeaderClient(t *testing.T) {
	t.Parallel()
	base := startServer(t, setup(t))
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(base, "http://"), time.Second)
	require.NoError(t, err)
	defer conn.Close()
	_, err = conn.Write([]byte("GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "))
	require.NoError(t, err)

	require.NoError(t, conn.SetReadDeadline(time.Now().Add(ServerReadHeaderTimeout+5*time.Second)))
	buf := make([]byte, 512)
	started := time.Now()
	_, err = conn.Read(buf)
	for err == nil {
		_, err = conn.Read(buf)
	}
	require.Less(t, time.Since(started), ServerReadHeaderTimeout+4*time.Second, "closed by the server: %v", err)
}
