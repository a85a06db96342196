package main

import (
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// parse runs parseConfig with env as the whole environment.
func parse(t *testing.T, env map[string]string, args ...string) (Config, error) {
	t.Helper()
	return parseConfig(args, func(k string) string { return env[k] }, io.Discard)
}

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	c, err := parse(t, nil, "-jwt-secret", "s", "-messages", "10")
	require.NoError(t, err)
	require.Equal(t, "http://127.0.0.1:8080", c.Server)
	require.Equal(t, viaAMQP, c.Via)
	require.Equal(t, 256, c.PayloadBytes)
	require.Equal(t, phaseAll, c.Phase)
	require.Equal(t, 500, c.BatchSize)
	require.Equal(t, 20*time.Millisecond, c.BatchTimeout)
	require.Regexp(t, `^lt-[a-z0-9]{8}$`, c.TenantPrefix)
	require.Equal(t, []string{c.TenantPrefix + "-0", c.TenantPrefix + "-1", c.TenantPrefix + "-2", c.TenantPrefix + "-3"},
		c.tenantIDs())
}

func TestConfigReadsEnvironment(t *testing.T) {
	t.Parallel()
	env := map[string]string{"ADMIN_TOKEN": "tok", "BATCH_SIZE": "50", "BATCH_TIMEOUT": "5ms"}
	c, err := parse(t, env, "-messages", "10")
	require.NoError(t, err)
	require.Equal(t, "tok", c.AdminToken)
	require.Equal(t, 50, c.BatchSize)
	require.Equal(t, 5*time.Millisecond, c.BatchTimeout)

	c, err = parse(t, env, "-messages", "10", "-admin-token", "flag", "-batch-size", "7")
	require.NoError(t, err)
	require.Equal(t, "flag", c.AdminToken, "the flag wins over the environment")
	require.Equal(t, 7, c.BatchSize)
}

func TestConfigRejectsInvalidFlags(t *testing.T) {
	t.Parallel()
	ok := []string{"-jwt-secret", "s"}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"skew above one", []string{"-messages", "10", "-skew", "1.5"}, "invalid -skew"},
		{"negative skew", []string{"-messages", "10", "-skew", "-0.1"}, "invalid -skew"},
		{"NaN skew", []string{"-messages", "10", "-skew", "NaN"}, "invalid -skew"},
		{"skew not a number", []string{"-messages", "10", "-skew", "lots"}, "invalid value"},
		{"negative rate", []string{"-messages", "10", "-rate", "-1"}, "invalid -rate"},
		{"infinite rate", []string{"-messages", "10", "-rate", "+Inf"}, "invalid -rate"},
		{"both messages and duration", []string{"-messages", "10", "-duration", "1s"}, "exclusive"},
		{"neither messages nor duration", nil, "missing -messages or -duration"},
		{"negative messages", []string{"-messages", "-5"}, "invalid -messages"},
		{"negative duration", []string{"-duration", "-1s"}, "invalid -duration"},
		{"unknown via", []string{"-messages", "10", "-via", "smtp"}, "invalid -via"},
		{"empty via", []string{"-messages", "10", "-via", ""}, "invalid -via"},
		{"zero tenants", []string{"-messages", "10", "-tenants", "0"}, "invalid -tenants"},
		{"negative workers", []string{"-messages", "10", "-workers", "-1"}, "invalid -workers"},
		{"zero publishers", []string{"-messages", "10", "-publishers", "0"}, "invalid -publishers"},
		{"tiny payload", []string{"-messages", "10", "-payload-bytes", "5"}, "invalid -payload-bytes"},
		{"huge payload", []string{"-messages", "10", "-payload-bytes", "2000000"}, "invalid -payload-bytes"},
		{"zero batch", []string{"-messages", "10", "-batch", "0"}, "invalid -batch"},
		{"zero timeout", []string{"-messages", "10", "-timeout", "0s"}, "invalid -timeout"},
		{"prefix with capitals", []string{"-messages", "10", "-tenant-prefix", "Load"}, "invalid -tenant-prefix"},
		{"prefix with a slash", []string{"-messages", "10", "-tenant-prefix", "a/b"}, "invalid -tenant-prefix"},
		{"unknown baseline", []string{"-messages", "10", "-baseline", "fast"}, "invalid -baseline"},
		{"batch baseline without database", []string{"-messages", "10", "-baseline", "batch"}, "needs -database-url"},
		{"baseline over http", []string{"-messages", "10", "-baseline", "broker", "-via", "http"}, "publishes over AMQP"},
		{"baseline batch size", []string{"-messages", "10", "-baseline", "broker", "-batch-size", "0"}, "invalid -batch-size"},
		{"backlog against the server", []string{"-messages", "10", "-backlog"}, "-backlog is for baselines"},
		{"backlog for a duration", []string{"-duration", "1s", "-baseline", "broker", "-backlog"}, "-backlog needs -messages"},
		{"prefetch against the server", []string{"-messages", "10", "-prefetch", "10"}, "-prefetch is for baselines"},
		{"negative prefetch", []string{"-messages", "10", "-baseline", "broker", "-prefetch", "-1"}, "invalid -prefetch -1"},
		{"huge prefetch", []string{"-messages", "10", "-baseline", "broker", "-prefetch", "65536"}, "invalid -prefetch 65536"},
		{"connections against the server", []string{"-messages", "10", "-connections", "2"}, "-connections is for baselines"},
		{"no connections", []string{"-messages", "10", "-baseline", "broker", "-connections", "0"}, "invalid -connections 0"},
		{"more connections than tenants", []string{"-messages", "10", "-baseline", "broker", "-tenants", "2", "-connections", "3"},
			"invalid -connections 3"},
		{"unknown phase", []string{"-messages", "10", "-phase", "later"}, "invalid -phase"},
		{"verify without prefix", []string{"-messages", "10", "-phase", "verify"}, "needs the -tenant-prefix"},
		{"publish for a duration", []string{"-duration", "1s", "-phase", "publish", "-tenant-prefix", "x"}, "needs -messages"},
		{"stray argument", []string{"-messages", "10", "extra"}, "unexpected argument"},
		{"unknown flag", []string{"-messages", "10", "-fast"}, "not defined"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := parse(t, nil, append(append([]string{}, ok...), tc.args...)...)
			require.ErrorContains(t, err, tc.want)
			require.ErrorAs(t, err, new(usageError))
		})
	}
}

func TestConfigNeedsCredentials(t *testing.T) {
	t.Parallel()
	_, err := parse(t, nil, "-messages", "10")
	require.ErrorContains(t, err, "missing admin token")

	_, err = parse(t, nil, "-messages", "10", "-via", "http", "-admin-token", "tok")
	require.ErrorContains(t, err, "-via http needs -jwt-secret")

	_, err = parse(t, nil, "-messages", "10", "-phase", "publish", "-tenant-prefix", "x")
	require.NoError(t, err, "publishing over AMQP to existing tenants needs no token")

	_, err = parse(t, nil, "-messages", "10", "-baseline", "broker")
	require.NoError(t, err, "a baseline does not talk to the server")
}

func TestRunExitStatusForBadFlags(t *testing.T) {
	t.Parallel()
	code := run(t.Context(), []string{"-skew", "2"}, func(string) string { return "" }, io.Discard, io.Discard)
	require.Equal(t, 2, code)
	code = run(t.Context(), []string{"-h"}, func(string) string { return "" }, io.Discard, io.Discard)
	require.Equal(t, 0, code, "-h prints usage and succeeds")
}
