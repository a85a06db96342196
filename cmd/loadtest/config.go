package main

import (
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/go-messaging-system/messaging/transport"
)

// Transports a run can publish over.
const (
	viaAMQP = "amqp"
	viaHTTP = "http"
)

// Baselines: the same load without the server, to compare against.
const (
	baselineNone   = ""
	baselineNaive  = "naive"
	baselineBatch  = "batch"
	baselineBroker = "broker"
)

// Phases split one run into steps, so that a backlog can be published
// while the server is stopped.
const (
	phaseAll     = "all"     // create tenants, publish, wait, verify, delete
	phaseSetup   = "setup"   // create tenants and keep them
	phasePublish = "publish" // publish to existing tenants and exit
	phaseVerify  = "verify"  // wait for and verify what phase publish sent, then delete
)

// maxPayloadBytes matches the server's default limit on one message body.
const maxPayloadBytes = 1 << 20

// Config is one run of the harness, filled from flags and the environment.
type Config struct {
	Server       string        // base URL of the server's HTTP API
	RabbitMQ     string        // AMQP URL, for publishing over AMQP and for baselines
	AdminToken   string        // admin JWT; minted from JWTSecret when empty
	JWTSecret    string        // HS256 secret of the server, used to mint tokens
	DatabaseURL  string        // PostgreSQL; needed for naive and batch baselines
	Tenants      int           // number of tenants
	Workers      int           // worker_count of each tenant; 0 means the server's default
	Publishers   int           // concurrent publishing goroutines
	Messages     int           // total messages; exclusive with Duration
	Duration     time.Duration // publishing time; exclusive with Messages
	Rate         float64       // offered messages per second, 0 means flat out
	PayloadBytes int           // size of each JSON payload
	Batch        int           // messages per HTTP request or per AMQP confirm wait
	Via          string        // viaAMQP or viaHTTP
	Skew         float64       // share of the load that goes to the first tenant
	Keep         bool          // keep the tenants after the run
	JSON         bool          // print the report as one JSON object
	Baseline     string        // baselineNaive, baselineBatch, baselineBroker or none
	BatchSize    int           // batch baseline: flush at this many messages
	BatchTimeout time.Duration // batch baseline: flush a partial batch after this long
	Timeout      time.Duration // maximum wait for every message to be stored
	TenantPrefix string        // tenant ids are <prefix>-<index>
	Phase        string        // phaseAll, phaseSetup, phasePublish or phaseVerify
	Backlog      bool          // baselines: publish everything before the consumers start
	Prefetch     int           // baselines: prefetch count of each consumer, or 0 for the default
	Connections  int           // baselines: consume connections the tenants' channels are spread over
	CPUProfile   string        // write a CPU profile of the harness to this file
}

// usageError is a configuration error: the process exits with status 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// parseConfig reads args (without the program name) and the environment
// through getenv, and validates the result.
func parseConfig(args []string, getenv func(string) string, output io.Writer) (Config, error) {
	var c Config
	fs := newFlagSet(&c, getenv, output)
	if err := fs.Parse(args); err != nil {
		return c, usageError{err}
	}
	if fs.NArg() > 0 {
		return c, usageError{fmt.Errorf("unexpected argument %q: all options are flags", fs.Arg(0))}
	}

	explicit := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { explicit[f.Name] = true })
	if c.AdminToken == "" {
		c.AdminToken = getenv("ADMIN_TOKEN")
	}
	if c.TenantPrefix == "" {
		c.TenantPrefix = "lt-" + strings.ToLower(rand.Text()[:8])
	}
	if err := c.validate(explicit); err != nil {
		return c, usageError{err}
	}
	return c, nil
}

