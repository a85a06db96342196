package config_test

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/config"
)

const secret = "0123456789abcdef0123456789abcdef"

func env(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.json")
	require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
	return path
}

func TestLoadDefaults(t *testing.T) {
	t.Parallel()
	c, err := config.Load(nil, env(map[string]string{"JWT_SECRET": secret}), discard())
	require.NoError(t, err)
	require.Equal(t, "postgres://postgres:postgres@localhost:5432/messaging?sslmode=disable", c.DatabaseURL)
	require.Equal(t, "amqp://guest:guest@localhost:5672/", c.RabbitMQURL)
	require.Equal(t, ":8080", c.HTTPAddr)
	require.Equal(t, 3, c.DefaultWorkerCount)
	require.Equal(t, 64, c.MaxWorkerCount)
	require.Equal(t, 30*time.Second, c.ShutdownTimeout)
	require.Equal(t, "info", c.LogLevel)
	require.Equal(t, "json", c.LogFormat)
	require.Equal(t, 2, c.GroupCommit)
	require.Zero(t, c.Prefetch, "0 derives the prefetch from the batch size and worker count")
}

func TestLoadSmallPoolWithDefaultGroupCommit(t *testing.T) {
	t.Parallel()
	c, err := config.Load(nil, env(map[string]string{"JWT_SECRET": secret, "DATABASE_MAX_CONNS": "1"}), discard())
	require.NoError(t, err)
	require.Equal(t, 1, c.DatabaseMaxConns)
	require.Equal(t, 2, c.GroupCommit)
}

func TestLoadPrecedence(t *testing.T) {
	t.Parallel()
	file := writeFile(t, `{"http_addr": ":1111", "batch_size": 10, "log_level": "warn", "batch_timeout": "5ms", "prefetch": 40}`)
	c, err := config.Load(
		[]string{"-config", file, "-http-addr", ":3333"},
		env(map[string]string{"JWT_SECRET": secret, "HTTP_ADDR": ":2222", "BATCH_SIZE": "20"}),
		discard())
	require.NoError(t, err)
	require.Equal(t, ":3333", c.HTTPAddr, "a flag wins over the environment and the file")
	require.Equal(t, 20, c.BatchSize, "the environment wins over the file")
	require.Equal(t, "warn", c.LogLevel, "the file wins over the defaults")
	require.Equal(t, 5*time.Millisecond, c.BatchTimeout)
	require.Equal(t, 40, c.Prefetch)
}

func TestLoadLegacyFile(t *testing.T) {
	t.Parallel()
	file := writeFile(t, `{
		"database_url": "postgres://u@db:5432/legacy",
		"rabbitmq_url": "amqp://u:p@mq:5672/",
		"concurrency": 7,
		"some_old_key": true
	}`)
	c, err := config.Load([]string{"-config", file}, env(map[string]string{"JWT_SECRET": secret}), discard())
	require.NoError(t, err)
	require.Equal(t, "postgres://u@db:5432/legacy", c.DatabaseURL)
	require.Equal(t, "amqp://u:p@mq:5672/", c.RabbitMQURL)
	require.Equal(t, 7, c.DefaultWorkerCount, "concurrency is the old name of default_worker_count")
}

