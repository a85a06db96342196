// Package config loads the server's settings from defaults, an optional JSON
// file, environment variables and command-line flags, in that order of
// increasing precedence, and validates them.
package config

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// MinJWTSecretBytes is the shortest HS256 secret accepted. RFC 7518 requires
// a key at least as long as the hash output (256 bits).
const MinJWTSecretBytes = 32

// Config is every setting of the server. The zero value is not usable: start
// from Default.
type Config struct {
	// DatabaseURL is the PostgreSQL connection string. The server creates the
	// database when it does not exist and the role may create databases.
	DatabaseURL string
	// DatabaseMaxConns is the size of the PostgreSQL connection pool, shared
	// by every worker of every tenant; it overrides pool_max_conns in
	// DatabaseURL. Default 16.
	DatabaseMaxConns int
	// GroupCommit is how many batch transactions may run at once when
	// batches of different tenants share transactions, for batches under
	// 100 rows and again for larger ones; 0 gives every batch a
	// transaction of its own. Default 2.
	GroupCommit int
	// RabbitMQURL is the AMQP 0-9-1 broker URL.
	RabbitMQURL string
	// HTTPAddr is the listen address of the HTTP API, default ":8080".
	HTTPAddr string
	// JWTSecret is the HS256 key for API tokens, at least MinJWTSecretBytes
	// long. Required unless JWTPublicKeysFile or Dev is set.
	JWTSecret string
	// JWTPublicKeysFile names a file of public keys for RS256 and ES256
	// tokens: PEM PUBLIC KEY blocks or a JWK Set (api.ParsePublicKeys
	// describes both). Default none, which accepts only HS256 tokens.
	JWTPublicKeysFile string
	// JWTIssuer, when set, must equal the iss claim of every token. Default
	// none (iss is not checked).
	JWTIssuer string
	// JWTAudience, when set, must be among the aud claim values of every
	// token. Default none (aud is not checked).
	JWTAudience string
	// CursorSecret is the key of the pagination cursors' MAC, at least
	// MinJWTSecretBytes long. Default: derived from JWTSecret. Without
	// either, the server makes a random key at each start, and cursors
	// from before a restart are rejected.
	CursorSecret string
	// PublishRateLimit is the sustained rate, in messages per second, at
	// which each tenant may publish over HTTP. Default 0: no limit.
	PublishRateLimit float64
	// PublishRateBurst is how many messages a tenant may publish at once
	// before PublishRateLimit applies; it also caps the messages of one
	// request. Default 0: the larger of 1000 (the batch maximum) and one
	// second of PublishRateLimit.
	PublishRateBurst int
	// DefaultWorkerCount is the worker_count of a tenant created without one,
	// default 3.
	DefaultWorkerCount int
	// MaxWorkerCount is the largest worker_count the API accepts, default 64.
	MaxWorkerCount int
	// BatchSize is the number of messages at which a worker flushes its
	// batch, default 500.
	BatchSize int
	// Prefetch is the prefetch count of each tenant's consumer: how many
	// deliveries the tenant may hold unacked. Default 0: two full batches
	// per worker, at most 65535.
	Prefetch int
	// BatchTimeout is the longest a message waits in a worker's batch before
	// the batch is flushed, default 20ms. A worker also flushes as soon as
	// no more deliveries are waiting for it.
	BatchTimeout time.Duration
	// ShutdownTimeout bounds graceful shutdown, default 30s. HTTP requests
	// in flight get the first half of it.
	ShutdownTimeout time.Duration
	// TenantSyncInterval is how often the supervisor reloads the tenants
	// table to pick up tenants created or removed outside this process,
	// default 5s.
	TenantSyncInterval time.Duration
	// LogLevel is debug, info, warn or error, default info.
	LogLevel string
	// LogFormat is json or text, default json.
	LogFormat string
	// DebugAddr, when set, is the listen address of a separate HTTP server
	// with the net/http/pprof profiling endpoints under /debug/pprof/. It
	// has no authentication: bind it to loopback. Default off.
	DebugAddr string
	// Dev creates and keeps a random local JWT secret when JWTSecret is
	// empty. Never enable it in production.
	Dev bool
	// DevSecretFile is the file in which Dev keeps its secret, an absolute
	// path, default $XDG_CONFIG_HOME/messaging-server/dev-jwt-secret.
	DevSecretFile string
}

// Default returns the settings used when nothing else is configured. They
// match the compose file and local services on their standard ports.
func Default() Config {
	return Config{
		DatabaseURL:        "postgres://postgres:postgres@localhost:5432/messaging?sslmode=disable",
		DatabaseMaxConns:   16,
		GroupCommit:        2,
		RabbitMQURL:        "amqp://guest:guest@localhost:5672/",
		HTTPAddr:           ":8080",
		DefaultWorkerCount: 3,
		MaxWorkerCount:     64,
		BatchSize:          500,
		BatchTimeout:       20 * time.Millisecond,
		ShutdownTimeout:    30 * time.Second,
		TenantSyncInterval: 5 * time.Second,
		LogLevel:           "info",
		LogFormat:          "json",
	}
}

