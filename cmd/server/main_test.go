package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/api"
	"github.com/go-messaging-system/messaging/internal/testenv"
	"github.com/go-messaging-system/messaging/persistence"
)

const testSecret = "0123456789abcdef0123456789abcdef"

func runCmd(t *testing.T, vars map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(args, func(k string) string { return vars[k] }, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func parseClaims(t *testing.T, token string) *api.Claims {
	t.Helper()
	claims := &api.Claims{}
	_, err := jwt.ParseWithClaims(strings.TrimSpace(token), claims, func(*jwt.Token) (any, error) {
		return []byte(testSecret), nil
	}, jwt.WithValidMethods([]string{"HS256"}), jwt.WithExpirationRequired())
	require.NoError(t, err)
	return claims
}

func TestTokenCommand(t *testing.T) {
	t.Parallel()
	vars := map[string]string{"JWT_SECRET": testSecret}

	code, out, errOut := runCmd(t, vars, "token", "-role", "admin")
	require.Equal(t, 0, code, errOut)
	require.Equal(t, api.RoleAdmin, parseClaims(t, out).Role)

	code, out, errOut = runCmd(t, vars, "token", "--role", "tenant", "--tenant=acme", "-ttl", "5m")
	require.Equal(t, 0, code, errOut)
	claims := parseClaims(t, out)
	require.Equal(t, api.RoleTenant, claims.Role)
	require.Equal(t, "acme", claims.TenantID)
	require.WithinDuration(t, time.Now().Add(5*time.Minute), claims.ExpiresAt.Time, time.Minute)
}

func TestTokenCommandRejectsBadInput(t *testing.T) {
	t.Parallel()
	vars := map[string]string{"JWT_SECRET": testSecret}
	cases := map[string][]string{
		"no role":           {"token"},
		"unknown role":      {"token", "-role", "root"},
		"tenant without id": {"token", "-role", "tenant"},
		"invalid id":        {"token", "-role", "tenant", "-tenant", "Bad/ID"},
		"admin with id":     {"token", "-role", "admin", "-tenant", "acme"},
		"bad ttl":           {"token", "-role", "admin", "-ttl", "forever"},
	}
	for name, args := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			code, out, errOut := runCmd(t, vars, args...)
			require.Equal(t, 2, code)
			require.Empty(t, out, "no token is printed")
			require.Contains(t, errOut, "error:")
		})
	}
}

func TestTokenCommandDevSecret(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "secret")
	vars := map[string]string{"DEV_SECRET_FILE": path}
	code, first, errOut := runCmd(t, vars, "token", "-role", "admin", "-dev")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, errOut, "created a new development secret", "the first run warns that it made a secret")
	require.Contains(t, errOut, path)
	code, second, errOut := runCmd(t, vars, "token", "-dev", "-role", "admin")
	require.Equal(t, 0, code, errOut)
	require.Empty(t, errOut, "a later run reuses the secret silently")
	require.NotEmpty(t, strings.TrimSpace(first))
	require.NotEmpty(t, strings.TrimSpace(second))
}

// TestTokenCommandRejectsRelativeSecretFile runs in a temporary working
// directory, which a relative secret file would land in, so it cannot run
// in parallel.
func TestTokenCommandRejectsRelativeSecretFile(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	vars := map[string]string{"DEV_SECRET_FILE": "dev-jwt-secret"}
	code, out, errOut := runCmd(t, vars, "token", "-role", "admin", "-dev")
	require.Equal(t, 2, code)
	require.Empty(t, out, "no token is printed")
	require.Contains(t, errOut, `DEV_SECRET_FILE is "dev-jwt-secret", a relative path: give an absolute path`)
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Empty(t, entries, "the command created a secret file in the working directory")
}

func TestServeRequiresSecret(t *testing.T) {
	t.Parallel()
	code, _, errOut := runCmd(t, map[string]string{})
	require.Equal(t, 2, code)
	require.Contains(t, errOut, "JWT_SECRET is not set")
	require.Contains(t, errOut, "-dev")
}

func TestHelpExitsZero(t *testing.T) {
	t.Parallel()
	code, out, _ := runCmd(t, nil, "-h")
	require.Equal(t, 0, code)
	require.Contains(t, out, "server migrate")
}

func TestMigrateCommand(t *testing.T) {
	t.Parallel()
	dbURL := testenv.NewDatabase(t)
	vars := map[string]string{"JWT_SECRET": testSecret, "DATABASE_URL": dbURL}
	for i := 0; i < 2; i++ { // applying twice is a no-op
		code, _, errOut := runCmd(t, vars, "migrate")
		require.Equal(t, 0, code, errOut)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	store, err := persistence.Open(ctx, dbURL, nil)
	require.NoError(t, err)
	defer store.Close()
	tenants, err := store.ListTenants(ctx)
	require.NoError(t, err)
	require.Empty(t, tenants)
}

func TestSplitFlags(t *testing.T) {
	t.Parallel()
	own := map[string]bool{"role": true, "tenant": true}
	mine, rest := splitFlags([]string{"-role", "admin", "-dev", "--tenant=x", "-config", "c.json"}, own)
	require.Equal(t, []string{"-role", "admin", "--tenant=x"}, mine)
	require.Equal(t, []string{"-dev", "-config", "c.json"}, rest)
}

func TestDebugServer(t *testing.T) {
	t.Parallel()
	srv, err := startDebugServer("", nil)
	require.NoError(t, err)
	require.Nil(t, srv, "an empty address disables the debug server")

	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	srv, err = startDebugServer(addr, logger)
	require.NoError(t, err)
	t.Cleanup(func() { srv.Close() })

	res, err := http.Get("http://" + addr + "/debug/pprof/goroutine?debug=1")
	require.NoError(t, err)
	defer res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)
	body, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	require.Contains(t, string(body), "goroutine profile")
}

func TestServeStopsCleanlyWhileWaitingForDatabase(t *testing.T) {
	t.Parallel()
	// Nothing listens on port 1, so the server keeps retrying the database
	// until the context, standing in for SIGTERM, ends.
	vars := map[string]string{
		"JWT_SECRET":   testSecret,
		"DATABASE_URL": "postgres://postgres@127.0.0.1:1/none?sslmode=disable&connect_timeout=1",
		"HTTP_ADDR":    "127.0.0.1:0",
	}
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	var stderr bytes.Buffer
	err := serve(ctx, nil, func(k string) string { return vars[k] }, &stderr)
	require.NoError(t, err, "a stop requested during start is not a failure")
	require.Contains(t, stderr.String(), "database not reachable; retrying")
	require.Contains(t, stderr.String(), "stopped before it was ready")
}