func TestLoadRejectsInvalidValues(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		args []string
		env  map[string]string
		want string
	}{
		"missing secret":       {env: map[string]string{}, want: "JWT_SECRET is not set"},
		"short secret":         {env: map[string]string{"JWT_SECRET": "short"}, want: "at least 32"},
		"non-numeric batch":    {env: map[string]string{"JWT_SECRET": secret, "BATCH_SIZE": "ten"}, want: "BATCH_SIZE"},
		"zero batch":           {env: map[string]string{"JWT_SECRET": secret, "BATCH_SIZE": "0"}, want: "BATCH_SIZE is 0"},
		"bad duration":         {env: map[string]string{"JWT_SECRET": secret, "SHUTDOWN_TIMEOUT": "30"}, want: "SHUTDOWN_TIMEOUT"},
		"negative group":       {env: map[string]string{"JWT_SECRET": secret, "GROUP_COMMIT": "-1"}, want: "GROUP_COMMIT is -1"},
		"huge group":           {env: map[string]string{"JWT_SECRET": secret, "GROUP_COMMIT": "1001"}, want: "GROUP_COMMIT is 1001"},
		"negative prefetch":    {env: map[string]string{"JWT_SECRET": secret, "PREFETCH": "-1"}, want: "PREFETCH is -1"},
		"huge prefetch":        {env: map[string]string{"JWT_SECRET": secret, "PREFETCH": "65536"}, want: "PREFETCH is 65536"},
		"non-numeric prefetch": {env: map[string]string{"JWT_SECRET": secret, "PREFETCH": "lots"}, want: "PREFETCH"},
		"default above max":    {env: map[string]string{"JWT_SECRET": secret, "DEFAULT_WORKER_COUNT": "65"}, want: "DEFAULT_WORKER_COUNT"},
		"unknown level":        {env: map[string]string{"JWT_SECRET": secret, "LOG_LEVEL": "loud"}, want: "LOG_LEVEL"},
		"unknown format":       {env: map[string]string{"JWT_SECRET": secret, "LOG_FORMAT": "xml"}, want: "LOG_FORMAT"},
		"unknown flag":         {args: []string{"-nope"}, env: map[string]string{"JWT_SECRET": secret}, want: "-nope"},
		"stray argument":       {args: []string{"extra"}, env: map[string]string{"JWT_SECRET": secret}, want: "unexpected argument"},
		"missing config file":  {args: []string{"-config", "/nonexistent/c.json"}, env: map[string]string{"JWT_SECRET": secret}, want: "read config file"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := config.Load(tc.args, env(tc.env), discard())
			require.Error(t, err)
			require.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestLoadRejectsMalformedFile(t *testing.T) {
	t.Parallel()
	for name, content := range map[string]string{
		"not json":       `{"http_addr": `,
		"array":          `[1, 2]`,
		"object value":   `{"batch_size": {"n": 1}}`,
		"string for int": `{"batch_size": "many"}`,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := config.Load([]string{"-config", writeFile(t, content)},
				env(map[string]string{"JWT_SECRET": secret}), discard())
			require.Error(t, err)
			require.Contains(t, err.Error(), "config file")
		})
	}
}

func TestDevSecretPersists(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sub", "secret")
	c, err := config.Load([]string{"-dev"}, env(map[string]string{"DEV_SECRET_FILE": path}), discard())
	require.NoError(t, err)
	source, err := c.EnsureDevSecret()
	require.NoError(t, err)
	require.Equal(t, config.DevSecretCreated, source)
	require.GreaterOrEqual(t, len(c.JWTSecret), config.MinJWTSecretBytes)
	info, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm(), "the secret file is private")

	again, err := config.Load([]string{"-dev"}, env(map[string]string{"DEV_SECRET_FILE": path}), discard())
	require.NoError(t, err)
	source, err = again.EnsureDevSecret()
	require.NoError(t, err)
	require.Equal(t, config.DevSecretRead, source)
	require.Equal(t, c.JWTSecret, again.JWTSecret, "a second run reuses the kept secret")

	again.JWTSecret = "set-by-the-environment-and-at-least-32-bytes"
	source, err = again.EnsureDevSecret()
	require.NoError(t, err)
	require.Equal(t, config.DevSecretUnused, source, "JWT_SECRET wins over -dev")
}

func TestDevSecretRejectsShortFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "secret")
	require.NoError(t, os.WriteFile(path, []byte("tiny\n"), 0o600))
	c, err := config.Load([]string{"-dev"}, env(map[string]string{"DEV_SECRET_FILE": path}), discard())
	require.NoError(t, err)
	_, err = c.EnsureDevSecret()
	require.ErrorContains(t, err, "delete the file")
}

func TestDevSecretConcurrentFirstRuns(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "secret")
	secrets := make([]string, 8)
	var wg sync.WaitGroup
	for i := range secrets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := config.Default()
			c.Dev, c.DevSecretFile = true, path
			_, err := c.EnsureDevSecret()
			require.NoError(t, err)
			secrets[i] = c.JWTSecret
		}()
	}
	wg.Wait()
	for _, s := range secrets {
		require.Equal(t, secrets[0], s, "every concurrent first run ends with the same secret")
	}
}