// setting is one configuration value with its file key, environment
// variable and flag name.
type setting struct {
	key   string // JSON file key; the flag is the same with dashes
	env   string
	usage string
	set   func(c *Config, v string) error
}

func settings() []setting {
	return []setting{
		{"database_url", "DATABASE_URL", "PostgreSQL connection URL", setString(func(c *Config) *string { return &c.DatabaseURL })},
		{"database_max_conns", "DATABASE_MAX_CONNS", "PostgreSQL connection pool size", setInt(func(c *Config) *int { return &c.DatabaseMaxConns })},
		{"group_commit", "GROUP_COMMIT", "batch transactions at once when tenants share them, for batches under 100 rows and again for larger ones (0 = a transaction per batch)", setInt(func(c *Config) *int { return &c.GroupCommit })},
		{"rabbitmq_url", "RABBITMQ_URL", "RabbitMQ AMQP URL", setString(func(c *Config) *string { return &c.RabbitMQURL })},
		{"http_addr", "HTTP_ADDR", "HTTP listen address", setString(func(c *Config) *string { return &c.HTTPAddr })},
		{"jwt_secret", "JWT_SECRET", "HS256 secret for API tokens (at least 32 bytes)", setString(func(c *Config) *string { return &c.JWTSecret })},
		{"jwt_public_keys_file", "JWT_PUBLIC_KEYS_FILE", "PEM or JWKS file of RS256/ES256 public keys for API tokens", setString(func(c *Config) *string { return &c.JWTPublicKeysFile })},
		{"jwt_issuer", "JWT_ISSUER", "required iss claim of API tokens (unchecked when empty)", setString(func(c *Config) *string { return &c.JWTIssuer })},
		{"jwt_audience", "JWT_AUDIENCE", "required aud claim value of API tokens (unchecked when empty)", setString(func(c *Config) *string { return &c.JWTAudience })},
		{"cursor_secret", "CURSOR_SECRET", "key of pagination cursors (at least 32 bytes; default derived from JWT_SECRET)", setString(func(c *Config) *string { return &c.CursorSecret })},
		{"publish_rate_limit", "PUBLISH_RATE_LIMIT", "messages per second each tenant may publish over HTTP (0 = no limit)", setFloat(func(c *Config) *float64 { return &c.PublishRateLimit })},
		{"publish_rate_burst", "PUBLISH_RATE_BURST", "messages a tenant may publish at once before the rate limit applies (0 = default)", setInt(func(c *Config) *int { return &c.PublishRateBurst })},
		{"default_worker_count", "DEFAULT_WORKER_COUNT", "worker_count of a tenant created without one", setInt(func(c *Config) *int { return &c.DefaultWorkerCount })},
		{"max_worker_count", "MAX_WORKER_COUNT", "largest worker_count the API accepts", setInt(func(c *Config) *int { return &c.MaxWorkerCount })},
		{"batch_size", "BATCH_SIZE", "messages per batch insert", setInt(func(c *Config) *int { return &c.BatchSize })},
		{"prefetch", "PREFETCH", "deliveries each tenant may hold unacked (0 = two full batches per worker)", setInt(func(c *Config) *int { return &c.Prefetch })},
		{"batch_timeout", "BATCH_TIMEOUT", "longest wait before a partial batch is flushed (duration, e.g. 20ms)", setDuration(func(c *Config) *time.Duration { return &c.BatchTimeout })},
		{"shutdown_timeout", "SHUTDOWN_TIMEOUT", "graceful shutdown deadline (duration)", setDuration(func(c *Config) *time.Duration { return &c.ShutdownTimeout })},
		{"tenant_sync_interval", "TENANT_SYNC_INTERVAL", "how often the tenants table is reloaded (duration)", setDuration(func(c *Config) *time.Duration { return &c.TenantSyncInterval })},
		{"log_level", "LOG_LEVEL", "log level: debug, info, warn or error", setString(func(c *Config) *string { return &c.LogLevel })},
		{"log_format", "LOG_FORMAT", "log format: json or text", setString(func(c *Config) *string { return &c.LogFormat })},
		{"debug_addr", "DEBUG_ADDR", "listen address of the unauthenticated pprof server, e.g. 127.0.0.1:6060 (default off)", setString(func(c *Config) *string { return &c.DebugAddr })},
		{"dev_secret_file", "DEV_SECRET_FILE", "absolute path of the file where -dev keeps its generated JWT secret", setString(func(c *Config) *string { return &c.DevSecretFile })},
	}
}