func newFlagSet(c *Config, getenv func(string) string, output io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("loadtest", flag.ContinueOnError)
	fs.SetOutput(output)
	fs.StringVar(&c.Server, "server", "http://127.0.0.1:8080", "base `URL` of the server's HTTP API")
	fs.StringVar(&c.RabbitMQ, "rabbitmq", "amqp://guest:guest@127.0.0.1:5672/", "AMQP `URL` of RabbitMQ")
	fs.StringVar(&c.AdminToken, "admin-token", "", "admin JWT (default $ADMIN_TOKEN, or one minted with -jwt-secret)")
	fs.StringVar(&c.JWTSecret, "jwt-secret", "", "the server's HS256 `secret`, to mint admin and tenant tokens (needed for -via http)")
	fs.StringVar(&c.DatabaseURL, "database-url", "", "PostgreSQL `URL`: read stored rows from it instead of the list API; required by -baseline naive|batch")
	fs.IntVar(&c.Tenants, "tenants", 4, "number of tenants")
	fs.IntVar(&c.Workers, "workers", 0, "worker_count of each tenant (0 = the server's default)")
	fs.IntVar(&c.Publishers, "publishers", 4, "concurrent publishers (AMQP channels or HTTP requests in flight)")
	fs.IntVar(&c.Messages, "messages", 0, "total messages to publish (exclusive with -duration)")
	fs.DurationVar(&c.Duration, "duration", 0, "publish for this long (exclusive with -messages)")
	fs.Float64Var(&c.Rate, "rate", 0, "offered load in messages per second over all tenants (0 = flat out)")
	fs.IntVar(&c.PayloadBytes, "payload-bytes", 256, "size of each JSON payload in bytes")
	fs.IntVar(&c.Batch, "batch", 100, "messages per HTTP request, and per AMQP confirm wait when flat out")
	fs.StringVar(&c.Via, "via", viaAMQP, "publish over amqp (exchange messages) or http (POST /api/v1/messages)")
	fs.Float64Var(&c.Skew, "skew", 0, "share of the load sent to the first tenant, 0..1 (0 = even split)")
	fs.BoolVar(&c.Keep, "keep", false, "keep the tenants (and their messages) after the run")
	fs.BoolVar(&c.JSON, "json", false, "print the report as one JSON object")
	fs.StringVar(&c.Baseline, "baseline", "", "run a baseline without the server: naive, batch or broker")
	fs.IntVar(&c.BatchSize, "batch-size", envInt(getenv, "BATCH_SIZE", 500), "batch baseline: flush at this many messages ($BATCH_SIZE sets the default)")
	fs.DurationVar(&c.BatchTimeout, "batch-timeout", envDuration(getenv, "BATCH_TIMEOUT", 20*time.Millisecond),
		"batch baseline: flush a partial batch after this long ($BATCH_TIMEOUT sets the default)")
	fs.DurationVar(&c.Timeout, "timeout", 2*time.Minute, "maximum wait, after publishing, for every message to be stored")
	fs.StringVar(&c.TenantPrefix, "tenant-prefix", "", "tenant ids are `PREFIX`-0, PREFIX-1, ... (default lt-<random>)")
	fs.StringVar(&c.Phase, "phase", phaseAll, "all, or one step: setup (create tenants), publish (to existing tenants), verify (wait, check, delete)")
	fs.BoolVar(&c.Backlog, "backlog", false,
		"baselines: publish every message before the consumers start, so stored_per_second is the drain rate of a backlog")
	fs.IntVar(&c.Prefetch, "prefetch", 0,
		"baselines: prefetch count of each tenant's consumer (default workers × -batch-size, which is half the server's, and 1 for naive)")
	fs.IntVar(&c.Connections, "connections", 1, "baselines: consume connections, each tenant's channel on connection index mod N (each extra one also opens an idle publish connection)")
	fs.StringVar(&c.CPUProfile, "cpuprofile", "", "write a CPU profile of this process (harness and baseline consumers) to `FILE`")
	return fs
}

// envInt returns the integer in variable name, or def when it is unset or
// not an integer; validate reports a bad value through the flag.
func envInt(getenv func(string) string, name string, def int) int {
	if n, err := strconv.Atoi(getenv(name)); err == nil {
		return n
	}
	return def
}

func envDuration(getenv func(string) string, name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(getenv(name)); err == nil {
		return d
	}
	return def
}

var tenantPrefixPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,50}$`)

// validate checks every field; explicit holds the flags given on the
// command line.
func (c *Config) validate(explicit map[string]bool) error {
	checks := []func() error{c.validateLoad, c.validateTransport, c.validateMode}
	for _, check := range checks {
		if err := check(); err != nil {
			return err
		}
	}
	if c.Phase != phaseAll && c.Phase != phaseSetup && !explicit["tenant-prefix"] {
		return fmt.Errorf("-phase %s needs the -tenant-prefix of the setup phase", c.Phase)
	}
	return nil
}

func (c *Config) validateLoad() error {
	switch {
	case c.Messages < 0:
		return fmt.Errorf("invalid -messages %d: must be positive", c.Messages)
	case c.Duration < 0:
		return fmt.Errorf("invalid -duration %s: must be positive", c.Duration)
	case c.Messages > 0 && c.Duration > 0:
		return errors.New("-messages and -duration are exclusive: set one of them")
	case c.Messages == 0 && c.Duration == 0 && c.Phase != phaseSetup:
		return errors.New("missing -messages or -duration: set one of them")
	case math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0) || c.Rate < 0:
		return fmt.Errorf("invalid -rate %v: must be 0 (flat out) or a positive number of messages per second", c.Rate)
	case math.IsNaN(c.Skew) || c.Skew < 0 || c.Skew > 1:
		return fmt.Errorf("invalid -skew %v: must be between 0 and 1", c.Skew)
	case c.Tenants < 1 || c.Tenants > 10000:
		return fmt.Errorf("invalid -tenants %d: must be between 1 and 10000", c.Tenants)
	case c.Workers < 0:
		return fmt.Errorf("invalid -workers %d: must be 0 (server default) or more", c.Workers)
	case c.Publishers < 1 || c.Publishers > 1024:
		return fmt.Errorf("invalid -publishers %d: must be between 1 and 1024", c.Publishers)
	case c.PayloadBytes < minPayloadBytes || c.PayloadBytes > maxPayloadBytes:
		return fmt.Errorf("invalid -payload-bytes %d: must be between %d and %d", c.PayloadBytes, minPayloadBytes, maxPayloadBytes)
	case c.Batch < 1 || c.Batch > 1000:
		return fmt.Errorf("invalid -batch %d: must be between 1 and 1000", c.Batch)
	case c.Timeout <= 0:
		return fmt.Errorf("invalid -timeout %s: must be positive", c.Timeout)
	case !tenantPrefixPattern.MatchString(c.TenantPrefix):
		return fmt.Errorf("invalid -tenant-prefix %q: must match %s", c.TenantPrefix, tenantPrefixPattern)
	}
	return nil
}

func (c *Config) validateTransport() error {
	switch c.Via {
	case viaAMQP:
		if c.RabbitMQ == "" {
			return errors.New("missing -rabbitmq: -via amqp publishes to RabbitMQ")
		}
	case viaHTTP:
		if c.JWTSecret == "" {
			return errors.New("-via http needs -jwt-secret to sign a token for each tenant")
		}
	default:
		return fmt.Errorf("invalid -via %q: must be amqp or http", c.Via)
	}
	if c.Baseline == baselineNone && c.Phase != phasePublish && c.AdminToken == "" && c.JWTSecret == "" {
		return errors.New("missing admin token: set -admin-token, $ADMIN_TOKEN or -jwt-secret")
	}
	return nil
}

func (c *Config) validateMode() error {
	switch c.Phase {
	case phaseAll, phaseSetup, phasePublish, phaseVerify:
	default:
		return fmt.Errorf("invalid -phase %q: must be all, setup, publish or verify", c.Phase)
	}
	if c.Phase != phaseAll && c.Phase != phaseSetup && c.Messages == 0 {
		return fmt.Errorf("-phase %s needs -messages, so that verify knows what publish sent", c.Phase)
	}

	switch c.Baseline {
	case baselineNone:
		switch {
		case c.Backlog:
			return errors.New("-backlog is for baselines: against the server, publish with -phase publish while it is stopped")
		case c.Prefetch != 0:
			return errors.New("-prefetch is for baselines: set the server's PREFETCH instead")
		case c.Connections != 1:
			return errors.New("-connections is for baselines: the server has one consume connection")
		}
		return nil
	case baselineNaive, baselineBatch:
		if c.DatabaseURL == "" {
			return fmt.Errorf("-baseline %s needs -database-url (a database the server does not use)", c.Baseline)
		}
	case baselineBroker:
	default:
		return fmt.Errorf("invalid -baseline %q: must be naive, batch or broker", c.Baseline)
	}
	switch {
	case c.Via != viaAMQP:
		return fmt.Errorf("-baseline %s publishes over AMQP: drop -via %s", c.Baseline, c.Via)
	case c.Phase != phaseAll:
		return fmt.Errorf("-baseline %s runs all phases in one process: drop -phase", c.Baseline)
	case c.Backlog && c.Messages == 0:
		return errors.New("-backlog needs -messages: a backlog of a duration has no end to drain")
	case c.BatchSize < 1 || c.BatchSize > 10000:
		return fmt.Errorf("invalid -batch-size %d: must be between 1 and 10000", c.BatchSize)
	case c.BatchTimeout <= 0:
		return fmt.Errorf("invalid -batch-timeout %s: must be positive", c.BatchTimeout)
	case c.Prefetch < 0 || c.Prefetch > transport.MaxPrefetch:
		return fmt.Errorf("invalid -prefetch %d: must be 0 (the default) or between 1 and %d", c.Prefetch, transport.MaxPrefetch)
	case c.Connections < 1 || c.Connections > c.Tenants:
		return fmt.Errorf("invalid -connections %d: must be between 1 and -tenants (%d)", c.Connections, c.Tenants)
	}
	return nil
}

// tenantIDs returns the ids of the run's tenants.
func (c *Config) tenantIDs() []string {
	ids := make([]string, c.Tenants)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-%d", c.TenantPrefix, i)
	}
	return ids
}