func TestUsageListsEveryVariable(t *testing.T) {
	t.Parallel()
	u := config.Usage()
	for _, v := range []string{"DATABASE_URL", "RABBITMQ_URL", "HTTP_ADDR", "JWT_SECRET", "DEFAULT_WORKER_COUNT",
		"MAX_WORKER_COUNT", "BATCH_SIZE", "BATCH_TIMEOUT", "GROUP_COMMIT", "PREFETCH", "SHUTDOWN_TIMEOUT", "LOG_LEVEL", "LOG_FORMAT"} {
		require.True(t, strings.Contains(u, v), "usage lacks %s", v)
	}
}

func TestLoggerWritesDurationsAsText(t *testing.T) {
	t.Parallel()
	c := config.Default()
	var buf strings.Builder
	c.NewLogger(&buf).Info("x", "wait", 1500*time.Millisecond)
	require.Contains(t, buf.String(), `"wait":"1.5s"`)
}

func TestExampleFileHoldsTheDefaults(t *testing.T) {
	t.Parallel()
	var log bytes.Buffer
	c, err := config.Load([]string{"-config", "config.example.json"}, env(map[string]string{"JWT_SECRET": secret}),
		slog.New(slog.NewTextHandler(&log, nil)))
	require.NoError(t, err)
	require.Empty(t, log.String(), "the example file has only known keys")
	want, err := config.Load(nil, env(map[string]string{"JWT_SECRET": secret}), discard())
	require.NoError(t, err)
	require.Equal(t, want, c, "every key of the example file has its default value")
}

func TestDevSecretRejectsDanglingSymlink(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "secret")
	require.NoError(t, os.Symlink(filepath.Join(dir, "missing", "target"), path))
	c := config.Default()
	c.Dev, c.DevSecretFile = true, path

	source, err := c.EnsureDevSecret()
	require.ErrorContains(t, err, "symbolic link")
	require.Equal(t, config.DevSecretUnused, source)
	require.Empty(t, c.JWTSecret)
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 1, "only the link is left: no temporary file")
}

func TestDevSecretRejectsRelativeFile(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		args []string
		vars map[string]string
	}{
		"variable": {[]string{"-dev"}, map[string]string{"DEV_SECRET_FILE": "dev-jwt-secret"}},
		"flag":     {[]string{"-dev", "-dev-secret-file", "./secrets/dev-jwt-secret"}, nil},
		"file key": {[]string{"-dev", "-config", writeFile(t, `{"dev_secret_file": "../dev-jwt-secret"}`)}, nil},
		"tilde":    {[]string{"-dev"}, map[string]string{"DEV_SECRET_FILE": "~/dev-jwt-secret"}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := config.Load(tc.args, env(tc.vars), discard())
			require.ErrorContains(t, err, "DEV_SECRET_FILE")
			require.ErrorContains(t, err, "give an absolute path")
		})
	}

	c, err := config.Load([]string{"-dev"}, env(map[string]string{"DEV_SECRET_FILE": "/abs/dev-jwt-secret"}), discard())
	require.NoError(t, err, "an absolute path is accepted")
	require.Equal(t, "/abs/dev-jwt-secret", c.DevSecretFile)
}

// TestDevSecretRelativePathsCreateNothing checks that a relative
// DEV_SECRET_FILE or XDG_CONFIG_HOME that bypasses Load still writes no
// file under the working directory. It changes the working directory and
// the environment, so it cannot run in parallel.
func TestDevSecretRelativePathsCreateNothing(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)

	c := config.Default()
	c.Dev, c.DevSecretFile = true, "dev-jwt-secret"
	_, err := c.EnsureDevSecret()
	require.ErrorContains(t, err, "DEV_SECRET_FILE")
	require.ErrorContains(t, err, "give an absolute path")

	t.Setenv("XDG_CONFIG_HOME", "config")
	c = config.Default()
	c.Dev = true
	_, err = c.EnsureDevSecret()
	require.ErrorContains(t, err, "XDG_CONFIG_HOME")
	require.ErrorContains(t, err, "absolute path")

	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Empty(t, entries, "a relative path created a file in the working directory")
}