// legacyKeys maps file keys of the original go-messaging-system to their
// current names.
var legacyKeys = map[string]string{
	"concurrency": "default_worker_count",
}

func setString(field func(*Config) *string) func(*Config, string) error {
	return func(c *Config, v string) error {
		*field(c) = v
		return nil
	}
}

func setInt(field func(*Config) *int) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("%q is not a whole number", v)
		}
		*field(c) = n
		return nil
	}
}

func setFloat(field func(*Config) *float64) func(*Config, string) error {
	return func(c *Config, v string) error {
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return fmt.Errorf("%q is not a number such as 50 or 0.5", v)
		}
		*field(c) = f
		return nil
	}
}

func setDuration(field func(*Config) *time.Duration) func(*Config, string) error {
	return func(c *Config, v string) error {
		d, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("%q is not a duration such as 250ms or 30s", v)
		}
		*field(c) = d
		return nil
	}
}

// Load builds the configuration from args (without the program name and
// subcommand), the environment given by getenv, and the JSON file named by
// -config. Unknown file keys are logged as warnings, so an older file keeps
// working.
func Load(args []string, getenv func(string) string, logger *slog.Logger) (Config, error) {
	c := Default()
	all := settings()

	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	configFile := fs.String("config", getenv("CONFIG_FILE"), "JSON configuration file (keys in snake_case)")
	dev := fs.Bool("dev", false, "development mode: create and keep a local random JWT secret when none is set")
	flagValues := make(map[string]*string, len(all))
	for _, s := range all {
		flagValues[s.key] = fs.String(flagName(s.key), "", s.usage+" (env "+s.env+")")
	}
	if err := fs.Parse(args); err != nil {
		return c, fmt.Errorf("parse flags: %w\n%s", err, Usage())
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q\n%s", fs.Arg(0), Usage())
	}
	c.Dev = *dev

	if *configFile != "" {
		if err := applyFile(&c, *configFile, all, logger); err != nil {
			return c, err
		}
	}
	for _, s := range all {
		if v := getenv(s.env); v != "" {
			if err := s.set(&c, v); err != nil {
				return c, fmt.Errorf("invalid %s: %w", s.env, err)
			}
		}
	}
	set := make(map[string]bool)
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for _, s := range all {
		if set[flagName(s.key)] {
			if err := s.set(&c, *flagValues[s.key]); err != nil {
				return c, fmt.Errorf("invalid -%s: %w", flagName(s.key), err)
			}
		}
	}
	return c, c.Validate()
}

func flagName(key string) string { return strings.ReplaceAll(key, "_", "-") }

// Usage returns the help text listing every flag and its variable.
func Usage() string {
	var b strings.Builder
	b.WriteString("Flags (each also settable by the environment variable shown):\n")
	b.WriteString("  -config FILE\n\tJSON configuration file with snake_case keys (env CONFIG_FILE)\n")
	b.WriteString("  -dev\n\tdevelopment mode: generate and keep a local JWT secret when none is set\n")
	for _, s := range settings() {
		fmt.Fprintf(&b, "  -%s VALUE\n\t%s (env %s)\n", flagName(s.key), s.usage, s.env)
	}
	return b.String()
}

func applyFile(c *Config, path string, all []setting, logger *slog.Logger) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config file: %w", err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return fmt.Errorf("parse config file %s: %w", path, err)
	}
	byKey := make(map[string]setting, len(all))
	for _, s := range all {
		byKey[s.key] = s
	}

	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		name := k
		if current, ok := legacyKeys[k]; ok {
			if _, both := raw[current]; both {
				continue // the current key wins over its legacy name
			}
			name = current
		}
		s, ok := byKey[name]
		if !ok {
			logger.Warn("config: unknown key in config file is ignored", "file", path, "key", k)
			continue
		}
		v, err := scalarString(raw[k])
		if err == nil {
			err = s.set(c, v)
		}
		if err != nil {
			return fmt.Errorf("config file %s: invalid %s: %w", path, k, err)
		}
	}
	return nil
}

// scalarString returns a JSON string, number or boolean as text.
func scalarString(v json.RawMessage) (string, error) {
	var s string
	if err := json.Unmarshal(v, &s); err == nil {
		return s, nil
	}
	var n json.Number
	if err := json.Unmarshal(v, &n); err == nil {
		return n.String(), nil
	}
	var b bool
	if err := json.Unmarshal(v, &b); err == nil {
		return strconv.FormatBool(b), nil
	}
	return "", errors.New("must be a string or a number")
}

// Validate reports the first invalid setting, naming it and the fix.
func (c *Config) Validate() error {
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	check(c.DatabaseURL != "", "DATABASE_URL is empty: set it to a postgres:// URL")
	check(c.DatabaseMaxConns >= 1 && c.DatabaseMaxConns <= 1000,
		"DATABASE_MAX_CONNS is %d: it must be between 1 and 1000", c.DatabaseMaxConns)
	check(c.GroupCommit >= 0 && c.GroupCommit <= 1000,
		"GROUP_COMMIT is %d: it must be between 0 and 1000", c.GroupCommit)
	check(c.RabbitMQURL != "", "RABBITMQ_URL is empty: set it to an amqp:// URL")
	check(c.HTTPAddr != "", "HTTP_ADDR is empty: set it to a listen address such as :8080")
	check(c.MaxWorkerCount >= 1 && c.MaxWorkerCount <= 1024,
		"MAX_WORKER_COUNT is %d: it must be between 1 and 1024", c.MaxWorkerCount)
	check(c.DefaultWorkerCount >= 1 && c.DefaultWorkerCount <= c.MaxWorkerCount,
		"DEFAULT_WORKER_COUNT is %d: it must be between 1 and MAX_WORKER_COUNT (%d)", c.DefaultWorkerCount, c.MaxWorkerCount)
	check(c.BatchSize >= 1 && c.BatchSize <= 10000, "BATCH_SIZE is %d: it must be between 1 and 10000", c.BatchSize)
	check(c.Prefetch >= 0 && c.Prefetch <= 65535,
		"PREFETCH is %d: it must be 0 (two full batches per worker) or between 1 and 65535", c.Prefetch)
	check(c.BatchTimeout > 0 && c.BatchTimeout <= time.Minute,
		"BATCH_TIMEOUT is %s: it must be more than 0 and at most 1m", c.BatchTimeout)
	check(c.ShutdownTimeout > 0, "SHUTDOWN_TIMEOUT is %s: it must be more than 0", c.ShutdownTimeout)
	check(c.TenantSyncInterval > 0, "TENANT_SYNC_INTERVAL is %s: it must be more than 0", c.TenantSyncInterval)
	_, levelErr := ParseLevel(c.LogLevel)
	check(levelErr == nil, "LOG_LEVEL is %q: use debug, info, warn or error", c.LogLevel)
	check(c.LogFormat == "json" || c.LogFormat == "text", "LOG_FORMAT is %q: use json or text", c.LogFormat)

	c.validateAuth(check)
	if err := checkDevSecretFile(c.DevSecretFile); err != nil {
		errs = append(errs, err)
	}
	check(c.PublishRateLimit >= 0, "PUBLISH_RATE_LIMIT is %v: it must be 0 (no limit) or a positive number of messages per second",
		c.PublishRateLimit)
	check(c.PublishRateBurst >= 0, "PUBLISH_RATE_BURST is %d: it must be 0 (the default) or positive", c.PublishRateBurst)
	check(c.PublishRateBurst == 0 || c.PublishRateLimit > 0,
		"PUBLISH_RATE_BURST is %d but PUBLISH_RATE_LIMIT is 0: set PUBLISH_RATE_LIMIT too, or unset the burst", c.PublishRateBurst)
	return errors.Join(errs...)
}

// validateAuth checks the token and cursor keys. The public keys file is
// read and parsed when the server starts.
func (c *Config) validateAuth(check func(ok bool, format string, args ...any)) {
	switch {
	case c.JWTSecret != "":
		check(len(c.JWTSecret) >= MinJWTSecretBytes,
			"JWT_SECRET is %d bytes: it must be at least %d; generate one with 'openssl rand -hex 32'",
			len(c.JWTSecret), MinJWTSecretBytes)
	case c.JWTPublicKeysFile == "":
		check(c.Dev, "JWT_SECRET is not set, and neither is JWT_PUBLIC_KEYS_FILE: set JWT_SECRET to at least %d "+
			"random bytes (for example export JWT_SECRET=$(openssl rand -hex 32)), or JWT_PUBLIC_KEYS_FILE to a "+
			"PEM or JWKS file of RS256/ES256 public keys, or pass -dev for a local development secret",
			MinJWTSecretBytes)
	}
	check(c.CursorSecret == "" || len(c.CursorSecret) >= MinJWTSecretBytes,
		"CURSOR_SECRET is %d bytes: it must be at least %d; generate one with 'openssl rand -hex 32'",
		len(c.CursorSecret), MinJWTSecretBytes)
}

// ParseLevel converts a LOG_LEVEL value to a slog level.
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	err := l.UnmarshalText([]byte(s))
	return l, err
}

// NewLogger builds the server's logger from LogLevel and LogFormat.
func (c *Config) NewLogger(w io.Writer) *slog.Logger {
	level, _ := ParseLevel(c.LogLevel)
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: durationsAsText}
	if c.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// durationsAsText writes durations as "1.5s" instead of the JSON handler's
// integer nanoseconds, so a log reader needs no unit.
func durationsAsText(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		return slog.String(a.Key, a.Value.Duration().String())
	}
	return a
}
